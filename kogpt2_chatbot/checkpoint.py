"""What a training checkpoint (.ckpt) and an exported hf/ folder hold: the one writer, the one
reader and the checks, so every door (`--resume`, `Chatbot.load`, chat, serve, evaluate, export)
refuses a bad file with the same line.

A .ckpt is Lightning's checkpoint dict, plain data only (it loads with torch.load(weights_only=True)):

    state_dict        the weights, keys "kogpt2.<name>" (LoRA: only the adapter and the new tokens' rows)
    hyper_parameters  KoGPT2Chat's arguments; ["backbone"] is backbone.backbone_spec() or lora_spec():
                      config + tokenizer JSON (or a LoRA base's id and fingerprint), so no network is needed
    chatbot_split     which rows training held out (data path, its sha256, seed, validation groups/lines)
    chatbot           everything else a chatbot needs, as plain data (CHATBOT key), one entry per concern:
                        history_turns         earlier turns a prompt holds (int)
                        sentiment_classifier  the `auto` classifier's state (dict or None)
                        grounding             the index of the training pairs and its rerank weights
                                              (grounding.Index.to_state(): lists of text and numbers, or None);
                                              `python -m kogpt2_chatbot index` adds it to an older file (add_index)
                        refine                how training showed references (framing.REF): {"refine": share
                                              of turns, "alpha": share of those given their own answer},
                                              or None: the model never saw one (grounding refine refuses it)
                      A new kind of data (a retrieval index, ...) is one more entry here: add it to
                      KoGPT2Chat.chatbot_state() (module.py) and read it back from Chatbot.info, which
                      holds every entry of this dict; the hf/ export writes them into chatbot.json too.
                      store() refuses anything that is not plain data (str, int, float, bool, None,
                      list, tuple, dict with str keys, torch.Tensor), so a checkpoint never needs pickle.
    epoch, global_step, loops, optimizer_states, lr_schedulers, callbacks   Lightning's, for --resume

An hf/ folder is a save_pretrained() folder (config.json, model.safetensors, tokenizer files,
generation_config.json, chat template) plus INFO_FILE: base_model, max_len, split and the `chatbot`
entries above, as JSON.

Files appear whole or not at all: written to a temporary name beside the target, flushed to disk,
then renamed (os.replace), with the permissions the user's umask gives. A training run writes
LAST_FILE (the original's model_-last.ckpt, what --resume continues) and BEST_FILE (lowest val_loss,
what every door loads by default: hf/ holds the same weights).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
import zipfile
from pathlib import Path

import torch

from . import framing

MODEL_ROOT = "model_chp"        # the original's --model-dir; where the doors look for a model by default
LAST_NAME, BEST_NAME = "model_-last", "model_-best"
LAST_FILE, BEST_FILE = f"{LAST_NAME}.ckpt", f"{BEST_NAME}.ckpt"
INFO_FILE = "chatbot.json"      # what an hf/ export knows besides the weights
CHATBOT = "chatbot"             # the checkpoint's plain-data entries (see the module doc)
SPLIT = "chatbot_split"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the one-line message says what to do."""


class MissingCheckpoint(CheckpointError, FileNotFoundError):
    pass


# --- writing: whole files or none ---------------------------------------------------------------

def _fsync_dir(directory: Path):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every system opens folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path, suffix: str = "") -> Path:
    # The real suffix last: writers that pick a format by extension (pandas, matplotlib) still can.
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; once the block has written it, it is synced and renamed
    over `path`. On any error `path` is untouched and the temporary gone. The file is created with
    mode 0o666, so the user's umask decides its permissions, as for any file they make."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, path.suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def removed_if_failed(folder):
    """A run that fails before writing a checkpoint leaves no folders behind: `folder` and the parents
    it creates are removed on an error when they did not exist before and hold no .ckpt."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            if path.is_dir() and not any(path.rglob("*.ckpt")):
                shutil.rmtree(path, ignore_errors=True)
        raise


def write_checkpoint(checkpoint: dict, path):
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def write_json(data, path):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def checkpoint_io(preloaded: dict | None = None):
    """Lightning's CheckpointIO with this module's writer and reader (Trainer(plugins=[...])): a
    full disk never leaves a cut file under a checkpoint's name, and --resume reads through
    read_checkpoint(). `preloaded`: {path: checkpoint already read}, so it is not read twice."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            write_checkpoint(checkpoint, path)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            ready = (preloaded or {}).pop(str(path), None)
            return ready if ready is not None else read_checkpoint(path)

    return AtomicCheckpointIO()


def _plain(value, where: str):
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint entry {where} has a key {key!r} that is not text")
            _plain(item, f"{where}.{key}")
    else:
        raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}, not plain data "
                        "(str, int, float, bool, None, list, dict, tensor); convert it before storing")


def store(checkpoint: dict, backbone: dict, split: dict, chatbot: dict):
    """Fill a checkpoint dict Lightning is about to save (KoGPT2Chat.on_save_checkpoint)."""
    _plain(chatbot, CHATBOT)
    _plain(split, SPLIT)
    checkpoint["hyper_parameters"]["backbone"] = backbone
    checkpoint[SPLIT] = dict(split)
    checkpoint[CHATBOT] = dict(chatbot)


def add_index(source, state: dict) -> Path:
    """Put a grounding index (grounding.Index.to_state()) into a .ckpt's `chatbot` entries or an hf/
    folder's INFO_FILE, in place (atomically: the old file stays whole until the new one is)."""
    path = Path(str(source))
    if path.is_dir():
        write_json(read_info(path) | {"grounding": state}, path / INFO_FILE)
        return path / INFO_FILE
    checkpoint = read_checkpoint(path)
    _plain(state, f"{CHATBOT}.grounding")
    checkpoint.setdefault(CHATBOT, {})["grounding"] = state
    write_checkpoint(checkpoint, path)
    return path


def chatbot_entries(checkpoint: dict) -> dict:
    return dict(checkpoint.get(CHATBOT) or {})


def split_of(checkpoint: dict) -> dict:
    return dict(checkpoint.get(SPLIT) or {})


def checkpoint_info(checkpoint: dict) -> dict:
    """What Chatbot.info holds for a checkpoint: every `chatbot` entry, plus base, length, split."""
    hparams = checkpoint["hyper_parameters"]
    entries = chatbot_entries(checkpoint)
    return entries | {"base_model": hparams.get("base_model"),
                      "max_len": hparams.get("max_len", framing.DEFAULT_MAX_LEN),
                      "split": split_of(checkpoint), "history_turns": int(entries.get("history_turns", 0))}


# --- reading: one clear line for every way a file can be wrong ----------------------------------

def read_checkpoint(path) -> dict:
    """The checkpoint dict at `path`, read as plain data, or CheckpointError saying what is wrong:
    a folder, not a PyTorch zip (CSV, raw pickle), cut short, a member whose CRC fails (a flipped
    bit), pickled code, or a PyTorch file that is not this kit's checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder without config.json or a checkpoint ({BEST_FILE}, {LAST_FILE}); "
                              "pass a .ckpt file, a training run's folder, or a folder written by "
                              "`python -m kogpt2_chatbot export`")
    if not path.exists():
        raise MissingCheckpoint(f"no checkpoint at {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        kind = "a raw Python pickle, which can run code when loaded" if head[:1] == b"\x80" else "not a checkpoint"
        raise CheckpointError(f"{path} is {kind} (a .ckpt written by training is a PyTorch zip archive); "
                              "pass a .ckpt written by training, or an exported hf/ folder")
    _check_zip(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types; each means the same to a user
        if "weights_only" in str(err) or err.__class__.__name__ == "UnpicklingError":
            raise CheckpointError(f"{path} holds Python objects, not plain data; such a file can run code when "
                                  "loaded, so it is refused (checkpoints written by this kit hold plain data)") from err
        raise CheckpointError(f"{path} is damaged ({_first_line(err)}); copy or download it again") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "backbone" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this kit "
                              "(no model state with its backbone); pass a .ckpt written by training")
    return ckpt


def _check_zip(path: Path):
    """Every member's CRC-32 (torch.load checks none: a flipped bit would load as other weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged or cut short ({_first_line(err)}); "
                              "copy or download it again") from err
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: its member {bad} fails its checksum (a changed byte); "
                              "copy or download it again")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


def read_info(folder: Path) -> dict:
    """An hf/ folder's INFO_FILE ({} when it has none or it is unreadable: still a usable model)."""
    try:
        return json.loads((Path(folder) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- which model a door loads -----------------------------------------------------------------

def run_checkpoint(folder) -> Path | None:
    """A training run's checkpoint to reply with: the best by validation, else the last state."""
    for name in (BEST_FILE, LAST_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def newest_run(root=MODEL_ROOT, depth: int = 3) -> Path | None:
    """The checkpoint (run_checkpoint) of the most recently written run folder under `root`."""
    found = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        times = [os.path.getmtime(folder / n) for n in (BEST_FILE, LAST_FILE) if n in filenames]
        if times:
            found.append((max(times), str(folder)))
        deep = len(folder.relative_to(root).parts) >= depth
        dirnames[:] = [] if deep else sorted(d for d in dirnames if not d.startswith(".") and d not in ("hf", "logs"))
    return run_checkpoint(max(found)[1]) if found else None


def _train_hint() -> str:
    return ("Train one first (e.g. python train_torch.py --train --base-model scratch-tiny --data "
            "data/sample_chats.csv --max_epochs 40 --batch-size 16 --lr 3e-3 --model-dir model_chp/demo, "
            "offline; or python train_torch.py --gpus 1 --train --max_epochs 2 for KoGPT2), or point "
            "--model_params at a run folder, a .ckpt, an exported hf/ folder or a hub id")


def find_model(source=None) -> tuple[str, str | None]:
    """(what to load, why that one). None: the newest run under model_chp/; a run folder: its
    best checkpoint (else its last); anything else as given."""
    if source is None or str(source) == "":
        found = newest_run()
        if found is None:
            raise MissingCheckpoint(f"no checkpoint at {MODEL_ROOT}/ or in its subfolders (a training run "
                                    f"writes {BEST_FILE} and {LAST_FILE} into its --model-dir). {_train_hint()}")
        return str(found), f"the newest run under {MODEL_ROOT}/, {_which(found)}"
    path = Path(str(source))
    if path.is_dir() and not (path / "config.json").exists() and run_checkpoint(path) is not None:
        found = run_checkpoint(path)
        return str(found), _which(found)
    return str(source), None


def _which(ckpt: Path) -> str:
    if ckpt.name == BEST_FILE:
        return "best by validation"
    return "the last state (the run has no validation split, so no best)"


# --- loading: a .ckpt, an hf/ folder, a hub id -------------------------------------------------

def load_model(source=None, trust_remote_code: bool = False) -> tuple[object, object, dict]:
    """(model, tokenizer, info) from a .ckpt, a training run's folder, an hf/ folder or a hub id
    (None: find_model's default); CheckpointError if it cannot be used. info["loaded"] says, in
    one line, which file it is and why. Code from a model folder runs only with trust_remote_code."""
    from . import backbone as bb

    name, why = find_model(source)
    path = Path(name)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from .gguf_file import read_gguf  # a .gguf has its own reader and validator (gguf_file.py)

        loaded = read_gguf(path)
    elif path.is_dir() and (path / "config.json").exists():
        loaded = _load_pretrained(name, f"the folder {path}", trust_remote_code)
    elif path.exists():
        loaded = _load_ckpt(path, trust_remote_code)
    elif bb.looks_like_hub_id(name) and not name.endswith((".ckpt", ".pt")):
        loaded = _load_pretrained(name, f"the hub model {name}", trust_remote_code)
    else:
        raise MissingCheckpoint(f"no checkpoint at {path}. {_train_hint()}")
    model, tokenizer, info = loaded
    return model, tokenizer, info | {"source": name, "loaded": f"model: {name}" + (f" ({why})" if why else "")}


def _load_ckpt(path: Path, trust_remote_code: bool):
    from . import backbone as bb

    ckpt = read_checkpoint(path)
    try:
        model, tokenizer = bb.backbone_from_spec(ckpt["hyper_parameters"]["backbone"], trust_remote_code)
    except bb.RemoteCodeRefused as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the model it describes cannot be built ({_first_line(err)}); "
                              "the file is damaged or from another kit") from err
    prefix = "kogpt2."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        if bb.has_adapter(model):  # an adapter checkpoint: every adapter tensor must be there
            missing = sorted(set(bb.adapter_state(model)) - set(state))
            if missing:
                raise RuntimeError(f"{len(missing)} adapter tensors missing, e.g. {missing[0]}")
            model.load_state_dict(state, strict=False)
        else:
            model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model it describes "
                              f"({_first_line(err)}); the file is damaged") from err
    return model, tokenizer, checkpoint_info(ckpt)


def _load_pretrained(name: str, what: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import backbone as bb

    local = Path(name).exists() or bb.hub_unreachable()
    try:
        tokenizer = bb.hf_load(AutoTokenizer, name, trust_remote_code, local_files_only=local)
        model = bb.hf_load(AutoModelForCausalLM, name, trust_remote_code, local_files_only=local)
    except bb.RemoteCodeRefused as err:
        raise CheckpointError(str(err)) from err
    except (OSError, ValueError) as err:
        raise CheckpointError(f"could not load {what} ({err.__class__.__name__}: {_first_line(err)}); "
                              "pass a .ckpt file, an exported hf/ folder, or a hub id while online") from err
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{what} has no fast tokenizer (tokenizer.json); one is required")
    try:
        framing.control_ids(tokenizer)
    except ValueError as err:
        raise CheckpointError(f"{what} is not a chatbot of this kit's framing ({err}); "
                              "fine-tune it first with --base-model") from err
    bb.ensure_framing_tokens(model, tokenizer)
    return model, tokenizer, _pretrained_info(name, local)


def _pretrained_info(name: str, local: bool) -> dict:
    if Path(name).is_dir():
        return read_info(Path(name))
    try:
        from huggingface_hub import hf_hub_download

        return read_info(Path(hf_hub_download(name, INFO_FILE, local_files_only=local)).parent)
    except Exception:  # noqa: BLE001 - a hub export without chatbot.json is still a chatbot
        return {}


# --- writing an hf/ folder ----------------------------------------------------------------------

def write_hf(model, tokenizer, directory, info: dict, adapter_only: bool = False) -> Path:
    """The hf/ folder (backbone.save_hf) plus INFO_FILE, built under a temporary name and swapped in
    whole; an existing folder is replaced only when it is empty or an earlier export."""
    from . import backbone as bb

    directory = check_export_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(directory)
    os.mkdir(tmp, 0o777)  # the umask decides, as for any folder
    try:
        with bb.no_progress_bar():
            bb.save_hf(model, tokenizer, tmp, adapter_only=adapter_only)
        write_json(info, tmp / INFO_FILE)
        _follow_umask(tmp, stat.S_IMODE(os.stat(tmp / INFO_FILE).st_mode))
        _swap_in(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def check_export_target(directory) -> Path:
    """An export goes into a new folder, an empty one, or over an earlier export; never over other files."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"--out {directory} is a file; give a folder to write the export into")
    earlier = any((directory / name).exists() for name in ("config.json", "adapter_config.json", INFO_FILE))
    if directory.is_dir() and any(directory.iterdir()) and not earlier:
        raise CheckpointError(f"--out {directory} is a folder holding other files; an export would replace "
                              "them, so give a new or empty folder")
    return directory


def _follow_umask(folder: Path, file_mode: int):
    """transformers writes model.safetensors 0600: give every file the mode the umask gives (`file_mode`)."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, file_mode)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _swap_in(new: Path, directory: Path):
    """Rename `new` to `directory`; an old folder there is moved aside first, then removed."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(new, directory)
    _fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
