"""decoding.py: our logits processors against Hugging Face's own, and the GenerationConfig an
export carries: plain transformers, with no code of this kit, replies as the bot does."""
import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot.decoding import Decoding, NeverEmpty, NoRepeatNGram

from conftest import SAMPLE


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_blocking_bans_exactly_what_hf_bans(n):
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    torch.manual_seed(n)
    hf = NoRepeatNGramLogitsProcessor(n)
    for rows, length, vocab in [(1, 1, 9), (3, n - 1 or 1, 9), (7, 12, 5), (16, 40, 11), (5, 70, 300)]:
        ids = torch.randint(0, vocab, (rows, length))  # small vocabularies: many repeats
        scores = torch.randn(rows, vocab)
        assert torch.equal(NoRepeatNGram(n)(ids, scores.clone()), hf(ids, scores.clone()))


def test_the_never_empty_rule_is_hfs_bad_words_rule(tiny_backbone):
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor

    model, tokenizer = tiny_backbone
    eos = tokenizer.convert_tokens_to_ids("</s>")
    rule = NeverEmpty.for_tokenizer(tokenizer, model.config.vocab_size, eos)
    space, sys_id = tokenizer.convert_tokens_to_ids("▁"), tokenizer.convert_tokens_to_ids("<sys>")
    assert rule.invisible[space] and rule.invisible[sys_id] and not rule.invisible[tokenizer("배고파").input_ids[-1]]
    hf = NoBadWordsLogitsProcessor(rule.bad_words_ids(model.config.vocab_size), eos)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (64, 6))
    ids[:8, -1] = sys_id  # a prompt's end
    scores = torch.randn(64, model.config.vocab_size)
    ours = rule(ids, scores.clone())
    assert torch.equal(ours, hf(ids, scores.clone()))
    assert bool(torch.isinf(ours[:8, eos]).all())


def test_generation_config_carries_the_decoding_options(tiny_backbone):
    model, tokenizer = tiny_backbone
    config = Decoding().generation_config(tokenizer, model.config)
    assert config.no_repeat_ngram_size == 3 and config.max_new_tokens == Decoding().max_new_tokens
    assert not config.do_sample and config.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert [tokenizer.convert_tokens_to_ids("<sys>"), config.eos_token_id] in config.bad_words_ids
    sampled = Decoding(do_sample=True, temperature=0.7, top_p=0.9).generation_config(tokenizer, model.config)
    assert sampled.do_sample and sampled.temperature == 0.7 and sampled.top_p == 0.9


def plain_transformers_replies(folder, questions):
    """What a user of the hf/ folder gets: AutoModel + AutoTokenizer, the chat template, generate()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    replies = []
    for question in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        ids = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids))
        replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return replies


def questions(n=60):
    return list(pd.read_csv(SAMPLE, dtype=str).Q.drop_duplicates()[:n])


def tidy(text):
    return " ".join(text.split())


def test_an_hf_export_replies_as_the_bot_does(trained_dir, tmp_path):
    bot = Chatbot.load(trained_dir / "model_-last.ckpt", sentiment="0")
    folder = bot.save_pretrained(tmp_path / "hf")
    qs = questions()
    ours = [bot.chat(q) for q in qs]
    assert len(qs) >= 50 and all(ours)
    assert [tidy(r) for r in plain_transformers_replies(folder, qs)] == ours


def test_a_merged_lora_export_replies_as_the_bot_does(tmp_path):
    from test_lora import make_base

    from kogpt2_chatbot.train import TrainConfig, train

    base = make_base(tmp_path / "base", "llama")
    train(TrainConfig(data=str(SAMPLE), base_model=str(base), lora=True, lora_r=4, lr=3e-3, max_epochs=2,
                      batch_size=32, samples=0, model_dir=str(tmp_path / "run"), progress=False))
    bot = Chatbot.load(tmp_path / "run" / "model_-last.ckpt", sentiment="0")
    folder = bot.save_pretrained(tmp_path / "hf")
    qs = questions()
    assert bot.engine_name == "generate"
    assert [tidy(r) for r in plain_transformers_replies(folder, qs)] == [bot.chat(q) for q in qs]
