"""The terminal chat (`train_torch.py --chat`, `test_torch.py`, `python -m kogpt2_chatbot chat`).

In a terminal: prompt `user > `, replies `Simsimi > ` streamed as they are generated (the
original's look); `quit`, `exit`, Ctrl-D or Ctrl-C end it; `/sent N` switches the sentiment,
`/reset` forgets the conversation. Through a pipe: one question per line in, one reply per line
out, nothing else on stdout.

The chat is a conversation: each reply sees the last `--history N` turns (default: what the
checkpoint was trained with; 0 for a single-turn corpus, so every question stands alone).
"""
from __future__ import annotations

import sys


HELP = """명령:
  /sent N   감정 바꾸기 (0 일상, 1 이별·부정, 2 사랑·긍정, auto 질문을 보고 자동으로)
  /reset    대화 기록 지우기 (새 대화)
  /help     이 도움말
  quit, exit, Ctrl-D, Ctrl-C   끝내기"""


def run(bot, sentiment=None, decoding=None, history_turns: int | None = None, stdin=None, stdout=None):
    """Chat with `bot` (a Chatbot) on stdin/stdout."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    talk = bot.conversation(sentiment, history_turns, **(decoding or {}))
    if not stdin.isatty():
        return _pipe(talk, stdin, stdout)
    memory = f", 최근 {talk.history_turns}턴 기억" if talk.history_turns else ""
    print(f"대화를 시작합니다 (감정 {bot.sentiment_of(talk.sentiment)}{memory}). /help 도움말, quit 끝내기",
          file=stdout)
    if talk.auto and bot.classifier is None:
        print("이 체크포인트에는 감정 분류기가 없어 auto는 0(일상)으로 답합니다", file=stdout)
    while True:
        try:
            line = input("user > ")
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            return
        q = line.strip()
        if q in ("quit", "exit"):
            return
        if not q:
            continue
        if q.startswith("/"):
            _command(q, talk, stdout)
            continue
        print("Simsimi > ", end="", flush=True, file=stdout)
        try:
            for piece in talk.stream(q):
                print(piece, end="", flush=True, file=stdout)
        except KeyboardInterrupt:  # Ctrl-C during a reply ends the reply, not the chat
            print(" ...", end="", file=stdout)
        if talk.auto:  # say which sentiment the classifier chose
            print(f"  [감정 {talk.last_sentiment}]", end="", file=stdout)
        print(file=stdout)


def _command(text: str, talk, stdout):
    name, _, value = text.partition(" ")
    if name == "/sent":
        try:
            talk.sentiment = talk.bot.check_sentiment(value)
            print(f"감정을 {talk.sentiment}(으)로 바꿨습니다", file=stdout)
        except ValueError as err:
            print(err, file=stdout)
    elif name == "/reset":
        talk.reset()
        print("대화 기록을 지웠습니다. 새 대화를 시작합니다", file=stdout)
    elif name == "/help":
        print(HELP, file=stdout)
    else:
        print(f"모르는 명령 {name}\n{HELP}", file=stdout)


def _pipe(talk, stdin, stdout):
    """One reply line per input line (blank in, blank out), so line N answers line N."""
    for line in stdin:
        q = line.strip()
        if q in ("quit", "exit"):
            return
        reply = talk.say(q) if q else ""
        print(reply.replace("\n", " "), file=stdout, flush=True)
