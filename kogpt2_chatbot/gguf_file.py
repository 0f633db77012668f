"""The .gguf file: the one writer and the one reader, for llama.cpp, Ollama and the `llamacpp` engine.

    write_gguf(model, tokenizer, "bot.gguf", "q8_0", info)   # export --format gguf
    model, tokenizer, info = read_gguf("bot.gguf")           # Chatbot.load("bot.gguf")

What the file holds, beside the weights (f32, f16 or q8_0; norms, biases and position
embeddings stay f32):
- a tokenizer llama.cpp runs to our ids: `tokenizer.ggml.model` "gpt2" (BPE with the merges of
  our tokenizer.json) and pre-tokenizer "sarvam-moe", llama.cpp's SPM-style BPE: raw UTF-8, a
  space becomes `▁`, merges over the whole line. Our Metaspace BPE never merges across a `▁`, so
  that gives the same pieces. The framing tokens are control tokens: llama.cpp tokenizing typed
  text with parse_special=False keeps "<sys>" plain text. What llama.cpp cannot do is our
  tokenizer's NFKC normalisation and its <unk> for a character outside the vocabulary (llama.cpp
  drops it). For Korean the NFKC step that matters is typed jamo (ㅋㅋ, ㅠㅠ -> conjoining jamo):
  the GGUF spells those tokens as typed, so llama.cpp meets them in raw text (`_typed_jamo`); what
  is left (… -> ..., unknown characters) bench/bench_gguf.py counts. The kit's own doors never meet
  it: they hand llama.cpp ids.
- the chat template (CHAT_TEMPLATE below: the framing with a space before each text, which llama.cpp
  turns into the `▁` our pre-tokenizer adds), no BOS (the framing has none);
- `kogpt2_chatbot.backbone`: the plain-data backbone spec (config, tokenizer.json, special tokens)
  and `kogpt2_chatbot.info`: what chatbot.json holds (history turns, sentiment classifier, split).
  Those two keys make a file ours; `read_gguf` rebuilds the Hugging Face model from them and the
  tensors, so every door (and `--engine lean`) can run a .gguf as well as llama.cpp can.

Architectures: those whose tensors map one to one onto a llama.cpp architecture (ARCHS).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import framing

OUTTYPES = ("f32", "f16", "q8_0")
DEFAULT_OUTTYPE = "f16"
PRE_TOKENIZER = "sarvam-moe"   # llama.cpp's SPM-style BPE (see the module doc)
BACKBONE_KEY, INFO_KEY = "kogpt2_chatbot.backbone", "kogpt2_chatbot.info"

# Hugging Face model_type -> llama.cpp architecture.
ARCHS = {"gpt2": "GPT2", "gpt_neox": "GPTNEOX", "llama": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3",
         "gemma": "GEMMA"}

# The framing's template with a space before each text, so llama.cpp's tokenizer adds the `▁` that
# ours adds in front of every piece of text; no {% generation %} (llama.cpp's Jinja lacks it).
def _gguf_template(template: str) -> str:
    for old, new in (("<usr>{{", "<usr> {{"), ("<unused1>{{", "<unused1> {{"),
                     ("{% generation %}{{", "{{ ' ' }}{{"), ("</s>{% endgeneration %}", "</s>")):
        if old not in template:  # the framing's template changed: this must follow it
            raise AssertionError(f"framing.CHAT_TEMPLATE has no {old!r}")
        template = template.replace(old, new)
    return template


CHAT_TEMPLATE = _gguf_template(framing.CHAT_TEMPLATE)


class GGUFError(ValueError):
    """A model that cannot be written as GGUF, or a file that is not a GGUF of this kit."""


def gguf_package():
    """The `gguf` package (pure Python, llama.cpp's own writer and reader), or the install line."""
    try:
        import gguf
    except ImportError:
        raise GGUFError('GGUF files need the gguf package: pip install "kogpt2-chatbot[gguf]" '
                        "(or: pip install gguf)") from None
    return gguf


def check_exportable(model):
    """GGUFError unless llama.cpp runs this architecture exactly as transformers does."""
    c = model.config
    if c.model_type not in ARCHS:
        raise GGUFError(f"--format gguf: llama.cpp export supports {', '.join(ARCHS)} models; this one is "
                        f"{c.model_type!r} (export --format hf, and run it with transformers or vLLM)")
    if c.model_type == "gpt2":
        odd = [k for k in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
               if getattr(c, k, False)]
        if odd or c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise GGUFError(f"--format gguf: llama.cpp's GPT-2 has tanh-GELU and plain attention; this model has "
                            f"{', '.join(odd) or c.activation_function}")


# --- writing ---------------------------------------------------------------------------------

def write_gguf(model, tokenizer, path, outtype: str = DEFAULT_OUTTYPE, info: dict | None = None) -> Path:
    """Write `model` (a plain Hugging Face causal LM: merge an adapter first) as a .gguf, atomically."""
    from . import backbone as bb

    gguf = gguf_package()
    if outtype not in OUTTYPES:
        raise GGUFError(f"--outtype must be one of {', '.join(OUTTYPES)}; got {outtype!r}")
    check_exportable(model)
    path = check_target(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arch = getattr(gguf.MODEL_ARCH, ARCHS[model.config.model_type])
    try:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        _add_hparams(writer, model.config, outtype)
        _add_tokenizer(writer, tokenizer, model.get_input_embeddings().num_embeddings)
        writer.add_string(BACKBONE_KEY, json.dumps(bb.backbone_spec(model, tokenizer), ensure_ascii=False))
        writer.add_string(INFO_KEY, json.dumps(info or {}, ensure_ascii=False))
        for name, data, qtype in _tensors(model, arch, outtype):
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise GGUFError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_target(path) -> Path:
    """A .gguf goes to a new file or over an earlier export of this kit; never over anything else."""
    path = Path(path)
    if path.is_dir():
        raise GGUFError(f"--out {path} is a folder; give the .gguf file to write, e.g. {path / 'bot.gguf'}")
    if not path.parent.is_dir():
        raise GGUFError(f"cannot write {path}: {path.parent} is not a folder")
    if path.exists():
        try:
            open_gguf(path)
        except GGUFError:
            raise GGUFError(f"--out {path} exists and is not a GGUF this kit wrote; an export would replace it, "
                            "so give a new file name") from None
    return path


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _add_hparams(writer, c, outtype: str):
    import gguf

    writer.add_name("kogpt2_chatbot")
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if c.model_type == "gpt2":
        writer.add_context_length(c.n_positions)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
        return
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(c))
    if c.model_type == "gpt_neox":
        params = getattr(c, "rope_parameters", None) or {}
        partial = params.get("partial_rotary_factor") or getattr(c, "rotary_pct", 1.0)
        writer.add_rope_dimension_count(int(partial * head_dim))
        writer.add_parallel_residual(getattr(c, "use_parallel_residual", True))
        writer.add_layer_norm_eps(c.layer_norm_eps)
        return
    writer.add_head_count_kv(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)


def _add_tokenizer(writer, tokenizer, rows: int):
    """Tokens in id order (padded to the embedding's rows), their types, merges, special ids."""
    import gguf

    backend = tokenizer.backend_tokenizer
    data = json.loads(backend.to_str())
    if data["model"]["type"] != "BPE" or "Metaspace" not in json.dumps(data.get("pre_tokenizer")):
        raise GGUFError("--format gguf: the tokenizer must be a Metaspace (▁) BPE like KoGPT2's; this one is "
                        f"{data['model']['type']} with {(data.get('pre_tokenizer') or {}).get('type')}")
    vocab = backend.get_vocab(with_added_tokens=True)
    tokens = [f"[PAD{i}]" for i in range(max(rows, len(vocab)))]
    types = [gguf.TokenType.UNUSED] * len(tokens)
    special = set(tokenizer.all_special_ids)
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    if "NFKC" in json.dumps(data.get("normalizer")):
        typed = _typed_jamo()
        tokens = ["".join(typed.get(ch, ch) for ch in t) for t in tokens]
        merges = ["".join(typed.get(ch, ch) for ch in m) for m in merges]
    ids = framing.control_ids(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[framing.EOS])
    writer.add_eos_token_id(ids[framing.EOS])
    writer.add_pad_token_id(ids[framing.PAD])
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _typed_jamo() -> dict[str, str]:
    """Conjoining jamo -> the compatibility jamo a keyboard types (ᄏ -> ㅋ).

    NFKC turns a typed ㅋ into ᄏ before our BPE sees it, so the vocabulary holds ᄏ; llama.cpp has
    no normaliser and would meet ㅋ, which it lacks. Written as ㅋ in the GGUF, the same token
    comes out of the text people type (bench/RESULTS.md, "GGUF")."""
    import unicodedata

    out = {}
    for code in range(0x3131, 0x318F):  # the Hangul Compatibility Jamo block
        image = unicodedata.normalize("NFKC", chr(code))
        if len(image) == 1 and image != chr(code):
            out[image] = chr(code)
    return out


def _tensors(model, arch, outtype: str):
    """(GGUF name, data, type) of every weight, in llama.cpp's layout."""
    import gguf
    import numpy as np

    c = model.config
    names = gguf.TensorNameMap(arch, _blocks(c))
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is model.get_input_embeddings().weight and c.model_type != "gpt_neox"
    for hf_name, tensor in model.state_dict(keep_vars=True).items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # GPT-2's causal-mask buffers, rotary caches: llama.cpp builds its own
        if tied and tensor is out.weight and hf_name != _input_name(model):
            continue  # a tied output layer: llama.cpp reuses token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"--format gguf: no llama.cpp tensor for {hf_name} ({c.model_type})")
        data = to_gguf_layout(c, hf_name, tensor.detach().float().cpu()).numpy()
        if data.ndim == 1 or name.startswith("position_embd") or outtype == "f32":
            yield name, data.astype(np.float32), gguf.GGMLQuantizationType.F32
        elif outtype == "q8_0" and data.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            yield name, gguf.quants.quantize(data.astype(np.float32), qtype), qtype
        else:
            yield name, data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _input_name(model) -> str:
    weight = model.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters(remove_duplicate=False) if p is weight)


def _blocks(c) -> int:
    return getattr(c, "n_layer", None) or c.num_hidden_layers


# --- the layout changes between Hugging Face and llama.cpp, each with its inverse ---------------

def _rope_permute(w, heads: int, inverse: bool):
    """llama.cpp's LLAMA rotates interleaved pairs; Hugging Face's Llama rotates halves."""
    shape = w.shape
    half = shape[0] // heads // 2
    parts = (heads, half, 2) if inverse else (heads, 2, half)
    return w.reshape(*parts, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _neox_qkv(w, heads: int, inverse: bool):
    """GPT-NeoX keeps q, k, v per head; llama.cpp wants all q, then all k, then all v."""
    shape = w.shape
    if inverse:
        return w.reshape(3, heads, -1, *shape[1:]).transpose(0, 1).reshape(shape)
    return w.reshape(heads, 3, -1, *shape[1:]).transpose(0, 1).reshape(shape)


def to_gguf_layout(c, hf_name: str, w, inverse: bool = False):
    """Hugging Face tensor -> llama.cpp's (inverse: back)."""
    if c.model_type == "gpt2" and w.ndim == 2 and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
        return w.t().contiguous()  # Conv1D stores [in, out]
    if c.model_type == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _rope_permute(w, c.num_attention_heads, inverse)
    if c.model_type == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _rope_permute(w, getattr(c, "num_key_value_heads", None) or c.num_attention_heads, inverse)
    if c.model_type == "gpt_neox" and "query_key_value" in hf_name:
        return _neox_qkv(w, c.num_attention_heads, inverse)
    if c.model_type == "gemma" and hf_name.endswith("norm.weight"):
        return w - 1 if inverse else w + 1  # Gemma's RMSNorm scales by 1 + weight, llama.cpp's by weight
    return w


# --- reading ---------------------------------------------------------------------------------

def read_gguf(path):
    """(model, tokenizer, info) of a .gguf this kit wrote; GGUFError naming the file otherwise."""
    import torch

    from . import backbone as bb

    reader, spec, info = open_gguf(path)
    model, tokenizer = bb.backbone_from_spec(spec)
    arch_names = _reverse_names(model)
    state = {}
    for t in reader.tensors:
        hf_name = arch_names.get(t.name)
        if hf_name is None:
            raise GGUFError(f"{path}: tensor {t.name} has no place in a {model.config.model_type} model; the file "
                            "was not written by this kit")
        state[hf_name] = to_gguf_layout(model.config, hf_name, _tensor_data(t), inverse=True)
    missing, _ = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    tied = {"lm_head.weight", "embed_out.weight"}
    if [k for k in missing if k not in tied and not k.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise GGUFError(f"{path}: {len(missing)} weights are missing, e.g. {missing[0]}; the file is damaged")
    if model.get_output_embeddings() is not None and any(k in tied for k in missing):
        model.tie_weights()
    return model, tokenizer, info | {"source": str(path), "gguf_type": _file_type(reader)}


def open_gguf(path):
    """(GGUFReader, backbone spec, info) after checking the file is a whole GGUF of this kit."""
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf_package().GGUFReader(str(path))
        tensors = reader.tensors
        end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
    except (ValueError, IndexError, OSError, KeyError) as err:
        raise GGUFError(f"{path} is damaged or cut short ({str(err).splitlines()[0] if str(err) else 'unreadable'}); "
                        "export it again") from err
    if end > path.stat().st_size:
        raise GGUFError(f"{path} is cut short (its tensors need {end} bytes, the file has {path.stat().st_size}); "
                        "export it again")
    fields = reader.fields
    if BACKBONE_KEY not in fields or INFO_KEY not in fields:
        raise GGUFError(f"{path} is a GGUF file but not one of this kit (no {BACKBONE_KEY}); run it with llama.cpp "
                        "itself, or export a checkpoint with `python -m kogpt2_chatbot export --format gguf`")
    try:
        spec = json.loads(fields[BACKBONE_KEY].contents())
        info = json.loads(fields[INFO_KEY].contents())
    except (ValueError, UnicodeDecodeError) as err:
        raise GGUFError(f"{path}: its {BACKBONE_KEY} is not valid JSON; the file is damaged") from err
    return reader, spec, info


def _reverse_names(model) -> dict[str, str]:
    import gguf

    c = model.config
    names = gguf.TensorNameMap(getattr(gguf.MODEL_ARCH, ARCHS[c.model_type]), _blocks(c))
    out = {}
    for hf_name in model.state_dict():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is not None:
            out.setdefault(name, hf_name)
    return out


def _tensor_data(t):
    import gguf
    import numpy as np
    import torch

    shape = [int(n) for n in reversed(t.shape)]
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        data = np.asarray(t.data, dtype=np.float32)
    else:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))


def _file_type(reader) -> str:
    field = reader.fields.get("general.file_type")
    kind = int(field.contents()) if field is not None else 0
    return {0: "f32", 1: "f16", 7: "q8_0"}.get(kind, str(kind))


# --- Ollama ----------------------------------------------------------------------------------

def modelfile(gguf_name: str, decoding) -> str:
    """An Ollama Modelfile for `gguf_name` (beside it): the framing as a Go template whose
    sentiment is the system prompt (0|1|2 or neutral|negative|positive; default 0), stop at
    </s>, and our decoding defaults where Ollama has them."""
    template = (
        '{{- $s := "0" }}{{- if eq .System "1" "negative" }}{{ $s = "1" }}'
        '{{- else if eq .System "2" "positive" }}{{ $s = "2" }}{{ end }}'
        '{{- range .Messages }}{{- if eq .Role "user" }}<usr> {{ .Content }}<unused1> {{ $s }}<sys>'
        '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{- end }}'
    )
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""', 'SYSTEM "0"', f'PARAMETER stop "{framing.EOS}"',
             f"PARAMETER num_predict {decoding.max_new_tokens}",
             f"PARAMETER repeat_penalty {decoding.repetition_penalty}"]
    if decoding.do_sample:
        lines += [f"PARAMETER temperature {decoding.temperature}", f"PARAMETER top_k {decoding.top_k}",
                  f"PARAMETER top_p {decoding.top_p}"]
    else:
        lines += ["PARAMETER temperature 0", "PARAMETER top_k 1"]
    return "\n".join(lines) + "\n"
