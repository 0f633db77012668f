"""The language model and tokenizer under the chatbot.

`load_backbone(name)` takes a Hugging Face hub id or a local folder (default KoGPT2), or one of
the offline presets below, and returns (model, tokenizer) with the framing's tokens in place.
`backbone_spec()` / `backbone_from_spec()` turn a backbone into plain data (config + tokenizer
JSON) and back, so a checkpoint carries everything needed to rebuild it without a network.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from . import framing

DEFAULT_BASE_MODEL = "skt/kogpt2-base-v2"

# KoGPT2's own tokenizer setup, as the original loaded it.
KOGPT2_SPECIAL = dict(
    bos_token=framing.EOS, eos_token=framing.EOS, unk_token=framing.UNK,
    pad_token=framing.PAD, mask_token=framing.MASK,
)

# Offline presets: a GPT-2 initialised at random and a BPE tokenizer trained on the training
# split's text (a Metaspace pre-tokenizer, like KoGPT2's). Sizes with the full corpus:
#   scratch       3 layers x 256, 4 heads, BPE 8,000  -> about 4.5M parameters; the best of a recorded
#                 sweep (bench/RESULTS.md, "The scratch recipe"): with lr 2e-3 and 12 epochs it beat the
#                 earlier 6 x 384 preset in bits per character and chrF at a fifth of the training time
#   scratch-tiny  2 layers x 64,  2 heads, BPE 2,000  -> about 0.2M parameters (tests, demos)
SCRATCH_PRESETS = {
    "scratch": dict(n_layer=3, n_embd=256, n_head=4, n_positions=256, vocab_size=8000),
    "scratch-tiny": dict(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=2000),
}


class BackboneError(RuntimeError):
    """The base model could not be loaded; the message says what to do."""


class RemoteCodeRefused(BackboneError):
    """A model folder or hub repo that would run its own Python code (config `auto_map`)."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` (or `name`) that is no local path: a folder's parent existing here (model_chp/x)
    or a path-like start (./, /, ~) means the user meant a folder."""
    path = Path(name)
    return bool(_HUB_ID.match(name)) and not path.exists() and not (path.parent != Path(".") and path.parent.exists())


def remote_code_file(name: str, local: bool) -> str | None:
    """Which of `name`'s config files asks transformers to run code shipped with the model
    (an `auto_map`), if any; read before anything of the model is loaded."""
    for filename in ("config.json", "tokenizer_config.json"):
        path = Path(name) / filename
        if not Path(name).is_dir():
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(name, filename, local_files_only=local))
            except Exception:  # noqa: BLE001 - not there: from_pretrained reports it, code stays off
                continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("auto_map"):
            return filename
    return None


def refuse_remote_code(name: str, local: bool, trust_remote_code: bool = False):
    if trust_remote_code:
        return
    found = remote_code_file(name, local)
    if found:
        raise RemoteCodeRefused(
            f"{name!r} ships its own Python code ('auto_map' in its {found}), which loading would run; this kit "
            "never runs code from a model unless told to: use a model transformers supports as it is (training "
            "takes no other), or, to reply with it, pass --trust-remote-code (Python: trust_remote_code=True) "
            "if you have read that code and trust it")


@contextlib.contextmanager
def no_progress_bar():
    """transformers draws "Loading weights" / "Writing model shards" bars on stderr; a door says one line itself."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def hf_load(auto_class, name: str, trust_remote_code: bool = False, **kwargs):
    """`auto_class.from_pretrained(name)` that refuses a model's own code (unless trusted) before
    transformers could run it or ask about it, and draws no progress bar."""
    refuse_remote_code(name, kwargs.get("local_files_only", False), trust_remote_code)
    with no_progress_bar():
        return auto_class.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)


def is_scratch(name: str) -> bool:
    return name in SCRATCH_PRESETS


def ensure_framing_tokens(model, tokenizer) -> list[int]:
    """Make every framing token a special token of `tokenizer`; grow the embeddings if needed.
    Returns the ids of the tokens that had to be added to the vocabulary (their rows are new)."""
    before = len(tokenizer)
    for attr, token in (("eos_token", framing.EOS), ("pad_token", framing.PAD), ("unk_token", framing.UNK)):
        if getattr(tokenizer, attr) is None or (attr != "unk_token" and getattr(tokenizer, attr) != token):
            # Our framing ends answers with </s> and pads with <pad>, whatever the base model used.
            tokenizer.add_special_tokens({attr: token})
    if tokenizer.bos_token is None:
        tokenizer.add_special_tokens({"bos_token": framing.EOS})
    # Special status (not just presence) matters: framing encodes user text with special-token
    # matching off, and that switch only covers tokens marked special.
    extra = [t for t in (framing.USR, framing.SYS, framing.SENT, framing.MASK) if t not in tokenizer.all_special_tokens]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    ids = framing.control_ids(tokenizer)
    model.config.eos_token_id = ids[framing.EOS]
    model.config.bos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)
    model.config.pad_token_id = ids[framing.PAD]
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = ids[framing.EOS]
        model.generation_config.bos_token_id = model.config.bos_token_id
        model.generation_config.pad_token_id = ids[framing.PAD]
    return list(range(before, len(tokenizer)))


def load_backbone(name: str = DEFAULT_BASE_MODEL, texts=None, cache_dir: str | os.PathLike | None = None,
                  quantize: str | None = None, return_new_ids: bool = False, trust_remote_code: bool = False):
    """(model, tokenizer) for a hub id, a local folder, or a scratch preset (needs `texts`);
    with `return_new_ids`, also the ids of the framing tokens that had to be added. A model that
    ships its own code is refused unless `trust_remote_code`."""
    if is_scratch(name):
        if texts is None:
            raise ValueError(f"the {name!r} preset trains its tokenizer and needs the training texts")
        tokenizer = scratch_tokenizer(texts, SCRATCH_PRESETS[name]["vocab_size"], cache_dir)
        model = scratch_model(name, tokenizer)
        new_ids = ensure_framing_tokens(model, tokenizer)
        return (model, tokenizer, new_ids) if return_new_ids else (model, tokenizer)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(name).exists() and not looks_like_hub_id(name):
        raise BackboneError(f"--base-model {name}: no such folder here (and not a hub id); check the path, "
                            "or give a hub id such as skt/kogpt2-base-v2, or scratch")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise BackboneError(f"--base-model {name}: this folder has no config.json; give the folder a model was saved "
                            "to (save_pretrained, or a clone of its hub repo), a hub id, or scratch")
    kwargs = dict(KOGPT2_SPECIAL) if "kogpt2" in name.lower() else {}
    local = Path(name).exists() or hub_unreachable()  # unreachable: the hub cache, no retries for a minute
    try:
        tokenizer = hf_load(AutoTokenizer, name, trust_remote_code, local_files_only=local, **kwargs)
        if quantize:
            model = quantized_base(name, trust_remote_code)
        else:
            model = hf_load(AutoModelForCausalLM, name, trust_remote_code, local_files_only=local)
    except OSError as err:
        where = "folder" if Path(name).exists() else "hub model" if "/" in name else "folder (none here) or hub model"
        raise BackboneError(
            f"could not load the {where} {name!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}).\n"
            "Without access to the Hugging Face hub there are two ways out:\n"
            "  1. --base-model PATH  a local folder holding the model (save_pretrained / git clone of the hub repo)\n"
            "  2. --base-model scratch (or scratch-tiny)  a small GPT-2 trained from scratch, no download"
        ) from err
    except ValueError as err:  # transformers' reasons span lines: no tokenizer it can build, an unknown model type
        raise BackboneError(f"could not load {name!r} with transformers: {' '.join(str(err).split())}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise BackboneError(f"{name!r} has no fast tokenizer (tokenizer.json); one is required")
    new_ids = ensure_framing_tokens(model, tokenizer)
    return (model, tokenizer, new_ids) if return_new_ids else (model, tokenizer)


def hub_unreachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub (or the proxy in between) does not answer within `timeout`.

    Without this a download on a machine without network retries for about a minute before it
    fails; with it the hub cache is tried at once and the clear error follows in seconds."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False  # transformers goes to the cache by itself, fast
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return False
    except OSError:
        return True


def scratch_model(name: str, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    preset = dict(SCRATCH_PRESETS[name])
    preset["vocab_size"] = len(tokenizer)
    ids = framing.control_ids(tokenizer)
    config = GPT2Config(
        **preset, bos_token_id=ids[framing.EOS], eos_token_id=ids[framing.EOS], pad_token_id=ids[framing.PAD]
    )
    return GPT2LMHeadModel(config)


def scratch_tokenizer(texts, vocab_size: int, cache_dir=None):
    """A BPE tokenizer (NFKC, Metaspace) trained on `texts`, cached by the texts' hash.

    The cache keeps every process of a multi-process run (and a re-run) on identical ids.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    digest = hashlib.sha256(json.dumps([vocab_size, texts], ensure_ascii=False).encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"scratch-tokenizer-{digest}.json" if cache_dir else None
    if cached is not None and cached.exists():
        backend = Tokenizer.from_file(str(cached))
    else:
        backend = Tokenizer(models.BPE(unk_token=framing.UNK))
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(framing.CONTROL_TOKENS),
            # Digits for the sentiment, ASCII for pasted text: never <unk>.
            initial_alphabet=[chr(c) for c in range(33, 127)],
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            backend.save(str(tmp))
            os.replace(tmp, cached)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **KOGPT2_SPECIAL)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [framing.USR, framing.SYS, framing.SENT]}, replace_extra_special_tokens=False
    )
    return tokenizer


# --- plain-data form, for checkpoints -------------------------------------------------------

def backbone_spec(model, tokenizer) -> dict:
    """Plain types only (str, int, float, bool, list, dict): loads under weights_only=True."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {
        "model_type": model.config.model_type,
        "config": json.loads(model.config.to_json_string(use_diff=False)),
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": special,
        "extra_special_tokens": [t for t in tokenizer.all_special_tokens if t not in special.values()],
    }


def lora_spec(model, tokenizer, base_model: str, settings: LoraSettings, new_token_ids) -> dict:
    """A LoRA checkpoint's plain-data backbone: the base's id or folder and a fingerprint of its
    config, the tokenizer, and the LoRA settings; never the base weights."""
    spec = backbone_spec(unwrap(model), tokenizer)
    return {"kind": "lora", "base_model": base_model, "config_fingerprint": config_fingerprint(unwrap(model).config),
            "lora": dataclasses.asdict(settings), "new_token_ids": list(new_token_ids),
            **{k: spec[k] for k in ("model_type", "tokenizer_json", "special_tokens", "extra_special_tokens")}}


def lora_from_spec(spec: dict, trust_remote_code: bool = False):
    """Rebuild (adapter model, tokenizer) of a LoRA checkpoint: the base from its hub id (the cache
    when the hub is out of reach) or folder, checked against the fingerprint; adapter weights are
    fresh until the checkpoint's state loads. A base that ships its own code is refused first."""
    from transformers import AutoModelForCausalLM

    name = spec["base_model"]
    local = Path(name).exists() or hub_unreachable()
    try:
        model = hf_load(AutoModelForCausalLM, name, trust_remote_code, local_files_only=local)
    except RemoteCodeRefused as err:
        raise RemoteCodeRefused(f"this checkpoint is a LoRA adapter over {name!r}, which is refused: {err}") from None
    except OSError as err:
        where = f"the folder {name}" if Path(name).is_absolute() or name.startswith(".") else f"the base model {name!r}"
        raise BackboneError(
            f"this checkpoint is a LoRA adapter over {where}, which could not be loaded "
            f"({str(err).splitlines()[0]}); put that model where it was (a folder), or in the Hugging Face cache "
            f"(connect once, or `hf download {name}`), then load again") from err
    if config_fingerprint(model.config) != spec["config_fingerprint"]:
        raise BackboneError(f"the base model at {name!r} is not the one this adapter was trained on (its config "
                            f"differs); point to the original base")
    tokenizer = tokenizer_from_spec(spec)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    ensure_framing_tokens(model, tokenizer)
    return add_lora(model, LoraSettings(**{**spec["lora"], "quantize": None}), spec.get("new_token_ids", ())), tokenizer


def tokenizer_from_spec(spec: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(spec["tokenizer_json"]), **spec["special_tokens"]
    )
    if spec.get("extra_special_tokens"):
        tokenizer.add_special_tokens(
            {"additional_special_tokens": spec["extra_special_tokens"]}, replace_extra_special_tokens=False
        )
    return tokenizer


def backbone_from_spec(spec: dict, trust_remote_code: bool = False):
    """Rebuild (model, tokenizer) from backbone_spec(); weights are random until a state dict loads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.get("kind") == "lora":
        return lora_from_spec(spec, trust_remote_code)
    config = dict(spec["config"])
    model_type = config.pop("model_type", spec["model_type"])
    config = AutoConfig.for_model(model_type, **config)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model, tokenizer_from_spec(spec)


# --- LoRA (PEFT) ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """What --lora-r, --lora-alpha, --lora-dropout, --lora-targets and --quantize said, as a checkpoint
    records it. The options' defaults and bounds are declared once, in train_options.TrainConfig."""
    r: int
    alpha: float
    dropout: float
    targets: str | None = None     # comma-separated module names; None: every linear layer but the output
    quantize: str | None = None    # "nf4": the base in 4 bit (QLoRA, CUDA only)


def context_length(model) -> int | None:
    """How many positions the model can attend over (None when its config does not say)."""
    config = model.config
    value = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def unwrap(model):
    """The Hugging Face causal LM under a PEFT wrapper (itself when there is none)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def has_adapter(model) -> bool:
    return hasattr(model, "peft_config")


def add_lora(model, settings: LoraSettings, new_token_ids=()):
    """Wrap `model` with LoRA on its linear layers (found by type, so GPT-2, GPT-NeoX, Llama, Qwen
    and Gemma need no module names) and make the rows of `new_token_ids` trainable, in the input
    embedding and, when it is not tied to it, the output layer: a base learns the framing tokens
    it lacked while everything else of it stays frozen."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = [t.strip() for t in settings.targets.split(",") if t.strip()] if settings.targets else "all-linear"
    tokens = None
    if new_token_ids:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        names = {id(m): n.split(".")[-1] for n, m in model.named_modules()}
        tied = out is None or out.weight is inp.weight
        tokens = list(new_token_ids) if tied else {names[id(inp)]: list(new_token_ids), names[id(out)]: list(new_token_ids)}
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, trainable_token_indices=tokens, task_type="CAUSAL_LM",
                        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise BackboneError(f"--lora-targets {settings.targets!r}: {err}") from err


def adapter_state(model) -> dict:
    """The trainable tensors only: LoRA matrices and the new tokens' rows (what a checkpoint keeps)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def merged_copy(model):
    """A plain model with the adapter merged into the weights (the live adapter model is untouched)."""
    import copy

    return copy.deepcopy(model).merge_and_unload() if has_adapter(model) else model


def config_fingerprint(config) -> str:
    """What identifies a base model's architecture: its config, less the fields training changes."""
    data = json.loads(config.to_json_string(use_diff=False))
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "transformers_version",
                "_name_or_path", "torch_dtype", "dtype", "architectures", "use_cache"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def require_cuda_for_quantize():
    """QLoRA's 4-bit kernels run on CUDA only: say so before anything is loaded."""
    import torch

    if not torch.cuda.is_available():
        raise BackboneError("--quantize nf4 (QLoRA) needs an NVIDIA GPU with CUDA, and none is here; "
                            "drop --quantize to train LoRA in full precision")


def quantized_base(name: str, trust_remote_code: bool = False):
    """from_pretrained() in 4-bit NF4 (bitsandbytes) for QLoRA; a clear stop without CUDA."""
    import torch

    require_cuda_for_quantize()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise BackboneError("--quantize nf4 needs bitsandbytes: pip install bitsandbytes") from err
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = hf_load(AutoModelForCausalLM, name, trust_remote_code, quantization_config=config, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _no_padding_check(*args):
    return None


def answer_loss(model, input_ids, labels):
    """(mean cross-entropy over answer tokens, number of answer tokens) of a causal LM."""
    import torch.nn.functional as F

    logits, target, keep = answer_logits(model, input_ids, labels)
    return F.cross_entropy(logits.float(), target), keep.sum()


def answer_logits(model, input_ids, labels):
    """(logits, their target ids, where they are) at the positions whose next token is a target.

    Position t predicts token t+1; only positions whose next token is a target reach the
    output layer, so the vocabulary projection (the widest matrix) runs on answer tokens
    alone. No attention mask: padding is on the right, and a causal model never looks ahead.
    `where` is a bool mask over labels[:, 1:].
    """
    model = unwrap(model)  # under PEFT the adapters sit inside these very modules
    # Right padding without a mask is deliberate here; transformers' check for it would warn (and
    # read the ids back from the GPU every step).
    model.base_model.warn_if_padding_and_no_attention_mask = _no_padding_check
    target = labels[:, 1:]
    keep = target != framing.IGNORE_INDEX
    hidden = model.base_model(input_ids=input_ids[:, :-1]).last_hidden_state
    return model.get_output_embeddings()(hidden[keep]), target[keep], keep


def dense_answer_loss(model, input_ids, labels):
    """answer_loss's value without its data-dependent shapes, for torch.compile and CUDA graphs:
    every position goes through the output layer and non-targets are ignored, so no step waits
    for the GPU to say how many answer tokens there are."""
    import torch.nn.functional as F

    model = unwrap(model)
    model.base_model.warn_if_padding_and_no_attention_mask = _no_padding_check
    hidden = model.base_model(input_ids=input_ids[:, :-1]).last_hidden_state
    logits = model.get_output_embeddings()(hidden)
    return F.cross_entropy(logits.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=framing.IGNORE_INDEX)


def compiled_answer_loss(model, bucket: int = 16):
    """answer_loss(model, ids, labels)'s mean, compiled with torch.compile (forward, loss and, through
    AOTAutograd, backward); on a GPU replayed as a CUDA graph per width. Batches are right-padded to
    a multiple of `bucket` tokens (ids 0, labels ignored: a causal model never looks right), so a
    run compiles a few shapes, not one per batch width."""
    import torch
    import torch.nn.functional as F

    compiled = {}

    def loss(input_ids, labels):
        width = -(-input_ids.shape[1] // bucket) * bucket
        if width != input_ids.shape[1]:
            input_ids = F.pad(input_ids, (0, width - input_ids.shape[1]), value=0)
            labels = F.pad(labels, (0, width - labels.shape[1]), value=framing.IGNORE_INDEX)
        if "step" not in compiled:
            mode = "reduce-overhead" if input_ids.is_cuda else None
            compiled["step"] = torch.compile(lambda ids, target: dense_answer_loss(model, ids, target),
                                             mode=mode, dynamic=True)
        if input_ids.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done with
        return compiled["step"](input_ids, labels).clone()  # a copy the next replay cannot overwrite

    return loss


def save_hf(model, tokenizer, directory, adapter_only: bool = False):
    """save_pretrained() of model and tokenizer, with the framing's chat template and the
    GenerationConfig of the default decoding, so plain transformers replies as the bot does.
    With `adapter_only`, `model` is a PEFT model and the folder is its adapter (PEFT's own layout).
    checkpoint.write_hf() calls this into a temporary folder and adds the chatbot's info file."""
    from .decoding import Decoding

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.chat_template = framing.CHAT_TEMPLATE
    base = unwrap(model)
    base.generation_config = Decoding().generation_config(tokenizer, base.config)
    if adapter_only:
        base.generation_config.save_pretrained(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
