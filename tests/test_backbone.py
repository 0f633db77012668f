import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kogpt2_chatbot import backbone, framing

TEXTS = ["안녕하세요 반갑습니다", "오늘 날씨가 좋네요", "배가 고파요 밥 먹어요", "0 1 2"] * 20


def folder_model(path, special_tokens, **tokenizer_kwargs):
    """A tiny GPT-2 + BPE saved like a hub repo, with the given special tokens in its vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=200, special_tokens=special_tokens,
                                                       show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, **tokenizer_kwargs)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(hf_tok)))
    hf_tok.save_pretrained(path)
    model.save_pretrained(path)
    return path


def test_tokenizer_that_already_has_the_tokens_keeps_its_ids(tmp_path):
    path = folder_model(tmp_path / "kogpt2-like", list(framing.CONTROL_TOKENS), **backbone.KOGPT2_SPECIAL)
    before = AutoTokenizer.from_pretrained(path).get_vocab()
    model, tok = backbone.load_backbone(str(path))
    assert len(tok) == len(before) == model.get_input_embeddings().num_embeddings
    for token in framing.CONTROL_TOKENS:
        assert tok.convert_tokens_to_ids(token) == before[token]
    ids = framing.control_ids(tok)
    assert model.config.eos_token_id == ids["</s>"] and model.config.pad_token_id == ids["<pad>"]
    assert set(["<usr>", "<sys>", "<unused1>"]) <= set(tok.all_special_tokens)


def test_tokenizer_without_the_tokens_gets_them_and_bigger_embeddings(tmp_path):
    path = folder_model(tmp_path / "plain", ["<|endoftext|>", "<unk>"], eos_token="<|endoftext|>", unk_token="<unk>")
    old_size = AutoModelForCausalLM.from_pretrained(path).get_input_embeddings().num_embeddings
    model, tok = backbone.load_backbone(str(path))
    assert model.get_input_embeddings().num_embeddings == len(tok) > old_size
    ids, labels = framing.example_ids(tok, "안녕 <sys>", 0, "반가워요", 32)
    out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    assert torch.isfinite(out.loss)
    assert tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert framing.control_ids(tok)["<sys>"] not in framing.text_ids(tok, "<sys>")


def test_unreachable_hub_names_the_ways_out():
    with pytest.raises(backbone.BackboneError) as err:
        backbone.load_backbone("skt/kogpt2-base-v2")  # HF_HUB_OFFLINE=1 in tests
    message = str(err.value)
    assert "--base-model PATH" in message and "scratch" in message


def test_a_folder_that_holds_no_model_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text('{"model_type": "no-such-architecture"}', encoding="utf-8")
    for folder, words in (("empty", "this folder has no config.json"), ("unknown", "could not load")):
        with pytest.raises(backbone.BackboneError) as err:
            backbone.load_backbone(str(tmp_path / folder))
        assert words in str(err.value) and "\n" not in str(err.value)


def test_scratch_presets_sizes(tiny_backbone):
    model, tok = tiny_backbone
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd) == (2, 64)
    assert backbone.SCRATCH_PRESETS["scratch"]["n_layer"] == 3 and backbone.SCRATCH_PRESETS["scratch"]["n_embd"] == 256
    assert type(tok.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
    with pytest.raises(ValueError, match="needs the training texts"):
        backbone.load_backbone("scratch")


def test_spec_is_plain_data_and_rebuilds_the_same_backbone(tiny_backbone, tmp_path):
    model, tok = tiny_backbone
    spec = backbone.backbone_spec(model, tok)
    torch.save({"spec": spec}, tmp_path / "s.pt")
    spec2 = torch.load(tmp_path / "s.pt", weights_only=True)["spec"]
    model2, tok2 = backbone.backbone_from_spec(spec2)
    assert framing.prompt_ids(tok2, "배고파요 <sys>", 2) == framing.prompt_ids(tok, "배고파요 <sys>", 2)
    assert model2.config.to_dict()["n_embd"] == 64 and len(tok2) == len(tok)


@pytest.mark.parametrize("sentiment", [0, "1", "positive"])
def test_chat_template_reproduces_the_training_prompt(tiny_backbone, tmp_path, sentiment):
    model, tok = tiny_backbone
    backbone.save_hf(model, tok, tmp_path / "hf")
    plain = AutoTokenizer.from_pretrained(tmp_path / "hf")
    question = "  내일 시험이야, 떨려요 "
    got = plain.apply_chat_template([{"role": "user", "content": question}], sentiment=sentiment,
                                    add_generation_prompt=True, tokenize=True)
    got = got["input_ids"] if hasattr(got, "keys") else got
    assert list(got) == framing.prompt_ids(tok, question, sentiment)
    # With the answer, the template renders exactly the training example.
    full = plain.apply_chat_template([{"role": "user", "content": question},
                                      {"role": "assistant", "content": "잘할 거예요."}],
                                     sentiment=sentiment, tokenize=True)
    full = full["input_ids"] if hasattr(full, "keys") else full
    assert list(full) == framing.example_ids(tok, question, sentiment, "잘할 거예요.", 128)[0]
