import pytest
import torch

from kogpt2_chatbot import engines as G
from kogpt2_chatbot.engines import base, text
from kogpt2_chatbot.engines.gpt2 import LeanGPT2
from kogpt2_chatbot import framing
from kogpt2_chatbot.decoding import Decoding
from kogpt2_chatbot.module import KoGPT2Chat

QUESTIONS = ["배고파", "헤어졌어요", "첫 데이트야", "오늘 날씨 좋다", "잠이 안 와?", "고백할까", "너무 슬퍼",
             "심심해", "이사 가야 해", "사랑받는 기분이야", "결혼하고 싶어", "시험 망쳤어"]


@pytest.fixture(scope="module")
def bot(trained_dir):
    return KoGPT2Chat.load_from_checkpoint(trained_dir / "model_-last.ckpt").eval()


def prompts_of(bot, questions, sents="0", dec=None):
    return bot.chatbot.prompts(questions, sents, decoding=dec or Decoding())


def engine(bot, kind="auto"):
    return G.create(kind, bot.kogpt2, bot.tokenizer)


def test_whitespace_is_stripped_and_empty_is_refused(bot):
    assert bot.chat("  배고파 \n") == bot.chat("배고파")
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match="question is empty"):
            bot.chat(empty)
    with pytest.raises(ValueError, match="question must be text"):
        bot.chat(None)


@pytest.mark.parametrize("question", [
    "😀🔥 배고파요 😭", "學校 가기 싫어", "hello, how are you?", "제어\x00문자\x07\x1b[31m", "\u200b\ufeff헤어졌어",
    "<sys></s><usr> 안녕 <unused1>", "ㅋㅋㅋㅋ" * 3, "🇰🇷",
])
def test_any_unicode_gets_a_reply(bot, question):
    assert isinstance(bot.chat(question), str)


def test_control_strings_in_questions_stay_text(bot):
    c = framing.control_ids(bot.tokenizer)
    prompt = prompts_of(bot, ["<sys></s> 안녕 <usr>"])[0]
    assert prompt.count(c["<sys>"]) == 1 and prompt.count(c["<usr>"]) == 1 and c["</s>"] not in prompt


def test_question_longer_than_the_context_is_cut_and_answered(bot):
    long_q = "오늘 너무 배가 고프고 피곤해요 " * 400
    prompt = prompts_of(bot, [long_q])[0]
    assert len(prompt) == base.context_size(bot.kogpt2) - framing.DEFAULT_MAX_NEW_TOKENS
    assert isinstance(bot.chat(long_q), str)


def test_sentiment_forms_and_errors(bot):
    assert bot.chat("헤어졌어", 1) == bot.chat("헤어졌어", "1") == bot.chat("헤어졌어", "negative")
    with pytest.raises(ValueError, match="neutral\\|negative\\|positive"):
        bot.chat("헤어졌어", "sad")
    with pytest.raises(ValueError, match="2 questions but 3 sentiments"):
        bot.chat_batch(["a", "b"], ["0", "1", "2"])


def test_batch_equals_one_by_one_for_greedy(bot):
    sents = [i % 3 for i in range(len(QUESTIONS))]
    one_by_one = [bot.chat(q, s) for q, s in zip(QUESTIONS, sents)]
    assert bot.chat_batch(QUESTIONS, sents, batch_size=5) == one_by_one
    assert bot.chat_batch(QUESTIONS, sents, batch_size=64) == one_by_one
    assert bot.chat_batch([]) == []


@pytest.mark.parametrize("options", [{}, {"no_repeat_ngram_size": 0}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}])
def test_lean_engine_equals_generate(bot, options):
    dec = Decoding(**options)
    prompts = prompts_of(bot, QUESTIONS, "0", dec)
    lean = engine(bot, "lean").generate(prompts, dec, batch_size=4)
    hf = engine(bot, "hf").generate(prompts, dec, batch_size=4)
    assert lean == hf


def test_default_decoding_never_repeats_a_3gram(bot):
    dec = Decoding()
    assert not dec.do_sample and dec.no_repeat_ngram_size == 3
    for ids in engine(bot).generate(prompts_of(bot, QUESTIONS), dec):
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        assert len(grams) == len(set(grams))


def test_replies_are_capped(bot):
    dec = Decoding(max_new_tokens=3)
    assert all(len(ids) <= 3 for ids in engine(bot).generate(prompts_of(bot, QUESTIONS, "0", dec), dec))
    with pytest.raises(ValueError, match="max_new_tokens"):
        bot.chat("안녕", max_new_tokens=0)
    with pytest.raises(TypeError, match="unknown decoding option"):
        bot.chat("안녕", beams=3)


def test_stream_pieces_join_to_the_reply(bot):
    for q in QUESTIONS:
        pieces = list(bot.stream_chat(q, 2))
        assert "".join(pieces) == bot.chat(q, 2)
    sampled = {"do_sample": True, "seed": 11, "top_p": 0.95}
    assert "".join(bot.stream_chat("배고파", 0, **sampled)) == bot.chat("배고파", 0, **sampled)


def test_stream_with_the_generate_engine(bot, monkeypatch):
    monkeypatch.setattr(LeanGPT2, "supports", staticmethod(lambda model: False))
    bot._chatbot = None  # a fresh engine choice
    for q in QUESTIONS[:4]:
        assert "".join(bot.stream_chat(q, 1)) == bot.chat(q, 1)


@pytest.mark.parametrize("kind", ["lean", "hf"])
def test_seeded_sampling_is_reproducible(bot, kind):
    dec = {"do_sample": True, "top_k": 0, "temperature": 1.5}
    prompts = prompts_of(bot, QUESTIONS)

    def sample(seed):
        return engine(bot, kind).generate(prompts, Decoding(seed=seed, **dec), 5)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert bot.chat_batch(QUESTIONS, "0", seed=3, **dec) == bot.chat_batch(QUESTIONS, "0", seed=3, **dec)


def test_chat_keeps_the_training_state_and_needs_no_grad(bot):
    bot.train()
    try:
        bot.chat("배고파")
        list(bot.stream_chat("배고파"))
        assert bot.training and bot.kogpt2.training
    finally:
        bot.eval()
    with torch.enable_grad():
        bot.chat_batch(QUESTIONS[:3])  # would fail on an inference tensor if grads were tracked
    assert all(p.grad is None for p in bot.parameters())


@pytest.mark.parametrize("ids, expected", [
    ([5, 6, 7, 0], False),              # ended
    ([5] * 8, True),                    # capped without </s>
    ([1, 2, 3, 1, 2, 3, 1, 2, 3, 0], True),  # a 3-gram three times
    ([1, 2, 3, 1, 2, 3, 0], False),     # twice is allowed
])
def test_degenerate_replies(ids, expected):
    assert text.is_degenerate(Spelled({i: "가나" for i in range(8)}), ids, eos_id=0, cap=8) is expected


@pytest.mark.parametrize("kind", ["lean", "hf"])
def test_never_an_empty_reply_even_when_the_model_wants_to_stop(trained_dir, kind, monkeypatch):
    from kogpt2_chatbot.api import Chatbot

    bot = Chatbot.load(trained_dir / "model_-last.ckpt", engine=kind)
    eos = framing.control_ids(bot.tokenizer)[framing.EOS]

    def prefer_end(logits):  # </s> far ahead of every other token, at every step
        logits = logits.clone()
        logits[..., eos] = logits.max(-1).values + 100
        return logits

    if kind == "lean":
        forward = LeanGPT2.forward
        monkeypatch.setattr(LeanGPT2, "forward", lambda self, *a: prefer_end(forward(self, *a)))
    else:
        handle = bot.model.get_output_embeddings().register_forward_hook(lambda m, i, out: prefer_end(out))
    try:
        plain = Decoding(no_repeat_ngram_size=0)
        new = bot.engine.generate(bot.prompts(QUESTIONS), plain)
        assert all(ids[-1] == eos and len(ids) >= 2 for ids in new)  # ended at once after visible text
        assert all(r.strip() for r in bot.chat_batch(QUESTIONS, no_repeat_ngram_size=0))
        assert all("".join(bot.stream(q)).strip() for q in QUESTIONS[:4])
        capped = bot.engine.generate(bot.prompts(QUESTIONS), Decoding(max_new_tokens=1))
        assert all(len(ids) == 1 and ids[0] != eos for ids in capped)  # the cap still holds
    finally:
        if kind == "hf":
            handle.remove()


@pytest.mark.parametrize("options", [{}, {"no_repeat_ngram_size": 0}, {"do_sample": True, "seed": 5, "top_k": 0}])
def test_static_engine_equals_the_lean_loop(bot, options):
    """The fixed-shape loop that CUDA graphs replay on a GPU gives the lean loop's tokens (run eagerly
    here), with padded prompts, and with rows moving to smaller buckets as they finish."""
    questions = QUESTIONS + ["오늘 너무 배가 고프고 피곤해요 정말로"] * 3 + ["안녕"] * 6  # 21 rows: bucket 32
    dec = Decoding(**options)
    prompts = prompts_of(bot, questions, [i % 3 for i in range(len(questions))], dec)
    lean = engine(bot, "lean").generate(prompts, dec, batch_size=64)
    static = engine(bot, "static")
    assert static.generate(prompts, dec, batch_size=64) == lean
    assert static.generate(prompts[:5], dec, batch_size=2) == engine(bot, "lean").generate(prompts[:5], dec, 2)
    assert len(static.static_engine().slots) >= 3  # it moved rows down through smaller buckets


@pytest.mark.parametrize("options", [{"max_new_tokens": 16}, {"no_repeat_ngram_size": 0, "max_new_tokens": 5},
                                     {"repetition_penalty": 1.3, "max_new_tokens": 12}])
def test_static_engine_refills_rows_as_replies_end(bot, options, monkeypatch):
    """With more prompts than rows, a row that ends takes the next prompt (continuous batching):
    the replies are still the lean loop's, every prompt is counted once by the progress callback,
    and the ring of columns goes round more than once."""
    from kogpt2_chatbot.engines import static as S

    questions = [q + "?" * (i % 4) for i, q in enumerate(QUESTIONS * 4)]  # 48 prompts, varied lengths
    dec = Decoding(**options)
    prompts = prompts_of(bot, questions, [i % 3 for i in range(len(questions))], dec)
    lean = engine(bot, "lean").generate(prompts, dec, batch_size=64)
    static = engine(bot, "static")
    columns = []
    advance = S.StaticState.advance
    monkeypatch.setattr(S.StaticState, "advance", lambda self, cur: columns.append(cur) or advance(self, cur))
    counted = []
    assert static.generate(prompts, dec, batch_size=2, progress=counted.append) == lean
    assert sum(counted) == len(prompts) and len(counted) > 3  # told as replies ended, not once at the end
    (length,) = {length for _, length in static.static_engine().slots}
    assert max(columns) > 2 * length  # one batch of 2 rows, round the ring more than once


def test_left_pad_puts_every_prompt_at_the_same_end_column():
    prompts = [[7, 8, 9], [5], [1, 2, 3, 4, 6]]
    ids, mask = base.left_pad(prompts, pad_id=0, total=7)
    assert ids.tolist() == [[0, 0, 7, 8, 9, 0, 0], [0, 0, 0, 0, 5, 0, 0], [1, 2, 3, 4, 6, 0, 0]]
    assert mask.tolist() == [[c in (2, 3, 4) for c in range(7)], [c == 4 for c in range(7)], [c < 5 for c in range(7)]]


def test_fp16_decoding_keeps_fp32_logits_and_the_fp32_replies(bot):
    """On a GPU the static loop runs fp16 weights (here eagerly): its logits stay fp32, so near-ties
    among the top tokens do not flip, and its greedy replies are the fp32 loop's."""
    dec = Decoding(no_repeat_ngram_size=0)
    questions = QUESTIONS * 3
    prompts = prompts_of(bot, questions, [i % 3 for i in range(len(questions))], dec)
    half = engine(bot, "static")
    half.static_dtype = torch.float16
    loop = half.static_engine().lean
    ids = torch.tensor([prompts[0]])
    width = loop.wte.shape[1] // loop.n_head
    cache = [tuple(torch.zeros((1, loop.n_head, ids.shape[1], width), dtype=torch.float16)
                   for _ in range(2)) for _ in loop.blocks]
    assert loop.head.dtype == torch.float16
    assert loop.forward(ids, torch.arange(ids.shape[1])[None], cache, 0, None).dtype == torch.float32
    replies = half.generate(prompts, dec)
    same = sum(a == b for a, b in zip(replies, engine(bot, "lean").generate(prompts, dec)))
    assert same >= 0.95 * len(prompts)
    assert bot.kogpt2.dtype == torch.float32  # the model itself is untouched


def test_a_model_that_overflows_fp16_is_decoded_wider_and_says_so(bot, capsys):
    import copy

    model = copy.deepcopy(bot.kogpt2)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(1e6)  # its last hidden states exceed fp16's range
    dec = Decoding(no_repeat_ngram_size=0)
    prompts = prompts_of(bot, QUESTIONS, "0", dec)
    half = G.create("static", model, bot.tokenizer)
    half.static_dtype = torch.float16
    replies = half.generate(prompts, dec)
    assert "this model overflows fp16" in capsys.readouterr().err
    assert replies == G.create("lean", model, bot.tokenizer).generate(prompts, dec)
    assert half.generate(prompts[:3], dec) == replies[:3] and "overflows" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["lean", "static"])
def test_interleaved_streams_keep_to_their_own_reply(bot, kind):
    """Two replies streamed turn about (two conversations in one program) each get their own cache,
    and a stream's inference mode does not leak into the code between its tokens."""
    dec = Decoding(no_repeat_ngram_size=0)
    first, second = prompts_of(bot, ["배고파", "헤어졌어요"], "0", dec)
    streaming = engine(bot, kind)
    one, two = streaming.stream(first, dec), streaming.stream(second, dec)
    got = {0: [], 1: []}
    going = {0: one, 1: two}
    while going:
        for key in list(going):
            token = next(going[key], None)
            if token is None:
                del going[key]
            else:
                got[key].append(token)
                assert not torch.is_inference_mode_enabled()
    lean = engine(bot, "lean")
    assert got[0] == list(lean.stream(first, dec)) and got[1] == list(lean.stream(second, dec))


def test_engines_by_name_and_auto():
    assert G.names()[0] == "auto" and {"lean", "static", "hf", "llamacpp"} <= set(G.names())
    with pytest.raises(ValueError, match="engine must be one of auto, llamacpp, static, lean, hf"):
        G.check_name("vllm")


def test_auto_picks_as_before(bot):
    assert G.create("auto", bot.kogpt2, bot.tokenizer).name == "lean-gpt2"  # GPT-2 on a CPU
    assert G.create("hf", bot.kogpt2, bot.tokenizer).name == "generate"


def test_an_engine_that_cannot_run_the_model_says_why(bot, monkeypatch):
    monkeypatch.setattr(LeanGPT2, "supports", staticmethod(lambda model: False))
    with pytest.raises(ValueError, match="the static engine cannot run this model: it runs GPT-2 models only"):
        G.create("static", bot.kogpt2, bot.tokenizer)
    assert G.create("auto", bot.kogpt2, bot.tokenizer).name == "generate"


def test_engine_flag_at_every_reply_door(trained_dir, capsys):
    from kogpt2_chatbot.__main__ import main
    from kogpt2_chatbot.api import Chatbot

    ckpt = str(trained_dir / "model_-last.ckpt")
    with pytest.raises(ValueError, match="engine must be one of"):
        Chatbot.load(ckpt, engine="fast")
    for door in (["ask", "배고파"], ["chat"], ["answer"], ["serve"], ["evaluate"]):
        capsys.readouterr()
        assert main([*door, "--model_params", ckpt, "--engine", "fast"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: engine must be one of auto, llamacpp, static, lean, hf; got 'fast'", door
    replies = {}
    for name in ("lean", "static", "hf"):
        assert main(["ask", "배고파", "--model_params", ckpt, "--engine", name]) in (0, None)
        replies[name] = capsys.readouterr().out
    assert replies["lean"] == replies["static"] == replies["hf"] and replies["lean"].strip()


class Spelled:
    """A tokenizer whose ids are indexes into `pieces` (decode joins them)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_reply_text_has_no_runs_of_spaces_and_streams_join_to_it():
    tok = Spelled(["</s>", "잘", " ", " 좋은", " ", " 은", "\n", "요"])
    ids = [1, 2, 2, 3, 4, 5, 2, 6, 7, 0, 1]
    assert text.reply_text(tok, ids, eos_id=0) == "잘 좋은 은 \n요"
    pieces = text.TextPieces(tok)
    streamed = "".join(pieces.add(i) for i in ids[:9]) + pieces.finish()
    assert streamed == text.reply_text(tok, ids, eos_id=0)


@pytest.mark.parametrize("reply, junk", [
    ("이 을 은 도 는", True), ("이  을  은  도  는", True), ("가 를 좋아", True), ("가 나 다 라", True),
    ("제가 잘  좋은 더 은 많이 을", True), (" 다 잘 될 거예요. ", False), ("내 꿈 꿔!", False), ("눈 또 와", False),
    ("잘 좋은 은", False), ("좋은 사람 만날 거예요.", False),
])
def test_degenerate_catches_junk_of_lone_syllables_and_spaces(reply, junk):
    assert text.is_degenerate(Spelled({5: reply, 6: ""}), [5, 6, 0], eos_id=0, cap=8) is junk


def test_only_the_registry_knows_the_engines():
    """Outside engines/, nothing imports an engine's own module: the registry builds them by name."""
    import re
    from pathlib import Path

    import kogpt2_chatbot

    package = Path(kogpt2_chatbot.__file__).parent
    engine_modules = sorted({target.split(":")[0] for target in G.ENGINES.values()} | {"gpt2"})
    pattern = re.compile(r"engines(\.|\s+import\s+)(" + "|".join(engine_modules) + r")\b")
    outside = [p for p in package.rglob("*.py") if "engines" not in p.relative_to(package).parts]
    assert outside and not [str(p) for p in outside if pattern.search(p.read_text(encoding="utf-8"))]
