"""The chatbot API: one object that every door (REPL, ask, serve, answer, evaluate, training's
samples) uses, and the one to use from Python.

    from kogpt2_chatbot import Chatbot

    bot = Chatbot.load("model_chp/demo")    # a run folder (its best checkpoint), a .ckpt, an hf/ folder, a hub id
    bot.chat("배탈났어", sentiment=1)                        # one reply, as text
    r = bot.reply("배탈났어")                                # the same as a Reply: r.text, r.sentiment,
                                                           # r.sentiment_source, r.history (what it saw)
    bot.chat_batch(["배고파", "헤어졌어"], [0, 1])            # many, batched (bot.replies: as Replies)
    for piece in bot.stream("첫 데이트야", 2): ...           # a reply as it is generated
    talk = bot.conversation()                              # a conversation that remembers
    talk.say("내 이름은 민수야"); talk.say("내 이름이 뭐였지?")

It holds the model, the tokenizer, the framing ids (looked up once), the default decoding and
sentiment, and how many earlier turns a conversation keeps (`history_turns`: what the
checkpoint was trained with; 0 for a single-turn corpus, so such a bot answers every question
on its own, exactly as before conversations existed). A `history` a caller passes is used as
given, at every door (Python, `POST /chat`, OpenAI `messages`): `history_turns` is only what the
kit's own conversations keep (Conversation, the terminal chat, the web page).

Every door goes through `prepare()`/`prepare_batch()` (question, sentiment and history checked
and resolved once, the prompt framed: a Prompt) and `complete()`/`stream_prompt()` (the engine),
so a reply reads the same from every door.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import backbone as bb
from . import framing
from .checkpoint import CheckpointError, MissingCheckpoint, load_model, write_hf  # noqa: F401  (re-exported: the API's errors)
from . import grounding as gr
from .decoding import Decoding
from . import engines
from .engines import DEFAULT_BATCH_SIZE
from .engines.base import context_size
from .engines.text import TextPieces, is_degenerate, reply_text
from .framing import Turn
from .sentiment import AUTO, SentimentClassifier
from .sentiment import check as check_sentiment
from .sentiment import resolve as resolve_sentiment


def warn(message: str):
    """A warning a user can act on, as one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def pick_device(gpus: int | None = None, device: str | None = None) -> torch.device:
    """--device wins, else --gpus N (the original's flag), else the CPU; a missing GPU warns."""
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1, mps ...") from err
        if chosen.type == "cuda" and not torch.cuda.is_available():
            warn(f"--device {device}: no CUDA GPU here; running on the CPU")
            return torch.device("cpu")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            warn(f"--device {device}: no Apple GPU here; running on the CPU")
            return torch.device("cpu")
        return chosen
    if gpus:
        if torch.cuda.is_available():
            return torch.device("cuda")
        warn(f"--gpus {gpus}: no GPU found; running on the CPU")
    return torch.device("cpu")


def clean_question(question, what: str = "question") -> str:
    """The question without surrounding spaces; ValueError for anything that is not text to ask."""
    text = _text(question, what).strip()
    if not text:
        raise ValueError(f"{what} is empty: type something to ask")
    return text


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text; got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800"): no tokenizer can encode it
        raise ValueError(f"{what} holds {value[err.start]!r} at character {err.start + 1}, which is not a "
                         "character (a lone surrogate); send UTF-8 text") from None
    return value


def turns_of(history, what: str = "history") -> list[Turn]:
    """Earlier turns as Turns, from the forms people write: (question, answer), (question,
    answer, sentiment), {"question", "answer", "sentiment"}, Turn, or chat messages
    ({"role", "content"}, read by framing.messages_to_turns); oldest first. A turn's sentiment
    is checked here (None: the current question's)."""
    if history is None:
        return []
    if isinstance(history, (str, bytes, dict)) or not isinstance(history, (list, tuple)):
        raise ValueError(f"{what} must be a list of earlier turns [(question, answer), ...]; got {history!r:.80}")
    if history and all(isinstance(m, dict) and "role" in m for m in history):
        try:
            talk = framing.messages_to_turns(history)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        if talk.question is not None:
            raise ValueError(f"{what}: the last message is the user's; a history ends with an answer")
        history = talk.turns
    turns = []
    for n, turn in enumerate(history, 1):
        where = f"{what} turn {n}"
        if isinstance(turn, dict):
            question, answer, sentiment = turn.get("question"), turn.get("answer"), turn.get("sentiment")
        elif isinstance(turn, (tuple, list)) and len(turn) in (2, 3):
            question, answer, sentiment = turn[0], turn[1], turn[2] if len(turn) == 3 else None
        else:
            raise ValueError(f"{where}: expected (question, answer) or (question, answer, sentiment); got {turn!r:.80}")
        try:
            question, answer = clean_question(question, "its question"), _text(answer, "its answer")
            sentiment = None if sentiment is None else check_sentiment(sentiment)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        turns.append(Turn(question, answer, sentiment))
    return turns


@dataclass
class Prompt:
    """A question framed for the model, and what went into the frame."""
    ids: list[int]
    question: str
    sentiment: str                  # '0'|'1'|'2': what the prompt is framed with
    sentiment_source: str           # given | default | classifier (sentiment.SOURCES)
    history: list[Turn]             # the earlier turns inside `ids` (the oldest go first when too long)


@dataclass
class Reply:
    """One reply: its text, what a server counts, and what it was given (question, sentiment and
    where that came from, the earlier turns it saw)."""
    text: str
    token_ids: list[int]            # new tokens, `</s>` included when the reply stopped by itself
    prompt_tokens: int
    finished: bool                  # stopped at `</s>` (else it hit max_new_tokens)
    question: str = ""
    sentiment: str | None = None    # '0'|'1'|'2'; None for a reply to bare prompt ids
    sentiment_source: str | None = None
    history: list[Turn] = field(default_factory=list)
    source: gr.Source = gr.GENERATED  # generated, or retrieved with the training pair it used

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def turn(self) -> Turn:
        """This exchange as a turn, the form a later question's history takes."""
        return Turn(self.question, self.text, self.sentiment)


class _HistoryTurns:
    """`history_turns` of a Chatbot or a Conversation: checked (framing.check_history_turns)
    whenever it is set, the constructor's keyword and a later assignment alike."""

    def __get__(self, obj, owner=None):
        return self if obj is None else obj._history_turns

    def __set__(self, obj, value):
        obj._history_turns = framing.check_history_turns(value)


class Chatbot:
    """A fine-tuned chatbot: model + tokenizer + framing + defaults. See the module doc."""

    history_turns = _HistoryTurns()  # earlier turns each prompt holds (default: the checkpoint's)

    def __init__(self, model, tokenizer, sentiment=None, decoding: Decoding | dict | None = None,
                 history_turns: int = 0, info: dict | None = None, engine: str = "auto",
                 classifier: SentimentClassifier | None = None, index: gr.Index | None = None,
                 grounding: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.ids = framing.control_ids(tokenizer)
        self.eos_id = self.ids[framing.EOS]
        self.classifier = classifier
        # Default: `auto` where the checkpoint has a classifier (measured best; bench/RESULTS.md,
        # "Sentiment by itself"), else 0 (everyday), as before classifiers existed.
        self.sentiment = check_sentiment(sentiment if sentiment is not None else
                                          (AUTO if classifier is not None else "0"))
        self.decoding = decoding if isinstance(decoding, Decoding) else Decoding.from_kwargs(**(decoding or {}))
        self.history_turns = history_turns
        self.info = dict(info or {})
        self.engine_choice = engines.check_name(engine)  # `auto`, or an engine name (engines.names())
        self._engine = None
        self.index = index  # the training pairs replies can be grounded in (grounding.py)
        # Default: the mode the checkpoint measured best on its validation split (Index.default_mode),
        # else the model's own reply.
        self.grounding = self.check_grounding(grounding)

    # --- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, source=None, device: str | None = None, gpus: int | None = None, trust_remote_code: bool = False,
             **defaults) -> "Chatbot":
        """From a training checkpoint (.ckpt), a training run's folder (its best checkpoint), an
        exported hf/ folder, or a hub id of one; None: the newest run under model_chp/. Code shipped
        with a model is never run unless `trust_remote_code`. `info["loaded"]` says what was loaded."""
        model, tokenizer, info = load_model(source, trust_remote_code)
        model.to(pick_device(gpus, device)).eval()
        defaults.setdefault("history_turns", int(info.get("history_turns", 0)))
        defaults.setdefault("classifier", SentimentClassifier.from_state(info.get("sentiment_classifier")))
        defaults.setdefault("index", gr.Index.from_state(info.get("grounding")))
        return cls(model, tokenizer, info=info, **defaults)

    # --- facts ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def context_size(self) -> int:
        """Tokens the model sees at once: prompt and reply together."""
        return context_size(self.model)

    @property
    def engine(self):
        """The engine `engine_choice` names, built at the first reply (see kogpt2_chatbot.engines)."""
        if self._engine is None:
            self._engine = engines.create(self.engine_choice, self.model, self.tokenizer, self.info.get("source"))
        return self._engine

    @property
    def engine_name(self) -> str:
        """What runs the replies, e.g. "lean-gpt2" (for /health and reports)."""
        return self.engine.name

    @property
    def base_model(self):
        return self.info.get("base_model")

    @property
    def split(self) -> dict:
        return self.info.get("split", {})

    def decoding_for(self, **options) -> Decoding:
        """The default decoding with `options` (None: keep the default) applied."""
        return self.decoding.replace(**options) if options else self.decoding

    # --- one reply, many replies, a stream --------------------------------------------------
    def chat(self, question: str, sentiment=None, history=None, grounding=None, **decoding) -> str:
        """The reply to `question`. `sentiment`: 0|1|2, neutral|negative|positive or auto (default:
        the bot's). `history`: earlier turns, oldest first, [(question, answer), ...].
        `grounding`: generate|retrieve|rerank (default: the bot's; see grounding.py)."""
        return self.reply(question, sentiment, history, grounding, **decoding).text

    def reply(self, question: str, sentiment=None, history=None, grounding=None, **decoding) -> Reply:
        """chat() as a Reply: the text, the sentiment used and where it came from, the history seen,
        and the reply's own source (generated, or retrieved with its training row)."""
        dec = self.decoding_for(**decoding)
        prepared = [self.prepare(question, sentiment, history, dec)]
        return self._grounded(prepared, dec, 1, None, self.check_grounding(grounding))[0]

    def chat_batch(self, questions, sentiments=None, histories=None, batch_size: int = DEFAULT_BATCH_SIZE,
                   grounding=None, **decoding) -> list[str]:
        """Replies to many questions at once, in order (one sentiment for all, or one each)."""
        return [r.text for r in self.replies(questions, sentiments, histories, batch_size, grounding=grounding,
                                             **decoding)]

    def replies(self, questions, sentiments=None, histories=None, batch_size: int = DEFAULT_BATCH_SIZE, progress=None,
                grounding=None, **decoding) -> list[Reply]:
        """chat_batch() as Replies; `progress(n)` is called as batches finish."""
        dec, mode = self.decoding_for(**decoding), self.check_grounding(grounding)
        return self._grounded(self.prepare_batch(questions, sentiments, histories, dec), dec, batch_size, progress, mode)

    def complete_grounded(self, prompts, decoding: Decoding | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                          grounding=None) -> list[Reply]:
        """complete() in a grounding mode (None: the bot's), for prompts already prepared (a server
        prepares, and so checks, each request before it batches them)."""
        return self._grounded(list(prompts), decoding or self.decoding, batch_size, None,
                              self.check_grounding(grounding))

    def _grounded(self, prepared, dec, batch_size, progress, mode) -> list[Reply]:
        """Replies to prepared prompts in a grounding mode (grounding.py)."""
        if mode == gr.GENERATE:
            return self.complete(prepared, dec, batch_size, progress)
        hits = self.index.search([p.question for p in prepared])
        if mode == gr.RETRIEVE:
            out = [self._retrieved(p, h[0]) if h else None for p, h in zip(prepared, hits)]
            missing = [i for i, r in enumerate(out) if r is None]  # an empty index: the model answers
            for i, reply in zip(missing, self.complete([prepared[i] for i in missing], dec, batch_size)):
                out[i] = reply
        elif mode == gr.REFINE:
            out = self._refined(prepared, hits, dec, batch_size)
        else:
            cands, made = gr.rerank_candidates(self, self.index, prepared, hits, dec, batch_size)
            out = []
            for p, c, reply in zip(prepared, cands, made):
                hit = c.hits[gr.choose(c, self.index.weights)] if c.texts else None
                out.append(reply if hit is None else self._retrieved(p, hit))
        if progress:
            progress(len(out))
        return out

    def _refined(self, prepared, hits, dec, batch_size) -> list[Reply]:
        """The model's replies with the nearest training answer framed in as a reference. Without
        n-gram blocking: the prompt's n-grams count in it, and it would forbid copying the reference."""
        refs = self.index.nearest_answers(hits)
        dec = dec.replace(no_repeat_ngram_size=0)
        room = context_size(self.model) - dec.max_new_tokens
        ids = framing.prompts_ids(self.tokenizer, [(p.question, p.sentiment, p.history) for p in prepared], room, refs)
        framed = [replace(p, ids=i, history=self._seen(i, p.history)) for p, i in zip(prepared, ids)]
        out = self.complete(framed, dec, batch_size)
        for reply, p, h in zip(out, prepared, hits):
            if h:
                reply.source = self.index.source(p.question, h[0]).refined()
        return out

    def _retrieved(self, prompt: Prompt, hit) -> Reply:
        text = self.index.answers[hit.index]
        reply = self._reply(prompt, framing.text_ids(self.tokenizer, text.strip()) + [self.eos_id])
        reply.text, reply.source = text, self.index.source(prompt.question, hit)
        return reply

    @property
    def grounding_modes(self) -> tuple[str, ...]:
        """The grounding modes this bot can answer in (as check_grounding decides): generate; with
        an index, retrieve and rerank; refine too where the model was trained with references."""
        able = []
        for mode in gr.MODES:
            try:
                able.append(self.check_grounding(mode))
            except CheckpointError:
                pass
        return tuple(able)

    def check_grounding(self, mode) -> str:
        """A grounding mode (None: the bot's default); one line saying how to add an index when
        the checkpoint has none."""
        if mode is None:
            mode = getattr(self, "grounding", None) or (self.index.default_mode if self.index is not None else gr.GENERATE)
        mode = gr.check_mode(mode)
        if mode != gr.GENERATE and self.index is None:
            raise CheckpointError(gr.NO_INDEX.format(source=self.info.get("source", "CKPT")))
        if mode == gr.REFINE and not self.info.get("refine"):
            raise CheckpointError(gr.NOT_REFINE)
        return mode

    def stream(self, question: str, sentiment=None, history=None, grounding=None, **decoding):
        """Yield the reply in pieces as it is generated; "".join(pieces) == chat(...). A grounded
        reply comes in one piece (it is chosen whole)."""
        dec = self.decoding_for(**decoding)
        if self.check_grounding(grounding) != gr.GENERATE:  # a grounded reply is chosen whole
            yield self.reply(question, sentiment, history, grounding, **decoding).text
            return
        yield from self.stream_prompt(self.prepare(question, sentiment, history, dec), dec)

    def conversation(self, sentiment=None, history_turns: int | None = None, **decoding) -> "Conversation":
        """A conversation that keeps its turns (the last `history_turns` go into each prompt)."""
        return Conversation(self, sentiment, history_turns, **decoding)

    # --- the layer under them: every door's way in -----------------------------------------
    def prepare(self, question: str, sentiment=None, history=None, decoding: Decoding | None = None) -> Prompt:
        """Check, resolve and frame one question once: its sentiment (given, the default, or read
        by the classifier for `auto`) and its history (as given; an over-long prompt loses its
        oldest turns, then its question's start). Bad input is a ValueError naming it."""
        return self._prepare([question], [sentiment], [history], decoding, batch=False)[0]

    def prepare_batch(self, questions, sentiments=None, histories=None, decoding: Decoding | None = None):
        """prepare() of many questions (one sentiment for all, or one each); errors name the item."""
        return self._prepare(questions, sentiments, histories, decoding, batch=True)

    def _prepare(self, questions, sentiments, histories, decoding, batch: bool) -> list[Prompt]:
        questions = self._listed(questions, "questions")
        n = len(questions)
        cleaned = [clean_question(q, f"question {i + 1}" if batch else "question") for i, q in enumerate(questions)]
        histories = [None] * n if histories is None else self._listed(histories, "histories", n)
        pasts = [turns_of(h, f"history of question {i + 1}" if batch else "history") for i, h in enumerate(histories)]
        chosen = resolve_sentiment(self._per_question(sentiments, n, "sentiments"), cleaned, self.sentiment,
                                   self.classifier)
        pasts = self._resolve_history(pasts, [s for s, _ in chosen])
        room = context_size(self.model) - (decoding or self.decoding).max_new_tokens
        ids = framing.prompts_ids(self.tokenizer, [(q, s, h) for q, (s, _), h in zip(cleaned, chosen, pasts)], room)
        return [Prompt(p, q, s, source, self._seen(p, h)) for p, q, (s, source), h in zip(ids, cleaned, chosen, pasts)]

    def _seen(self, prompt_ids: list[int], history: list[Turn]) -> list[Turn]:
        """The turns of `history` that made it into the prompt: a `<usr>` each (typed text never
        becomes one), the question's included; the oldest are the ones cut."""
        kept = prompt_ids.count(self.ids[framing.USR]) - 1
        return history[len(history) - kept :] if kept else []

    def _resolve_history(self, pasts, current) -> list[list[Turn]]:
        """Earlier turns with a sentiment each: their own (auto read by the classifier), else the
        current question's."""
        flat = [(i, t) for i, turns in enumerate(pasts) for t in turns]
        values = [current[i] if t.sentiment is None else t.sentiment for i, t in flat]
        resolved = resolve_sentiment(values, [t.question for _, t in flat], self.sentiment, self.classifier)
        out = [[] for _ in pasts]
        for (i, t), (s, _) in zip(flat, resolved):
            out[i].append(t._replace(sentiment=s))
        return out

    def prompt(self, question: str, sentiment=None, history=None, decoding: Decoding | None = None) -> list[int]:
        """Framed prompt ids of one question (prepare() tells what went into them)."""
        return self.prepare(question, sentiment, history, decoding).ids

    def prompts(self, questions, sentiments=None, histories=None, decoding: Decoding | None = None):
        """Framed prompt ids of many questions."""
        return [p.ids for p in self.prepare_batch(questions, sentiments, histories, decoding)]

    def resolve_sentiments(self, questions, sentiments=None) -> list[tuple[str, str]]:
        """(sentiment, source) of each question, as prepare() resolves it (see sentiment.resolve)."""
        questions = self._listed(questions, "questions")
        return resolve_sentiment(self._per_question(sentiments, len(questions), "sentiments"), questions,
                                  self.sentiment, self.classifier)

    def complete(self, prompts, decoding: Decoding | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress=None) -> list[Reply]:
        """Replies to prepared prompts (or bare prompt ids), batched; `progress(n)` as batches finish."""
        dec = decoding or self.decoding
        if not prompts:
            return []
        with self._eval_mode():
            new = self.engine.generate([_ids(p) for p in prompts], dec, batch_size, progress)
        return [self._reply(p, ids) for p, ids in zip(prompts, new)]

    def _reply(self, prompt, ids: list[int]) -> Reply:
        reply = Reply(reply_text(self.tokenizer, ids, self.eos_id), ids, len(_ids(prompt)), self.eos_id in ids)
        if isinstance(prompt, Prompt):
            reply.question, reply.history = prompt.question, prompt.history
            reply.sentiment, reply.sentiment_source = prompt.sentiment, prompt.sentiment_source
        return reply

    def stream_prompt(self, prompt, decoding: Decoding | None = None, counter: dict | None = None, stop=None):
        """Text pieces of the reply to one prepared prompt (or prompt ids); `counter["tokens"]`
        counts new tokens. Once `stop` (a threading.Event) is set, no further decoding step runs: a
        server sets it when its client leaves, which can happen between two pieces or inside a
        held-back one."""
        dec = decoding or self.decoding
        pieces = TextPieces(self.tokenizer)
        with self._eval_mode():
            for token in self.engine.stream(_ids(prompt), dec):
                if stop is not None and stop.is_set():
                    return
                if counter is not None:
                    counter["tokens"] = counter.get("tokens", 0) + 1
                piece = pieces.add(token)
                if piece:
                    yield piece
        tail = pieces.finish()
        if tail:
            yield tail

    def is_degenerate(self, reply: Reply, decoding: Decoding | None = None) -> bool:
        cap = (decoding or self.decoding).max_new_tokens
        return is_degenerate(self.tokenizer, reply.token_ids, self.eos_id, cap)

    # --- scoring ----------------------------------------------------------------------------
    @torch.inference_mode()
    def answer_loss_sum(self, conversations, max_len: int | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, int, int]:
        """(summed cross-entropy in nats, answer tokens, answer characters) over every answer and
        `</s>` of `conversations` ([[Turn(question, answer, sentiment), ...], ...]), teacher-forced."""
        from .data import answer_chars, collate

        engines.check_batch_size(batch_size)
        max_len = max_len or int(self.info.get("max_len", framing.DEFAULT_MAX_LEN))
        chars = sum(answer_chars([t.answer for t in turns]) for turns in conversations)
        examples = [framing.conversation_ids(self.tokenizer, turns, max_len) for turns in conversations]
        examples.sort(key=lambda e: len(e[0]))
        total, count = 0.0, 0
        with self._eval_mode():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start : start + batch_size], self.ids[framing.PAD])
                loss, n = bb.answer_loss(self.model, batch["input_ids"].to(self.device),
                                         batch["labels"].to(self.device))
                total += float(loss) * int(n)
                count += int(n)
        return total, count, chars

    # --- export -----------------------------------------------------------------------------
    def save_pretrained(self, directory, adapter_only: bool = False):
        """A plain Hugging Face folder (model, tokenizer, chat template) plus chatbot.json; a LoRA
        bot's adapter is merged into the weights, or, with `adapter_only`, saved as a PEFT folder."""
        if adapter_only:
            if not bb.has_adapter(self.model):
                raise ValueError("--adapter-only: this checkpoint was not trained with --lora; it has no adapter")
            return write_hf(self.model, self.tokenizer, directory, self.export_info(), adapter_only=True)
        return write_hf(bb.merged_copy(self.model), self.tokenizer, directory, self.export_info())

    def save_gguf(self, path, outtype: str = "f16"):
        """A .gguf for llama.cpp and Ollama (a LoRA bot's adapter merged), with an Ollama Modelfile
        beside it (<name>.Modelfile); returns both paths."""
        from .gguf_file import modelfile, write_gguf

        path = Path(path)
        written = write_gguf(bb.merged_copy(self.model), self.tokenizer, path, outtype, self.export_info())
        recipe = path.with_suffix(".Modelfile")
        recipe.write_text(modelfile(path.name, self.decoding), encoding="utf-8")
        return written, recipe

    def export_info(self) -> dict:
        """What chatbot.json holds: every plain-data entry the checkpoint carried, with this bot's values."""
        skip = ("source", "loaded", "sentiment_classifier")
        out = {k: v for k, v in self.info.items() if k not in skip} | {"history_turns": self.history_turns}
        if self.classifier is not None:
            out["sentiment_classifier"] = self.classifier.to_json()
        if self.index is not None:
            out["grounding"] = self.index.to_state()
        return out

    # --- helpers ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode for the duration of a reply, then the model's own mode back."""
        if not self.model.training:  # the usual case; train()/eval() walk every submodule
            yield
            return
        self.model.eval()
        try:
            yield
        finally:
            self.model.train()

    @staticmethod
    def _per_question(values, n: int, what: str) -> list:
        """One value for every question, or a list of one each."""
        if values is None or isinstance(values, (str, int)):
            return [values] * n
        return Chatbot._listed(values, what, n)

    @staticmethod
    def _listed(values, what: str, n: int | None = None) -> list:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"{what} must be a list (one item each); got {values!r:.80}" +
                             ("; for one question use chat()" if what == "questions" else ""))
        values = list(values)
        if n is not None and len(values) != n:
            raise ValueError(f"got {n} questions but {len(values)} {what}")
        return values


class Conversation:
    """Turns so far (`turns`: Turn(question, answer, sentiment), the form `history` takes), and
    the next reply given the last `history_turns` of them."""

    history_turns = _HistoryTurns()

    def __init__(self, bot: Chatbot, sentiment=None, history_turns: int | None = None, grounding=None, **decoding):
        self.bot, self.turns, self.decoding = bot, [], decoding
        bot.decoding_for(**decoding)  # a bad option fails here, not at the first question
        self.grounding = bot.check_grounding(grounding)
        self.sentiment = None if sentiment is None else check_sentiment(sentiment)
        self.history_turns = bot.history_turns if history_turns is None else history_turns
        self.last: Reply | None = None

    def history(self) -> list[Turn]:
        return self.turns[len(self.turns) - self.history_turns :] if self.history_turns else []

    def reply(self, question: str, sentiment=None, **decoding) -> Reply:
        """The next reply, as a Reply; the turn is kept."""
        grounding = decoding.pop("grounding", None) or self.grounding
        self.last = self.bot.reply(question, self._sentiment(sentiment), self.history(), grounding,
                                   **self._decoding(decoding))
        self.turns.append(self.last.turn)
        return self.last

    def say(self, question: str, sentiment=None, **decoding) -> str:
        return self.reply(question, sentiment, **decoding).text

    def stream(self, question: str, sentiment=None, **decoding):
        """Like say(), in pieces; the turn is kept once the reply is complete (a grounded reply
        comes in one piece)."""
        if self.bot.check_grounding(decoding.get("grounding") or self.grounding) != gr.GENERATE:
            yield self.reply(question, sentiment, **decoding).text
            return
        decoding.pop("grounding", None)
        dec = self.bot.decoding_for(**self._decoding(decoding))
        prompt = self.bot.prepare(question, self._sentiment(sentiment), self.history(), dec)
        self.last = Reply("", [], len(prompt.ids), False, prompt.question, prompt.sentiment,
                          prompt.sentiment_source, prompt.history)
        pieces = []
        for piece in self.bot.stream_prompt(prompt, dec):
            pieces.append(piece)
            yield piece
        self.last.text = "".join(pieces)
        self.turns.append(self.last.turn)

    @property
    def last_sentiment(self) -> str | None:
        """The sentiment the last reply was framed with."""
        return self.last.sentiment if self.last else None

    def reset(self):
        self.turns = []

    @property
    def auto(self) -> bool:
        """Does this conversation let the classifier choose each sentiment?"""
        return (self.sentiment or self.bot.sentiment) == AUTO

    def _sentiment(self, sentiment):
        return self.sentiment if sentiment is None else sentiment

    def _decoding(self, decoding: dict) -> dict:
        return {**self.decoding, **decoding}


def _ids(prompt) -> list[int]:
    return prompt.ids if isinstance(prompt, Prompt) else prompt


def as_chatbot(obj) -> Chatbot:
    """A Chatbot from a Chatbot or from a KoGPT2Chat training module (its `.chatbot`)."""
    if isinstance(obj, Chatbot):
        return obj
    if hasattr(obj, "chatbot"):
        return obj.chatbot
    raise TypeError(f"expected a Chatbot (kogpt2_chatbot.Chatbot.load(...)); got {type(obj).__name__}")
