"""Reply quality in numbers, side by side with two baselines, in a report people can read.

    python -m kogpt2_chatbot evaluate --model_params model_chp/model_-best.ckpt --out eval/

By default the rows scored are the validation split recorded in the checkpoint, so nothing the
model trained on is scored. For conversations, the last answer of each held-out conversation is
scored, given the turns before it. Metrics (all on the same rows, for the model and each baseline):
- ppl: answer-token perplexity (teacher-forced; the model only)
- bpc: the same loss in bits per answer character (a `</s>` counts as one): unlike ppl it does
  not move with the tokenizer's vocabulary, so models with different vocabularies compare
- bleu2, bleu4, chrf: sacrebleu, character tokenization (Korean words carry particles)
- dist1, dist2: distinct word n-grams / all word n-grams over every reply (DialoGPT's Dist-n)
- ent4: entropy (natural log) of the word 4-gram distribution over every reply (DialoGPT's Ent-4)
- degenerate: share of replies that hit the cap without </s>, repeat a token 3-gram, or are junk of lone
  syllables and spaces (engines/text.py, is_degenerate; model only)
- mean_len: mean reply length in characters (and in tokens for the model); replies_per_s
Baselines: nearest-neighbour retrieval (TF-IDF over character n-grams of the training questions,
answering with that question's answer) and the most frequent training answer.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from . import data as chatdata
from .engines import DEFAULT_BATCH_SIZE

TEXT_METRICS = ("bleu2", "bleu4", "chrf", "dist1", "dist2", "ent4", "mean_len")

# Published on KoChatBART's 80/10/10 random split of the same corpus (BM-K/KoChatBART README),
# computed with BM-K/Dialogue-Generation-Model-Evaluation.
PUBLISHED = {
    "KoChatBART (published)": {"bleu3": 12.97, "bleu4": 11.23, "dist1": 19.64, "dist2": 44.53},
    "KoBART (published)": {"bleu3": 8.73, "bleu4": 7.12, "dist1": 16.85, "dist2": 34.89},
}
PROTOCOL_NOTE = (
    "Scored as BM-K/Dialogue-Generation-Model-Evaluation scores: corpus BLEU-n over space-separated words "
    "(cumulative 1..n-gram precisions, no smoothing, brevity penalty; sacrebleu with tokenize=none and "
    "smooth=none computes the same), Dist-n = distinct word n-grams / all word n-grams x 100 over every "
    "reply. Differences: the split is ours (rows shuffled with numpy seed 42, 80/10/10); theirs is random "
    "too but its seed is not published. Their files may hold a tokenizer's subword pieces rather than "
    "words (their --subword_token option); we score words. The published figures come from their README, "
    "not from a run here.")


# --- metrics --------------------------------------------------------------------------------

def bleu(hypotheses: list[str], references: list[str], order: int) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="char", max_ngram_order=order).corpus_score(hypotheses, [references]).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(hypotheses, [references]).score


def _ngrams(texts, n):
    for text in texts:
        words = text.split()
        for i in range(len(words) - n + 1):
            yield tuple(words[i : i + n])


def distinct(texts: list[str], n: int) -> float:
    grams = list(_ngrams(texts, n))
    return len(set(grams)) / len(grams) if grams else 0.0


def entropy(texts: list[str], n: int) -> float:
    counts = Counter(_ngrams(texts, n))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def protocol_metrics(replies: list[str], references: list[str]) -> dict:
    """BLEU-3, BLEU-4, Dist-1, Dist-2 as the KoChatBART evaluation computes them (see PROTOCOL_NOTE)."""
    from sacrebleu.metrics import BLEU

    def word_bleu(order):
        return BLEU(tokenize="none", smooth_method="none", max_ngram_order=order).corpus_score(
            replies, [references]).score

    return {"bleu3": word_bleu(3), "bleu4": word_bleu(4), "dist1": 100 * distinct(replies, 1),
            "dist2": 100 * distinct(replies, 2)}


def diversity(replies: list[str]) -> dict:
    """How often the most common reply comes back, and how many different replies there are."""
    counts = Counter(replies)
    top, n = counts.most_common(1)[0] if replies else ("", 0)
    return {"top_reply": top, "top_share": n / max(1, len(replies)), "distinct": len(counts),
            "replies": len(replies)}


def text_metrics(replies: list[str], references: list[str]) -> dict:
    return {
        "bleu2": bleu(replies, references, 2), "bleu4": bleu(replies, references, 4),
        "chrf": chrf(replies, references), "dist1": distinct(replies, 1), "dist2": distinct(replies, 2),
        "ent4": entropy(replies, 4), "mean_len": sum(map(len, replies)) / max(1, len(replies)),
    }


def answer_loss(bot, rows, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """Teacher-forced loss on every answer and </s> of the rows' conversations:
    ppl (per token, moves with the vocabulary) and bpc (bits per character, does not)."""
    from .api import as_chatbot

    total, count, chars = as_chatbot(bot).answer_loss_sum(chatdata.conversation_turns(rows), batch_size=batch_size)
    return {"ppl": math.exp(total / max(count, 1)), "bpc": total / max(chars, 1) / math.log(2)}


def perplexity(bot, rows, batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """exp(mean NLL over every answer token and </s> of the rows' conversations), token-weighted."""
    return answer_loss(bot, rows, batch_size)["ppl"]


# --- baselines ------------------------------------------------------------------------------

class RetrievalBaseline:
    """Answer with the answer of the most similar training question (TF-IDF, character 1-3-grams)."""

    def __init__(self, questions: list[str], answers: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(questions)
        self.answers = list(answers)

    def reply(self, questions: list[str]) -> list[str]:
        scores = self.vectorizer.transform(questions) @ self.matrix.T
        best = scores.argmax(axis=1).A.ravel()
        return [self.answers[i] for i in best]


def most_frequent_answer(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


# --- the run --------------------------------------------------------------------------------

def data_for(bot, given=None) -> str:
    """The chat table to score: `given` (--data), else the one the checkpoint was trained on.

    A path that is not there is an error, never a reason to score the downloaded default corpus."""
    from .api import as_chatbot

    path = given or as_chatbot(bot).split.get("data")
    if not given and path and Path(path) != Path(chatdata.DEFAULT_DATA) and not Path(path).exists():
        raise ValueError(f"the checkpoint was trained on {path}, which is not here; pass that file with --data PATH")
    return str(chatdata.corpus_path(path))


def select_rows(bot, data_path, split: str, protocol: str = chatdata.DEFAULT_PROTOCOL):
    """(rows to score, training rows for the baselines, a description of what was scored)."""
    from .api import as_chatbot

    bot = as_chatbot(bot)
    table = chatdata.load_chat_table(data_path)
    train_rows = chatdata.training_rows(table.rows, bot.split)
    if protocol == chatdata.KOCHATBART_PROTOCOL:
        if bot.split.get("protocol") != chatdata.KOCHATBART_PROTOCOL:
            raise ValueError("this checkpoint was not trained on the kochatbart split, so its test rows may be "
                             "training rows; train with --protocol kochatbart first")
        rows = table.rows[chatdata.held_out(table.rows, bot.split, "test")]
        if not len(rows):
            raise ValueError(f"none of the checkpoint's test rows are in {data_path}; pass the data it was trained on")
        return rows.reset_index(drop=True), train_rows.reset_index(drop=True), f"kochatbart test split of {data_path}"
    if split == "val":
        if not bot.split.get("val_groups", bot.split.get("val_questions")):
            raise ValueError("this checkpoint records no validation split; pass --split FILE or --split all")
        rows = table.rows[chatdata.held_out(table.rows, bot.split)]  # validation only, never the test part
        if not len(rows):
            raise ValueError(f"none of the checkpoint's validation conversations are in {data_path}; "
                             "pass the data it was trained on with --data")
        what = f"validation split of {data_path}"
    elif split == "all":
        rows, what = table.rows, f"all of {data_path} (training rows included)"
    else:
        rows = chatdata.load_chat_table(split).rows
        what = str(split)
    return rows.reset_index(drop=True), train_rows.reset_index(drop=True), what


def scored_turns(rows):
    """(questions, sentiments, references, histories): the last turn of every conversation."""
    questions, sentiments, references, histories = [], [], [], []
    for turns in chatdata.conversation_turns(rows):
        *past, last = turns
        questions.append(last.question)
        sentiments.append(last.sentiment)
        references.append(last.answer)
        histories.append(past)
    return questions, sentiments, references, histories


def evaluate(bot, data_path, split="val", out_dir="eval", batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
             protocol: str = chatdata.DEFAULT_PROTOCOL, sample_file=None, grounding=None, **decoding) -> dict:
    """Score replies on `split` (val, all, a file) or on `protocol`'s test rows; write the report.

    `sample_file`: a sheet of sentences (default EC_data/sample_emotions.csv where it exists) whose
    replies are counted for diversity. `grounding`: see grounded_systems."""
    from tqdm.auto import tqdm

    from .api import as_chatbot

    bot = as_chatbot(bot)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, train_rows, what = select_rows(bot, data_path, split, protocol)
    questions, labels, references, histories = scored_turns(rows)
    dec = bot.decoding_for(**decoding)
    what += f" ({len(questions)} replies" + (", the last turn of each conversation)" if len(questions) < len(rows)
                                             else ")")

    with tqdm(total=len(questions), unit="reply", desc="replies", disable=not progress) as bar:
        prompts = bot.prepare_batch(questions, labels, histories, dec)
        start = time.perf_counter()
        replies = bot.complete(prompts, dec, batch_size, progress=bar.update)
        seconds = time.perf_counter() - start
    texts = [r.text for r in replies]

    retrieval = RetrievalBaseline(list(train_rows.Q), list(train_rows.A)).reply(questions)
    frequent = [most_frequent_answer(list(train_rows.A))] * len(questions)
    ours = text_metrics(texts, references)
    ours.update(**answer_loss(bot, rows, batch_size),
                degenerate=sum(bot.is_degenerate(r, dec) for r in replies) / len(replies),
                mean_tokens=sum(r.completion_tokens - r.finished for r in replies) / len(replies),
                replies_per_s=len(replies) / seconds)
    metrics = {
        "scored": what, "rows": len(questions), "decoding": vars(dec),
        "checkpoint": {"base_model": bot.base_model, "split": {k: v for k, v in bot.split.items()
                                                               if k not in ("val_questions", "val_groups")}},
        "model": ours,
        "retrieval (TF-IDF nearest question)": text_metrics(retrieval, references),
        "most frequent answer": text_metrics(frequent, references),
        "diversity": {"scored rows": diversity(texts)},
    }
    columns = {"question": questions, "sentiment": labels, "reference": references, "reply": texts,
               "retrieval": retrieval}
    grounded = grounded_systems(bot, questions, labels, histories, dec, batch_size, grounding)
    metrics.update(grounded_metrics(bot, grounded, columns))
    sample_file = Path(sample_file) if sample_file else Path(DEFAULT_SAMPLE)
    if sample_file.exists():
        metrics["diversity"][str(sample_file)] = diversity(sample_replies(bot, sample_file, dec, batch_size))
    if protocol == chatdata.KOCHATBART_PROTOCOL:
        metrics["protocol"] = {"name": protocol, "note": PROTOCOL_NOTE, "systems": {
            "model": protocol_metrics(texts, references),
            "retrieval (TF-IDF nearest question)": protocol_metrics(retrieval, references), **PUBLISHED,
            **{name: protocol_metrics([r.text for r in made], references) for name, made in grounded.items()}}}
    write_report(out_dir, metrics, columns)
    return metrics


def write_report(out_dir: Path, metrics: dict, columns: dict):
    """metrics.json, samples.csv (a row per scored question, a column per system), report.md and .png;
    each appears whole or not at all."""
    import pandas as pd

    from .checkpoint import atomic_path

    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    with atomic_path(out_dir / "samples.csv") as tmp:
        pd.DataFrame(columns).to_csv(tmp, index=False, encoding="utf-8-sig")
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics), encoding="utf-8")
    with atomic_path(out_dir / "report.png") as tmp:
        report_chart(metrics, tmp)


DEFAULT_SAMPLE = "EC_data/sample_emotions.csv"
GROUNDED = "grounding: "  # the prefix of a grounded mode's row in the report
# Closeness of a scored question to its nearest training question (grounding.closeness: chrF / 100).
# Below NOVEL, no training question is close: the model is on its own there.
NOVEL, CLOSE = 0.4, 0.7
BANDS = ((0.0, NOVEL, f"novel (closeness < {NOVEL})"), (NOVEL, CLOSE, f"near ({NOVEL} to {CLOSE})"),
         (CLOSE, 1.01, f"close (>= {CLOSE})"))


def grounded_systems(bot, questions, sentiments, histories, decoding, batch_size: int, mode=None) -> dict:
    """{"grounding: MODE": [Reply]} for `mode`, or for every grounded mode the bot can answer in
    when it is None (nothing when the checkpoint has no index and no mode was asked for)."""
    from . import grounding as gr

    modes = [m for m in bot.grounding_modes if m != gr.GENERATE] if mode is None else [gr.check_mode(mode)]
    return {GROUNDED + m: bot.replies(questions, sentiments, histories, batch_size, grounding=m, **vars(decoding))
            for m in modes if m != gr.GENERATE}


def grounded_metrics(bot, grounded: dict, columns: dict) -> dict:
    """The report's entries for grounded systems (their metrics, the closeness breakdown); their
    replies join `columns` (samples.csv's)."""
    columns.update({name: [r.text for r in made] for name, made in grounded.items()})
    out = {name: text_metrics(columns[name], columns["reference"]) for name in grounded}
    if grounded:
        out["closeness"] = closeness_breakdown(bot, columns)
    return out


def closeness_breakdown(bot, columns: dict) -> dict:
    """chrF and BLEU-4 of every system by how close each question is to a training question, and
    an example of each band (`columns`: samples.csv's, which gains a closeness column)."""
    from . import grounding as gr

    questions, references = columns["question"], columns["reference"]
    nearest = [hits[0] if hits else None for hits in bot.index.search(questions, k=1)]
    near = [gr.closeness(q, bot.index.questions[h.index]) if h else 0.0 for q, h in zip(questions, nearest)]
    columns["closeness"] = [round(c, 4) for c in near]
    systems = {"model": columns["reply"], "retrieval (TF-IDF nearest question)": columns["retrieval"],
               **{k: v for k, v in columns.items() if k.startswith(GROUNDED)}}
    bands = {}
    for low, high, name in BANDS:
        rows = [i for i, c in enumerate(near) if low <= c < high]
        if not rows:
            continue
        refs = [references[i] for i in rows]
        bands[name] = {"rows": len(rows), "systems": {
            system: {"chrf": chrf([replies[i] for i in rows], refs), "bleu4": bleu([replies[i] for i in rows], refs, 4)}
            for system, replies in systems.items()},
            "example": {"question": questions[rows[0]], "reference": references[rows[0]],
                        **{system: replies[rows[0]] for system, replies in systems.items()}}}
    return {"novel_below": NOVEL, "close_from": CLOSE, "bands": bands}


def sample_replies(bot, path, decoding, batch_size: int) -> list[str]:
    """Replies to a sheet's sentences, each with its emotion's sentiment (the spreadsheet command's map)."""
    from .answer_file import read_rows
    from .sentiment import sentiment_of_label
    from .sheet import cell_text

    frame = read_rows(Path(path))
    column = "Sentence" if "Sentence" in frame.columns else frame.columns[0]
    texts = [cell_text(t).strip() for t in frame[column]]
    emotions = frame["Emotion"].map(cell_text) if "Emotion" in frame.columns else [None] * len(frame)
    sentiments = [sentiment_of_label(e) if e else None for e in emotions]  # unknown labels: the bot's default
    keep = [i for i, t in enumerate(texts) if t]
    prompts = bot.prepare_batch([texts[i] for i in keep], [sentiments[i] for i in keep], decoding=decoding)
    return [r.text for r in bot.complete(prompts, decoding, batch_size)]


def report_markdown(metrics: dict) -> str:
    systems = [k for k in metrics if isinstance(metrics[k], dict) and "chrf" in metrics[k]]
    head = "| system | ppl | BLEU-2 | BLEU-4 | chrF | Dist-1 | Dist-2 | Ent-4 | degenerate | mean length (chars) |"
    systems = [k for k in systems if k != "diversity"]
    lines = [f"# Evaluation\n\nScored: {metrics['scored']}. Decoding: {_decoding_text(metrics['decoding'])}.\n",
             head, "|" + " --- |" * 10]
    for name in systems:
        m = metrics[name]
        ppl = f"{m['ppl']:.1f}" if "ppl" in m else "-"
        degenerate = f"{100 * m['degenerate']:.1f}%" if "degenerate" in m else "-"
        lines.append(f"| {name} | {ppl} | {m['bleu2']:.2f} | {m['bleu4']:.2f} | {m['chrf']:.2f} | {m['dist1']:.3f} | "
                     f"{m['dist2']:.3f} | {m['ent4']:.2f} | {degenerate} | {m['mean_len']:.1f} |")
    model = metrics["model"]
    lines.append(f"\nModel: {model['replies_per_s']:.1f} replies/s, {model['mean_tokens']:.1f} tokens a reply, "
                 f"{model['bpc']:.3f} bits per answer character.")
    lines.append("\n## Diversity\n\n| replies to | replies | distinct | most common reply | its share |\n"
                 "| --- | --- | --- | --- | --- |")
    for name, d in metrics.get("diversity", {}).items():
        lines.append(f"| {name} | {d['replies']} | {d['distinct']} | {d['top_reply']} | {100 * d['top_share']:.1f}% |")
    if "closeness" in metrics:
        lines += closeness_markdown(metrics["closeness"])
    if "protocol" in metrics:
        lines.append("\n## Comparable protocol (KoChatBART's split and metrics)\n\n"
                     "| system | BLEU-3 | BLEU-4 | Dist-1 | Dist-2 |\n| --- | --- | --- | --- | --- |")
        for name, m in metrics["protocol"]["systems"].items():
            lines.append(f"| {name} | {m['bleu3']:.2f} | {m['bleu4']:.2f} | {m['dist1']:.2f} | {m['dist2']:.2f} |")
        lines.append(f"\n{metrics['protocol']['note']}")
    return "\n".join(lines) + "\n"


def closeness_markdown(breakdown: dict) -> list[str]:
    bands = breakdown["bands"]
    systems = list(next(iter(bands.values()))["systems"]) if bands else []
    lines = ["\n## By closeness to a training question\n",
             "Closeness: character n-gram F-score (chrF / 100) of a question against its nearest training question; "
             f"below {breakdown['novel_below']} a question counts as novel.\n",
             "| rows | n | " + " | ".join(f"{s} chrF / BLEU-4" for s in systems) + " |",
             "|" + " --- |" * (len(systems) + 2)]
    for name, band in bands.items():
        cells = " | ".join(f"{band['systems'][s]['chrf']:.2f} / {band['systems'][s]['bleu4']:.2f}" for s in systems)
        lines.append(f"| {name} | {band['rows']} | {cells} |")
    lines.append("\nExamples (the first row of each band):\n")
    for name, band in bands.items():
        lines.append(f"- {name}: " + "; ".join(f"{k}: {v}" for k, v in band["example"].items()))
    return lines


def _decoding_text(decoding: dict) -> str:
    if not decoding["do_sample"]:
        extra = [f"{k} {decoding[k]}" for k in ("repetition_penalty", "no_repeat_ngram_size")
                 if decoding[k] not in (1.0, 0)]
        return ", ".join(["greedy", f"max_new_tokens {decoding['max_new_tokens']}", *extra])
    return ", ".join(f"{k} {v}" for k, v in decoding.items() if v is not None)


def report_chart(metrics: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [k for k in metrics if isinstance(metrics[k], dict) and "chrf" in metrics[k]]
    panels = [("bleu2", "BLEU-2"), ("bleu4", "BLEU-4"), ("chrf", "chrF"), ("dist2", "Dist-2"), ("ent4", "Ent-4")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4), dpi=120)
    colors = ["#3b6cf6", "#f59e0b", "#9ca3af", "#10b981", "#ef4444", "#8b5cf6"]
    short = {s: s.split(" (")[0] for s in systems}
    for ax, (key, title) in zip(axes, panels):
        values = [metrics[s][key] for s in systems]
        ax.bar(range(len(systems)), values, color=colors[: len(systems)])
        ax.set_xticks(range(len(systems)), [short[s] for s in systems], rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"model vs baselines: {metrics['rows']} rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
