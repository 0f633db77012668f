"""The original's Python door: `from test_torch import KoGPT2Chat`; `python test_torch.py` chats."""
import sys

from kogpt2_chatbot.module import KoGPT2Chat  # noqa: F401  (the original's import path)

if __name__ == "__main__":
    from kogpt2_chatbot.__main__ import legacy_main

    sys.exit(legacy_main(["--chat", *sys.argv[1:]]))
