"""Drives the web chat page in headless Chromium and saves a screenshot (imgs/web_chat.png).

    python imgs/make_screenshot.py --model_params model_chp/demo/model_-last.ckpt

Needs Debian's chromium and chromium-driver, and a Korean font (fonts-nanum) for the glyphs.
The tests use `chat_in_browser()` too.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path


def chat_in_browser(url: str, exchanges: list[tuple[str, str]], screenshot=None, timeout: float = 30) -> list[str]:
    """Types each (question, sentiment) into the page, waits for each streamed reply; returns them."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=900,640", "--lang=ko-KR"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    replies = []
    try:
        driver.get(url)
        for n, (question, sentiment) in enumerate(exchanges, start=1):
            Select(driver.find_element(By.ID, "sentiment")).select_by_value(str(sentiment))
            driver.find_element(By.ID, "question").send_keys(question)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, timeout).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.bot.done")) >= n)
            replies.append(driver.find_elements(By.CSS_SELECTOR, ".msg.bot.done .text")[-1].text)
        if screenshot:
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return replies


def start_server(model, port: int | None = None):
    """The app on 127.0.0.1 in a background thread; returns (url, server) (set server.should_exit to stop)."""
    import uvicorn

    from kogpt2_chatbot.serve import create_app

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--out", default=str(Path(__file__).with_name("web_chat.png")))
    return p


def main():
    args = build_parser().parse_args()
    from kogpt2_chatbot import Chatbot

    url, server = start_server(Chatbot.load(args.model_params))
    try:
        replies = chat_in_browser(url + "/", [("배탈났어", 0), ("헤어졌어", 1), ("첫 데이트야", 2)], args.out)
    finally:
        server.should_exit = True
    print("\n".join(replies))
    print(args.out)


if __name__ == "__main__":
    main()
