"""The command line: `python -m kogpt2_chatbot <command>` and the original's `train_torch.py` flags.

One set of flag groups serves every door, so a flag means the same thing everywhere.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import backbone as bb
from . import decoding as dec
from . import engines
from . import framing
from . import options
from . import train_options as topts
from .serve import add_serve_args
from .gguf_file import OUTTYPES
from . import grounding as gr
from .sentiment import check as check_sentiment
from .sheet import INPUT_SUFFIXES, OUTPUT_SUFFIXES

# The parser imports nothing heavy: --help and a mistyped flag answer at once; torch loads after.
DEFAULT_INPUT = "EC_data/sample_emotions.csv"  # `answer` (chatbot.py) with no --input: the sample sheet


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line on stderr and exit 2, like every other error (not the whole usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_train_args(p: argparse.ArgumentParser):
    """The training flags, built from their one declaration (train_options.TrainConfig)."""
    topts.add_cli_args(p)


def add_model_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("model")
    add_model_source_args(g)
    g.add_argument("--sentiment", default=None,
                   type=options.argparse_type(check_sentiment, str, "sentiment", ValueError),  # before the model loads
                   help="0 일상 (neutral), 1 이별 (negative), 2 사랑 (positive), or auto: the checkpoint's classifier "
                        "reads each question (default: auto when the checkpoint has a classifier, else 0)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: --gpus, else cpu)")
    g.add_argument("--engine", default=engines.AUTO, metavar="NAME",  # checked by load_chatbot: one line
                   help=f"what runs the replies: {', '.join(engines.names())} (default %(default)s: llamacpp for a .gguf, "
                        "static with CUDA graphs for GPT-2 on a GPU, lean for GPT-2 elsewhere, hf (generate()) for "
                        "other models)")
    g.add_argument("--grounding", choices=gr.MODES, default=None,
                   help="generate: the model's own reply; retrieve: the answer of the nearest training question; "
                        "rerank: the model picks among those answers and its own reply; retrieve and rerank need the "
                        "checkpoint's index of its training pairs (default: the mode the checkpoint measured best on "
                        f"its validation split, else {gr.DEFAULT_MODE})")


def add_model_source_args(g):
    """--model_params and --trust-remote-code: which model a door loads, and whether its own code may run."""
    g.add_argument("--model_params", "--model-params", dest="model_params", default=None,
                   help="a training run's folder (its best-by-validation checkpoint), a .ckpt, an exported hf/ "
                        "folder, or a hub id (default: the newest run under model_chp/, its model_-best.ckpt)")
    g.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true",
                   help="allow a model folder or hub repo that ships its own Python code (auto_map) to run it; "
                        "off by default: such a model is refused")


def add_gpus_arg(p: argparse.ArgumentParser):
    topts.add_flag(p, "gpus")  # one flag for training and replying alike


def add_history_arg(p: argparse.ArgumentParser):
    p.add_argument("--history", type=options.argparse_type(framing.check_history_turns, int, "history_turns"),
                   default=None, metavar="N",
                   help="earlier turns each reply sees (default: what the checkpoint was trained with; "
                        "0 for a single-turn corpus)")


def add_batch_size_arg(p, *flags):
    p.add_argument(*flags, dest="batch_size", type=options.argparse_type(engines.check_batch_size, int, "batch_size"),
                   default=engines.DEFAULT_BATCH_SIZE, help=f"questions decoded together (default "
                   f"{engines.DEFAULT_BATCH_SIZE})")


def add_reply_args(p: argparse.ArgumentParser):
    """What every command that loads a checkpoint and replies takes: model, device, decoding."""
    add_model_args(p)
    add_gpus_arg(p)
    dec.add_cli_args(p)


def load_chatbot(args):
    """The Chatbot that --model_params names, on --device/--gpus, with the flags' defaults."""
    from .api import Chatbot

    engines.check_name(args.engine)  # before the seconds a model takes to load
    bot = Chatbot.load(args.model_params, device=args.device, gpus=getattr(args, "gpus", None),
                       trust_remote_code=args.trust_remote_code, sentiment=args.sentiment, decoding=dec.from_args(args),
                       engine=args.engine, grounding=args.grounding)
    _say_loaded(bot, args)
    if getattr(args, "history", None) is not None:
        bot.history_turns = args.history
    bot.engine  # built now: an engine that cannot run here (llama-cpp-python missing) stops before a server starts
    return bot


def _say_loaded(bot, args):
    """One line on stderr naming the file a door loaded; --model_params becomes that file."""
    print(bot.info["loaded"], file=sys.stderr, flush=True)
    args.model_params = bot.info["source"]


def train_command(args):
    from .train import train

    train(topts.from_args(args))


def add_command(commands, name: str, help: str, func, *add_args) -> argparse.ArgumentParser:
    """A subcommand whose flags come from the given `add_*_args` functions, run by `func`."""
    p = commands.add_parser(name, help=help)
    for add in add_args:
        add(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m kogpt2_chatbot", description="KoGPT2 chit-chat bot kit")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command(commands, "train", "fine-tune on chat data: a Q/A/label table, numbered turns or JSONL messages",
                train_command, add_train_args, add_gpus_arg)
    add_command(commands, "chat", "chat in the terminal (or one reply per line through a pipe)",
                chat_command, add_reply_args, add_history_arg)
    add_command(commands, "answer", "answer every sentence of a spreadsheet/CSV/JSONL (chatbot.py)",
                answer_command, add_answer_args, add_reply_args)
    add_command(commands, "serve", "HTTP API, OpenAI-compatible route and a web chat page",
                serve_command, add_reply_args, add_history_arg, add_serve_args)

    p = add_command(commands, "evaluate", "score replies (BLEU, chrF, Dist, Ent, perplexity) against baselines",
                    evaluate_command, add_reply_args)
    g = p.add_argument_group("evaluation")
    g.add_argument("--data", default=None, help="the chat table (default: the one recorded in the checkpoint)")
    g.add_argument("--split", default="val", help="val (the checkpoint's validation split), all, or a FILE to score")
    g.add_argument("--out", default="eval", help="report folder (default %(default)s)")
    add_batch_size_arg(g, "--batch-size")
    g.add_argument("--protocol", choices=topts.PROTOCOLS, default=topts.PROTOCOLS[0],
                   help="kochatbart: score the test part of KoChatBART's 80/10/10 split with its BLEU-3/4 and "
                        "Dist-1/2, beside the published KoChatBART and KoBART figures (train with --protocol kochatbart)")

    p = commands.add_parser("export", help="write a checkpoint as a Hugging Face folder (transformers, vLLM) "
                                                  "or a .gguf (llama.cpp, Ollama)")
    add_model_source_args(p)
    p.add_argument("--out", required=True, help="hf: a new folder to write (model, tokenizer, chat template; an "
                   "earlier export there is replaced, a folder of other files is refused); "
                   "gguf: the .gguf file (an Ollama <name>.Modelfile goes beside it)")
    p.add_argument("--format", dest="format", choices=("hf", "gguf"), default="hf",
                   help="hf: a Hugging Face folder (transformers, vLLM); gguf: one file for llama.cpp and Ollama "
                        "(default %(default)s)")
    p.add_argument("--outtype", choices=OUTTYPES, default=None,
                   help=f"gguf weights: {', '.join(OUTTYPES)} (default f16)")
    p.add_argument("--adapter-only", dest="adapter_only", action="store_true",
                   help="for a --lora checkpoint: write the PEFT adapter folder instead of merged weights")
    p.set_defaults(func=export_command)

    add_index_command(commands)

    p = add_command(commands, "ask", "print the reply to one question", ask_command)
    p.add_argument("question")
    add_reply_args(p)
    return parser


def add_index_command(commands):
    p = commands.add_parser("index", help="add an index of the training pairs to a checkpoint (for --grounding)")
    p.add_argument("--model_params", "--model-params", dest="model_params", default=None,
                   help="the .ckpt or hf/ folder to add the index to, in place (default: the one chat would load)")
    p.add_argument("--data", default=None, help="the chat table it was trained on (default: the one it records)")
    add_gpus_arg(p)
    p.add_argument("--device", default=None, help="cpu, cuda, ... for fitting the rerank weights")
    p.set_defaults(func=index_command)


def add_answer_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("answering a file")
    g.add_argument("--input", default=DEFAULT_INPUT, help=f"{', '.join(INPUT_SUFFIXES)} (default %(default)s)")
    g.add_argument("--output", default=None,
                   help=f"by extension: {', '.join(OUTPUT_SUFFIXES)} (default: <input>.answered.xlsx)")
    g.add_argument("--text-column", dest="text_column", default=None,
                   help="default: Sentence, else the only text column")
    g.add_argument("--emotion-column", dest="emotion_column", default=None,
                   help="default: Emotion when present; without one every row gets --sentiment")
    g.add_argument("--emotion-map", dest="emotion_map", default=None, metavar="FILE.json",
                   help='replaces the emotion -> sentiment map, e.g. {"행복": 2, "슬픔": 1}')
    g.add_argument("--unknown-emotion", dest="unknown_emotion", default=None, metavar="N",
                   help="sentiment for labels not in the map (default: stop with an error)")
    add_batch_size_arg(g, "--batch-size", "--batch_size")
    g.add_argument("--no-progress", dest="progress", action="store_false")


def answer_command(args):
    from .answer_file import answer_file

    try:
        summary = answer_file(load_chatbot(args), args.input, args.output, text_column=args.text_column,
                              emotion_column=args.emotion_column, emotion_map=args.emotion_map,
                              unknown_emotion=args.unknown_emotion, batch_size=args.batch_size,
                              model_params=args.model_params, progress=args.progress, **dec.from_args(args))
    except KeyboardInterrupt as err:  # answer_file's own says what is kept; before it, nothing was started
        print(f"{err or 'interrupted before any row was answered; nothing was written'}", file=sys.stderr)
        return 130
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary)


def evaluate_command(args):
    from .evaluate import data_for, evaluate

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the report (it is created if missing)")
    bot = load_chatbot(args)
    metrics = evaluate(bot, data_for(bot, args.data), args.split, args.out, args.batch_size, protocol=args.protocol,
                       grounding=args.grounding)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"report: {args.out}/report.md, report.png, metrics.json, samples.csv ({metrics['rows']} rows)")


def index_command(args):
    from . import data as chatdata
    from .api import Chatbot
    from .checkpoint import add_index

    bot = Chatbot.load(args.model_params, device=args.device, gpus=args.gpus, grounding=gr.GENERATE)
    _say_loaded(bot, args)
    data_path = args.data or bot.split.get("data")
    if not data_path:
        raise ValueError(f"{args.model_params} records no training data; pass the table it was trained on with --data")
    table = chatdata.load_chat_table(data_path)
    if bot.split.get("data_sha256") not in (None, table.sha256):
        raise ValueError(f"{data_path} is not the file {args.model_params} was trained on (its SHA-256 differs); "
                         "pass that file with --data")
    index = gr.fit_index(bot, chatdata.training_rows(table.rows, bot.split),
                         table.rows[chatdata.held_out(table.rows, bot.split)])
    add_index(args.model_params, index.to_state())
    print(f"added to {args.model_params} an index of {gr.describe_index(index)} (from {data_path})")


def export_command(args):
    from .api import Chatbot
    from .checkpoint import check_export_target

    if args.format == "gguf":
        return export_gguf(args)
    if args.outtype is not None:
        raise ValueError("--outtype is for --format gguf; an hf folder keeps the checkpoint's own weights")
    check_export_target(args.out)  # before the model loads: a bad --out answers at once
    bot = Chatbot.load(args.model_params, trust_remote_code=args.trust_remote_code)
    _say_loaded(bot, args)
    out = bot.save_pretrained(args.out, adapter_only=args.adapter_only)
    if args.adapter_only:
        print(f"wrote {out}: a PEFT adapter (load it with peft.AutoPeftModelForCausalLM.from_pretrained, "
              f"or give the base model and this folder to vLLM's --lora-modules)")
    else:
        print(f"wrote {out} (load it with AutoModelForCausalLM/AutoTokenizer.from_pretrained, "
              f"or --model_params {out})")


def export_gguf(args):
    from .api import Chatbot
    from .gguf_file import DEFAULT_OUTTYPE, check_exportable, check_target

    if args.adapter_only:
        raise ValueError("--adapter-only is for --format hf; a .gguf holds the merged weights")
    if not args.out.lower().endswith(".gguf"):
        raise ValueError(f"--format gguf: --out must name a .gguf file, e.g. bot.gguf; got {args.out!r}")
    check_target(args.out)  # before the model loads
    bot = Chatbot.load(args.model_params, trust_remote_code=args.trust_remote_code)
    _say_loaded(bot, args)
    check_exportable(bot.model.get_base_model() if hasattr(bot.model, "peft_config") else bot.model)
    gguf_path, recipe = bot.save_gguf(args.out, args.outtype or DEFAULT_OUTTYPE)
    size = gguf_path.stat().st_size / 2**20
    print(f"wrote {gguf_path} ({args.outtype or DEFAULT_OUTTYPE}, {size:.1f} MiB) and {recipe}: "
          f"--model_params {gguf_path} runs it with llama.cpp here; `ollama create NAME -f {recipe}`, "
          f"`llama-server -m {gguf_path} --jinja` and `llama-cli -m {gguf_path}` run it there")


def serve_command(args):
    from .serve import bind, serve, settings_from_args

    settings = settings_from_args(args)
    sock = bind(settings)  # a port in use is said before the model loads
    try:
        bot = load_chatbot(args)
    except BaseException:
        sock.close()
        raise
    serve(bot, settings=settings, sock=sock)


def chat_command(args):
    from . import repl

    bot = load_chatbot(args)
    repl.run(bot)


def ask_command(args):
    print(load_chatbot(args).chat(args.question))


def legacy_parser() -> argparse.ArgumentParser:
    """train_torch.py's parser: the original's --train / --chat switches over the same flags."""
    parser = OneLineParser(prog="train_torch.py", description="Simsimi based on KoGPT-2")
    parser.add_argument("--train", action="store_true", help="for training")
    parser.add_argument("--chat", action="store_true", help="response generation on given user input")
    add_reply_args(parser)
    add_history_arg(parser)
    add_train_args(parser)
    return parser


def legacy_main(argv=None):
    from .noise import silence_known_noise

    silence_known_noise()
    parser = legacy_parser()
    args = parser.parse_args(argv)
    if not (args.train or args.chat):
        parser.error("say what to do: --train, --chat, or both")
    def both(args):
        if args.train:
            train_command(args)
        if args.chat:
            if args.train:  # chat with what was just trained: that run's folder (its best checkpoint)
                args.model_params = str(topts.from_args(args).model_dir)
            chat_command(args)

    return _run(both, args)


def run_script(main) -> int | None:
    """Run a script built on the kit (the benchmarks) under the CLI's rule: a missing file, a bad
    checkpoint or a bad value is one line on stderr and exit code 2, not a traceback."""
    return _run(lambda _args: main(), None)


def _run(func, args):
    """Known failures become one clear line on stderr and exit code 2, not a traceback."""
    try:
        return func(args)
    except (ValueError, FileNotFoundError, bb.BackboneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: what was kept, if the command says (training does)
        print(f"\n{err or 'interrupted'}", file=sys.stderr)
        return 130


def main(argv=None, prog=None):
    from .noise import silence_known_noise

    silence_known_noise()
    parser = build_parser()
    if prog and argv and argv[0] in _subparsers(parser):  # chatbot.py: `answer` under its own name
        sub = _subparsers(parser)[argv[0]]
        sub.prog = prog
        args = sub.parse_args(argv[1:])
    else:
        args = parser.parse_args(argv)
    return _run(args.func, args)


def _subparsers(parser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


if __name__ == "__main__":
    sys.exit(main())
