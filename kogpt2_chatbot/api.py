"""The chatbot API: one object that every door (REPL, ask, serve, answer, evaluate, training's
samples) uses, and the one to use from Python.

    from kogpt2_chatbot import Chatbot

    bot = Chatbot.load("model_chp/demo")    # a run folder (its best checkpoint), a .ckpt, an hf/ folder, a hub id
    bot.chat("배탈났어", sentiment=1)                        # one reply
    bot.chat_batch(["배고파", "헤어졌어"], [0, 1])            # many, batched
    for piece in bot.stream("첫 데이트야", 2): ...           # a reply as it is generated
    talk = bot.conversation()                              # a conversation that remembers
    talk.say("내 이름은 민수야"); talk.say("내 이름이 뭐였지?")

It holds the model, the tokenizer, the framing ids (looked up once), the default decoding and
sentiment, and how many earlier turns a conversation keeps (`history_turns`: what the
checkpoint was trained with; 0 for a single-turn corpus, so such a bot answers every question
on its own, exactly as before conversations existed).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import backbone as bb
from . import framing
from .checkpoint import CheckpointError, MissingCheckpoint, load_model, write_hf  # noqa: F401  (re-exported: the API's errors)
from .decoding import Decoding
from . import engines
from .engines.base import context_size
from .engines.text import TextPieces, is_degenerate, reply_text
from .sentiment import SentimentClassifier

AUTO = "auto"  # the sentiment the checkpoint's classifier reads from the question


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
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            warn(f"--device {device}: no Apple GPU here; running on the CPU")
            return torch.device("cpu")
        return chosen
    if gpus:
        if torch.cuda.is_available():
            return torch.device("cuda")
        warn(f"--gpus {gpus}: no GPU found; running on the CPU")
    return torch.device("cpu")


def clean_question(question) -> str:
    if not isinstance(question, str):
        raise ValueError(f"question must be text; got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise ValueError("question is empty: type something to ask")
    return text


def history_turns_of(history) -> list[tuple[str, object, str]]:
    """Earlier turns as (question, sentiment or None, answer), from the forms people write:
    (question, answer), (question, answer, sentiment), {"question", "answer", "sentiment"}."""
    turns = []
    for n, turn in enumerate(history or (), 1):
        if isinstance(turn, dict):
            question, answer, sentiment = turn.get("question"), turn.get("answer"), turn.get("sentiment")
        elif isinstance(turn, (tuple, list)) and len(turn) in (2, 3):
            question, answer, sentiment = turn[0], turn[1], turn[2] if len(turn) == 3 else None
        else:
            raise ValueError(f"history turn {n}: expected (question, answer) or (question, answer, sentiment); "
                             f"got {turn!r}")
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip():
            raise ValueError(f"history turn {n}: question and answer must be text, the question not empty")
        turns.append((question, sentiment, answer))
    return turns


@dataclass
class Reply:
    """One generated reply with what a server reports about it."""
    text: str
    token_ids: list[int]      # new tokens, `</s>` included when the reply stopped by itself
    prompt_tokens: int
    finished: bool            # stopped at `</s>` (else it hit max_new_tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Chatbot:
    """A fine-tuned chatbot: model + tokenizer + framing + defaults. See the module doc."""

    def __init__(self, model, tokenizer, sentiment=None, decoding: Decoding | dict | None = None,
                 history_turns: int = 0, info: dict | None = None, engine: str = "auto",
                 classifier: SentimentClassifier | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.ids = framing.control_ids(tokenizer)
        self.eos_id = self.ids[framing.EOS]
        self.classifier = classifier
        # Default: `auto` where the checkpoint has a classifier (measured best; bench/RESULTS.md,
        # "Sentiment by itself"), else 0 (everyday), as before classifiers existed.
        self.sentiment = self.check_sentiment(sentiment if sentiment is not None else
                                              (AUTO if classifier is not None else "0"))
        self.decoding = decoding if isinstance(decoding, Decoding) else Decoding.from_kwargs(**(decoding or {}))
        if not isinstance(history_turns, int) or history_turns < 0:
            raise ValueError(f"history turns must be a whole number >= 0; got {history_turns!r}")
        self.history_turns = history_turns
        self.info = dict(info or {})
        self.engine_choice = engines.check_name(engine)  # `auto`, or an engine name (engines.names())
        self._engine = None

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
    def chat(self, question: str, sentiment=None, history=None, **decoding) -> str:
        """The reply to `question`. `sentiment`: 0|1|2 or neutral|negative|positive (default:
        the bot's). `history`: earlier turns, oldest first, [(question, answer), ...]."""
        return self.chat_batch([question], [sentiment], [history], batch_size=1, **decoding)[0]

    def chat_batch(self, questions, sentiments=None, histories=None, batch_size: int = 64, **decoding) -> list[str]:
        """Replies to many questions at once, in order (one sentiment for all, or one each)."""
        dec = self.decoding_for(**decoding)
        prompts = self.prompts(list(questions), sentiments, histories, dec)
        return [r.text for r in self.complete(prompts, dec, batch_size)]

    def stream(self, question: str, sentiment=None, history=None, **decoding):
        """Yield the reply in pieces as it is generated; "".join(pieces) == chat(...)."""
        dec = self.decoding_for(**decoding)
        yield from self.stream_prompt(self.prompt(question, sentiment, history, dec), dec)

    def conversation(self, sentiment=None, history_turns: int | None = None, **decoding) -> "Conversation":
        """A conversation that keeps its turns (the last `history_turns` go into each prompt)."""
        return Conversation(self, sentiment, history_turns, **decoding)

    # --- the layer under them: for doors that batch, count tokens or stream themselves ------
    def prompt(self, question: str, sentiment=None, history=None, decoding: Decoding | None = None) -> list[int]:
        """Framed prompt ids; an over-long one loses its oldest turns, then its question's start."""
        return self.prompts([question], [sentiment], [history], decoding)[0]

    def prompts(self, questions, sentiments=None, histories=None, decoding: Decoding | None = None):
        n = len(questions)
        sentiments = self._per_question(sentiments, n, "sentiments")
        histories = [None] * n if histories is None else list(histories)
        if len(histories) != n:
            raise ValueError(f"got {n} questions but {len(histories)} histories")
        room = context_size(self.model) - (decoding or self.decoding).max_new_tokens
        questions = [clean_question(q) for q in questions]
        sentiments = self.sentiments_for(questions, sentiments)
        items = []
        for question, sentiment, history in zip(questions, sentiments, histories):
            turns = history_turns_of(history)
            past = []
            if turns:
                past_sentiments = self.sentiments_for([q for q, _, _ in turns], [sentiment if s is None else s
                                                                                 for _, s, _ in turns])
                past = [(q, s, a) for (q, _, a), s in zip(turns, past_sentiments)]
            items.append((question, sentiment, past))
        return framing.prompts_ids(self.tokenizer, items, room)

    def check_sentiment(self, sentiment) -> str:
        """'0'|'1'|'2', or 'auto'; ValueError naming what is accepted."""
        if isinstance(sentiment, str) and sentiment.strip().lower() == AUTO:
            return AUTO
        try:
            return framing.normalize_sentiment(sentiment)
        except ValueError:
            raise ValueError(f"sentiment must be {framing.SENTIMENT_HELP}, or auto; got {sentiment!r}") from None

    def sentiments_for(self, questions, sentiments=None) -> list[str]:
        """The sentiment each question is framed with: given, the bot's default, or read by the
        classifier for `auto` (0 when the checkpoint has no classifier)."""
        chosen = [self.check_sentiment(self.sentiment if s is None else s)
                  for s in self._per_question(sentiments, len(questions), "sentiments")]
        auto = [i for i, s in enumerate(chosen) if s == AUTO]
        if auto:
            guesses = self.classifier.predict([questions[i] for i in auto]) if self.classifier else ["0"] * len(auto)
            for i, guess in zip(auto, guesses):
                chosen[i] = guess
        return chosen

    def sentiment_of(self, sentiment=None, question: str | None = None) -> str:
        """One sentiment: given or the default; `auto` needs the question."""
        sentiment = self.check_sentiment(self.sentiment if sentiment is None else sentiment)
        if sentiment == AUTO and question is not None:
            return self.sentiments_for([clean_question(question)], [AUTO])[0]
        return sentiment

    def complete(self, prompts: list[list[int]], decoding: Decoding | None = None, batch_size: int = 64,
                 progress=None) -> list[Reply]:
        """Replies to framed prompts, batched; `progress(n)` is called as batches finish."""
        dec = decoding or self.decoding
        if not prompts:
            return []
        with self._eval_mode():
            new = self.engine.generate(prompts, dec, batch_size, progress)
        return [Reply(reply_text(self.tokenizer, ids, self.eos_id), ids, len(p), self.eos_id in ids)
                for p, ids in zip(prompts, new)]

    def stream_prompt(self, prompt: list[int], decoding: Decoding | None = None, counter: dict | None = None,
                      stop=None):
        """Text pieces of the reply to one framed prompt; `counter["tokens"]` counts new tokens.
        Once `stop` (a threading.Event) is set, no further decoding step runs: a server sets it
        when its client leaves, which can happen between two pieces or inside a held-back one."""
        dec = decoding or self.decoding
        pieces = TextPieces(self.tokenizer)
        with self._eval_mode():
            for token in self.engine.stream(prompt, dec):
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
                        batch_size: int = 64) -> tuple[float, int, int]:
        """(summed cross-entropy in nats, answer tokens, answer characters) over every answer and
        `</s>` of `conversations` ([[(question, sentiment, answer), ...], ...]), teacher-forced."""
        from .data import answer_chars, collate

        max_len = max_len or int(self.info.get("max_len", framing.DEFAULT_MAX_LEN))
        chars = sum(answer_chars([a for _, _, a in turns]) for turns in conversations)
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
        if values is None or isinstance(values, (str, int)):
            return [values] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"got {n} questions but {len(values)} {what}")
        return values


class Conversation:
    """Turns so far (`turns`: (question, answer, sentiment), the form `history` takes), and the
    next reply given the last `history_turns` of them."""

    def __init__(self, bot: Chatbot, sentiment=None, history_turns: int | None = None, **decoding):
        self.bot, self.turns, self.decoding = bot, [], decoding
        self.sentiment = None if sentiment is None else bot.check_sentiment(sentiment)
        self.history_turns = bot.history_turns if history_turns is None else history_turns

    def history(self) -> list:
        return self.turns[len(self.turns) - self.history_turns :] if self.history_turns else []

    def say(self, question: str, sentiment=None, **decoding) -> str:
        sentiment = self.bot.sentiment_of(sentiment if sentiment is not None else self.sentiment, question)
        self.last_sentiment = sentiment
        answer = self.bot.chat(question, sentiment, self.history(), **{**self.decoding, **decoding})
        self.turns.append((question, answer, sentiment))
        return answer

    def stream(self, question: str, sentiment=None, **decoding):
        """Like say(), in pieces; the turn is kept once the reply is complete."""
        sentiment = self.bot.sentiment_of(sentiment if sentiment is not None else self.sentiment, question)
        self.last_sentiment = sentiment
        pieces = []
        for piece in self.bot.stream(question, sentiment, self.history(), **{**self.decoding, **decoding}):
            pieces.append(piece)
            yield piece
        self.turns.append((question, "".join(pieces), sentiment))

    def reset(self):
        self.turns = []

    @property
    def auto(self) -> bool:
        """Does this conversation let the classifier choose each sentiment?"""
        return (self.sentiment or self.bot.sentiment) == AUTO


def as_chatbot(obj) -> Chatbot:
    """A Chatbot from a Chatbot or from a KoGPT2Chat training module (its `.chatbot`)."""
    if isinstance(obj, Chatbot):
        return obj
    if hasattr(obj, "chatbot"):
        return obj.chatbot
    raise TypeError(f"expected a Chatbot (kogpt2_chatbot.Chatbot.load(...)); got {type(obj).__name__}")
