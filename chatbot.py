"""The original's spreadsheet door: `python chatbot.py` answers every sentence of a table.

With no arguments it answers EC_data/sample_emotions.csv with model_chp/model_-last.ckpt into
EC_data/sample_emotions.answered.xlsx. Same flags as `python -m kogpt2_chatbot answer` (see --help).
"""
import sys

from kogpt2_chatbot.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["answer", *sys.argv[1:]], prog="chatbot.py"))
