"""The terminal chat (`train_torch.py --chat`, `test_torch.py`, `python -m kogpt2_chatbot chat`).

In a terminal: prompt `user > `, replies `Simsimi > ` streamed as they are generated (the
original's look); `quit`, `exit`, Ctrl-D or Ctrl-C end it; `/sent N` switches the sentiment,
`/reset` forgets the conversation. Through a pipe: one question per line in (a leading byte-order
mark is dropped), one reply per line out, nothing else on stdout; a line that is not UTF-8 is read
as cp949 (Korean Windows, said once on stderr), and one that is neither gets an empty reply line and
a one-line notice on stderr, and the lines after it are answered as usual.

The chat is a conversation: each reply sees the last `--history N` turns (default: what the
checkpoint was trained with; 0 for a single-turn corpus, so every question stands alone).
"""
from __future__ import annotations

import sys

from . import sentiment as sentiments
from . import textfile

HELP = """명령:
  /sent N   감정 바꾸기 (0 일상, 1 이별·부정, 2 사랑·긍정, auto 질문을 보고 자동으로)
  /reset    대화 기록 지우기 (새 대화)
  /help     이 도움말
  quit, exit, Ctrl-D, Ctrl-C   끝내기"""
BAD_SENTIMENT = "감정은 0 (일상), 1 (이별·부정), 2 (사랑·긍정), auto (자동) 중 하나입니다 (neutral, negative, positive도 됩니다)"
NOT_UTF8 = "UTF-8이 아닌 글자가 있어 답하지 않았습니다 (파일을 UTF-8로 저장해 주세요)"
NOT_TEXT = "UTF-8도 cp949(EUC-KR)도 아닌 글자가 있어 답하지 않았습니다 (파일을 UTF-8로 저장해 주세요)"
READ_AS_CP949 = "UTF-8이 아니어서 cp949(EUC-KR, 한국어 Windows의 메모장)로 읽었습니다. 이후 그런 줄도 그렇게 읽습니다"


def run(bot, sentiment=None, decoding=None, history_turns: int | None = None, stdin=None, stdout=None):
    """Chat with `bot` (a Chatbot) on stdin/stdout."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    talk = bot.conversation(sentiment, history_turns, **(decoding or {}))
    if not stdin.isatty():
        return _pipe(talk, stdin, stdout)
    memory = f", 최근 {talk.history_turns}턴 기억" if talk.history_turns else ""
    print(f"대화를 시작합니다 (감정 {talk.sentiment or bot.sentiment}{memory}). /help 도움말, quit 끝내기",
          file=stdout)
    if talk.auto and bot.classifier is None:
        print("이 체크포인트에는 감정 분류기가 없어 auto는 0(일상)으로 답합니다", file=stdout)
    while True:
        try:
            line = input("user > ")
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            return
        except UnicodeDecodeError:
            print(NOT_UTF8, file=stdout)
            continue
        q = line.strip()
        if q in ("quit", "exit"):
            return
        if not q:
            continue
        if q.startswith("/"):
            _command(q, talk, stdout)
            continue
        _stream_reply(talk, q, stdout)


def _stream_reply(talk, question: str, stdout):
    print("Simsimi > ", end="", flush=True, file=stdout)
    try:
        for piece in talk.stream(question):
            print(piece, end="", flush=True, file=stdout)
    except KeyboardInterrupt:  # Ctrl-C during a reply ends the reply, not the chat
        print(" ...", end="", file=stdout)
    except ValueError as err:  # text the model cannot take (e.g. a lone surrogate)
        print(f"(답할 수 없는 질문입니다: {err})", end="", file=stdout)
    if talk.auto and talk.last_sentiment is not None:  # say which sentiment the classifier chose
        print(f"  [감정 {talk.last_sentiment}]", end="", file=stdout)
    print(file=stdout)


def _command(text: str, talk, stdout):
    name, _, value = text.partition(" ")
    if name == "/sent":
        try:
            talk.sentiment = sentiments.check(value)
            print(f"감정을 {talk.sentiment}(으)로 바꿨습니다", file=stdout)
        except ValueError:
            print(f"{BAD_SENTIMENT}: {value.strip() or '(빈 값)'}", file=stdout)
    elif name == "/reset":
        talk.reset()
        print("대화 기록을 지웠습니다. 새 대화를 시작합니다", file=stdout)
    elif name == "/help":
        print(HELP, file=stdout)
    else:
        print(f"모르는 명령 {name}\n{HELP}", file=stdout)


def _pipe(talk, stdin, stdout):
    """One reply line per input line (blank in, blank out), so line N answers line N."""
    lines = getattr(stdin, "buffer", None) or stdin  # bytes where there are, so one bad line stays one line
    said_cp949 = False
    for number, raw in enumerate(lines, 1):
        try:  # textfile's rule, a line at a time: UTF-8, else the cp949 of Korean Windows' Notepad
            text, encoding = textfile.decode(raw) if isinstance(raw, bytes) else (raw, textfile.UTF8)
        except UnicodeDecodeError as err:
            print(f"{number}번째 줄: {NOT_TEXT} ({err.start + 1}번째 바이트)", file=sys.stderr, flush=True)
            print(file=stdout, flush=True)
            continue
        if encoding == textfile.KOREAN_WINDOWS and not said_cp949:
            print(f"{number}번째 줄: {READ_AS_CP949}", file=sys.stderr, flush=True)
            said_cp949 = True
        # A file saved by Windows Notepad starts with a byte-order mark; it is not part of the question.
        q = (text.removeprefix("\ufeff") if number == 1 else text).strip()
        if q in ("quit", "exit"):
            return
        try:
            reply = talk.say(q) if q else ""
        except ValueError as err:  # text the model cannot take: this line only
            print(f"{number}번째 줄: {err}", file=sys.stderr, flush=True)
            reply = ""
        print(reply.replace("\n", " "), file=stdout, flush=True)
