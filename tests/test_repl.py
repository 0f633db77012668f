import os
import subprocess
import sys

import pexpect
import pytest

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def run(args, stdin="", timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ckpt(trained_dir):
    return str(trained_dir / "model_-last.ckpt")


@pytest.fixture(scope="module")
def bot(ckpt):
    from kogpt2_chatbot.module import KoGPT2Chat

    return KoGPT2Chat.load_from_checkpoint(ckpt).eval()


@pytest.mark.parametrize("entry", [["train_torch.py", "--chat"], ["test_torch.py"], ["-m", "kogpt2_chatbot", "chat"]])
def test_pipe_gives_one_reply_line_per_question(entry, ckpt, bot):
    questions = ["배고파", "", "헤어졌어 <sys>", "첫 데이트야"]
    result = run([*entry, "--model_params", ckpt, "--sentiment", "1"], stdin="\n".join(questions) + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")[:-1]
    assert lines == [bot.chat(q, 1) if q else "" for q in questions]


def test_ask_prints_the_reply(ckpt, bot):
    result = run(["-m", "kogpt2_chatbot", "ask", "첫 데이트야", "--sentiment", "positive", "--model_params", ckpt])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == bot.chat("첫 데이트야", 2) + "\n"


def test_missing_checkpoint_says_how_to_train(tmp_path):
    result = run(["train_torch.py", "--chat", "--model_params", str(tmp_path / "none.ckpt")])
    assert result.returncode == 2
    assert "no checkpoint at" in result.stderr and "train_torch.py" in result.stderr and "--train" in result.stderr


def test_bad_sentiment_flag_is_a_clear_error(ckpt):
    result = run(["-m", "kogpt2_chatbot", "ask", "안녕", "--sentiment", "9", "--model_params", ckpt])
    assert result.returncode == 2 and "neutral|negative|positive" in result.stderr


def test_interactive_session_in_a_terminal(ckpt, bot):
    child = pexpect.spawn(sys.executable, ["-m", "kogpt2_chatbot", "chat", "--model_params", ckpt], cwd=str(ROOT),
                          env=ENV, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("user > ")
        child.sendline("배고파")
        child.expect_exact("Simsimi > ")
        child.expect_exact("user > ")
        # A checkpoint with a sentiment classifier answers with `auto` by default, and says what it chose.
        chosen = bot.chatbot.reply("배고파", "auto").sentiment
        assert child.before.strip() == f"{bot.chat('배고파', 'auto')}  [감정 {chosen}]"
        child.sendline("/sent 2")
        child.expect_exact("감정을 2")
        child.expect_exact("user > ")
        child.sendline("첫 데이트야")
        child.expect_exact("Simsimi > ")
        child.expect_exact("user > ")
        assert child.before.strip() == bot.chat("첫 데이트야", 2)
        child.sendline("/sent 7")
        child.expect_exact("감정은 0 (일상), 1 (이별·부정), 2 (사랑·긍정), auto (자동) 중 하나입니다")
        child.expect_exact("도 됩니다): 7")
        child.sendline("/help")
        child.expect_exact("/sent N")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("ending", ["ctrl-d", "ctrl-c", "exit"])
def test_interactive_endings_are_clean(ckpt, ending):
    child = pexpect.spawn(sys.executable, ["-m", "kogpt2_chatbot", "chat", "--model_params", ckpt], cwd=str(ROOT),
                          env=ENV, encoding="utf-8", timeout=120)
    child.expect_exact("user > ")
    {"ctrl-d": lambda: child.sendeof(), "ctrl-c": lambda: child.sendintr(), "exit": lambda: child.sendline("exit")}[ending]()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")


def test_a_line_that_is_not_utf8_gets_a_notice_and_the_pipe_goes_on(bot, capsys):
    import io

    from kogpt2_chatbot import repl

    raw = "배고파\n".encode() + b"\xff\xfe broken \xc3\n" + "첫 데이트야\n".encode()
    out = io.StringIO()
    repl.run(bot.chatbot, sentiment=1, stdin=io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"), stdout=out)
    assert out.getvalue().split("\n")[:-1] == [bot.chat("배고파", 1), "", bot.chat("첫 데이트야", 1)]
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("2번째 줄: UTF-8도 cp949(EUC-KR)도 아닌 글자가 있어")


def test_lines_from_korean_windows_notepad_are_answered_as_typed(bot, capsys):
    """A pipe of cp949 lines (Notepad's ANSI on Korean Windows) gets the replies of the same lines in UTF-8."""
    import io

    from kogpt2_chatbot import repl

    out = io.StringIO()
    raw = "배고파\n".encode() + "똠방각하 헤어졌어\r\n첫 데이트야\r\n".encode("cp949")
    repl.run(bot.chatbot, sentiment=1, stdin=io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"), stdout=out)
    assert out.getvalue().split("\n")[:-1] == [bot.chat(q, 1) for q in ("배고파", "똠방각하 헤어졌어", "첫 데이트야")]
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice == [f"2번째 줄: {repl.READ_AS_CP949}"]


def test_a_file_saved_by_notepad_is_answered_as_typed(bot):
    """A byte-order mark and Windows line ends (Notepad's UTF-8) are not part of the questions."""
    import io

    from kogpt2_chatbot import repl

    out = io.StringIO()
    raw = "\ufeff배고파\r\n첫 데이트야\r\n".encode()
    repl.run(bot.chatbot, sentiment=1, stdin=io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"), stdout=out)
    assert out.getvalue().split("\n")[:-1] == [bot.chat("배고파", 1), bot.chat("첫 데이트야", 1)]


def test_sent_with_a_bad_value_answers_in_korean(bot):
    import io

    from kogpt2_chatbot import repl

    talk, out = bot.chatbot.conversation(), io.StringIO()
    repl._command("/sent 5", talk, out)
    assert out.getvalue().startswith("감정은 0 (일상), 1 (이별·부정), 2 (사랑·긍정), auto (자동) 중 하나입니다")
    assert out.getvalue().rstrip().endswith(": 5") and len(out.getvalue().splitlines()) == 1
    assert talk.sentiment is None  # unchanged
