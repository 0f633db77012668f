"""Draws imgs/framing.png: how one training pair becomes token ids and loss targets.

Run: python imgs/make_framing.py   (Korean glyphs need a Korean font, e.g. Debian's fonts-nanum)
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

KOREAN_FONTS = ("NanumGothic", "NanumBarunGothic", "Noto Sans CJK KR", "Malgun Gothic", "AppleGothic")


def main(path=Path(__file__).with_name("framing.png")):
    available = {f.name for f in font_manager.fontManager.ttflist}
    font = next((f for f in KOREAN_FONTS if f in available), None)
    if font:
        plt.rcParams["font.family"] = [font, "DejaVu Sans"]  # DejaVu supplies the ▁ glyph
    question, answer = (["▁배탈", "났어", "."], ["▁약", "▁드시고", "▁쉬세요", "."]) if font else \
        (["▁(bae", "tal)", "."], ["▁(yak)", "▁(deusigo)", "▁(swiseyo)", "."])
    tokens = [("<usr>", "ctrl"), *[(t, "q") for t in question], ("<unused1>", "ctrl"), ("▁1", "s"), ("<sys>", "ctrl"),
              *[(t, "a") for t in answer], ("</s>", "eos"), ("<pad>", "pad"), ("<pad>", "pad")]
    colors = {"ctrl": "#cbd5e1", "q": "#bfdbfe", "s": "#fde68a", "a": "#bbf7d0", "eos": "#86efac", "pad": "#f1f5f9"}
    answer_start = next(i for i, (t, _) in enumerate(tokens) if t == "<sys>") + 1

    fig, ax = plt.subplots(figsize=(13, 3.6), dpi=130)
    ax.set_xlim(-0.2, len(tokens) + 0.2)
    ax.set_ylim(-0.6, 3.4)
    ax.axis("off")
    for i, (tok, kind) in enumerate(tokens):
        ax.add_patch(FancyBboxPatch((i + 0.05, 1.7), 0.9, 0.8, boxstyle="round,pad=0.02", fc=colors[kind], ec="#475569"))
        ax.text(i + 0.5, 2.1, tok, ha="center", va="center", fontsize=9)
        if kind in ("a", "eos"):
            label, color = tok, "#166534"
        else:
            label, color = "-100", "#94a3b8"
        ax.add_patch(FancyBboxPatch((i + 0.05, 0.4), 0.9, 0.7, boxstyle="round,pad=0.02", fc="white", ec=color))
        ax.text(i + 0.5, 0.75, label, ha="center", va="center", fontsize=8, color=color)
    ax.text(-0.1, 2.85, "input_ids", fontsize=10, weight="bold")
    ax.text(-0.1, 1.25, "labels (loss only on  answer </s>)", fontsize=10, weight="bold")
    spans = [("question", 1, 1 + len(question)), ("sentiment", answer_start - 2, answer_start - 1),
             ("answer", answer_start, answer_start + len(answer) + 1)]
    for name, a, b in spans:
        ax.annotate("", xy=(a + 0.05, 2.62), xytext=(b - 0.05, 2.62), arrowprops=dict(arrowstyle="<->", color="#334155"))
        ax.text((a + b) / 2, 2.75, name, ha="center", fontsize=9, color="#334155")
    ax.text(len(tokens) - 1, 0.05, "padding: -100", ha="center", fontsize=8, color="#94a3b8")
    ax.text(0, -0.45, "<usr> question <unused1> sentiment <sys> answer </s>   ·   sentiment 0 everyday, 1 negative, "
            "2 positive   ·   typed '<sys>' or '</s>' stays plain text", fontsize=8.5, color="#334155")
    fig.tight_layout()
    fig.savefig(path)
    return path


if __name__ == "__main__":
    print(main())
