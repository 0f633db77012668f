import json
import hashlib

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import framing


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_columns_are_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", "Q,answer\n안녕,반가워\n")
    with pytest.raises(chatdata.DataError, match=r"missing column\(s\) A, label; found Q, answer"):
        chatdata.load_chat_table(path)


def test_bad_labels_are_listed_by_line(tmp_path):
    path = write_csv(tmp_path / "t.csv", "Q,A,label\n안녕,반가워,0\n잘가,또 봐,3\n뭐해,쉬어,x\n좋아,나도,2\n")
    with pytest.raises(chatdata.DataError) as err:
        chatdata.load_chat_table(path)
    assert "2 bad row(s)" in str(err.value)
    assert "line 3: '3'" in str(err.value) and "line 4: 'x'" in str(err.value)


def test_labels_are_stripped_and_empty_cells_dropped_and_counted(tmp_path):
    path = write_csv(tmp_path / "t.csv", "Q,A,label\n안녕,반가워,2   \n,빈 질문,0\n빈 답,  ,1\n좋아, 나도 ,1\n")
    table = chatdata.load_chat_table(path)
    assert list(table.rows["label"]) == ["2", "1"]
    assert list(table.rows["A"]) == ["반가워", "나도"]
    assert table.dropped_empty == 2
    assert "dropped 2 row(s)" in table.notes[0] and "lines 3, 4" in table.notes[0]


def test_all_rows_empty_is_an_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", "Q,A,label\n,,0\n")
    with pytest.raises(chatdata.DataError, match="no usable rows"):
        chatdata.load_chat_table(path)


@pytest.mark.parametrize("suffix", [".tsv", ".xlsx", ".jsonl"])
def test_other_formats_read_the_same(tmp_path, suffix):
    frame = pd.DataFrame({"Q": ["안녕", "잘 자"], "A": ["반가워요", "좋은 꿈 꿔요"], "label": [0, 2]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".xlsx":
        frame.to_excel(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    table = chatdata.load_chat_table(path)
    assert table.rows[["Q", "A", "label"]].values.tolist() == [["안녕", "반가워요", "0"], ["잘 자", "좋은 꿈 꿔요", "2"]]


@pytest.mark.parametrize("suffix, text", [
    (".csv", "Q,A,label\n배고파,밥 먹어요,0\n똠방각하 헤어졌어,힘내요,1\n"),
    (".tsv", "Q\tA\tlabel\n배고파\t밥 먹어요\t0\n똠방각하 헤어졌어\t힘내요\t1\n"),
    (".jsonl", '{"messages": [{"role": "user", "content": "배고파"}, {"role": "assistant", "content": "밥 먹어요"}]}\n'
               '{"messages": [{"role": "user", "content": "똠방각하 헤어졌어", "sentiment": 1}, '
               '{"role": "assistant", "content": "힘내요"}]}\n'),
])
def test_korean_windows_files_train_as_their_utf8_twins(tmp_path, suffix, text):
    """Korean Excel saves plain CSV as cp949: the same turns as the UTF-8 file, and a note that says so."""
    utf8 = chatdata.load_chat_table(write_csv(tmp_path / f"u{suffix}", text))
    (tmp_path / f"k{suffix}").write_bytes(text.encode("cp949"))
    korean = chatdata.load_chat_table(tmp_path / f"k{suffix}")
    turns = ["Q", "A", "label", "conv", "turn"]
    assert korean.rows[turns].values.tolist() == utf8.rows[turns].values.tolist()
    assert korean.rows["Q"].tolist() == ["배고파", "똠방각하 헤어졌어"]
    assert utf8.notes == [] and korean.notes[0].startswith(f"k{suffix} is not UTF-8; it was read as cp949")


@pytest.mark.parametrize("encoding", ["utf-16", "cp949"])
def test_excel_text_exports_train_as_the_csv(tmp_path, encoding):
    """The corpus saved from Excel as "유니코드 텍스트" or "텍스트 (탭으로 분리)": a tab-separated .txt."""
    csv_text = 'Q,A,label\n배고파,"밥, 먹어요",0\n똠방각하 헤어졌어,힘내요,1\n'
    utf8 = chatdata.load_chat_table(write_csv(tmp_path / "u.csv", csv_text))
    txt = 'Q\tA\tlabel\r\n배고파\t밥, 먹어요\t0\r\n똠방각하 헤어졌어\t힘내요\t1\r\n'
    (tmp_path / "k.txt").write_bytes(txt.encode(encoding))
    excel = chatdata.load_chat_table(tmp_path / "k.txt")
    turns = ["Q", "A", "label", "conv", "turn"]
    assert excel.rows[turns].values.tolist() == utf8.rows[turns].values.tolist()
    assert excel.rows["A"].tolist() == ["밥, 먹어요", "힘내요"]


def test_a_file_that_is_no_text_is_one_line(tmp_path):
    (tmp_path / "t.csv").write_bytes("Q,A,label\n배고파,".encode() + b"\x80\n")
    with pytest.raises(chatdata.DataError, match=r"is not UTF-8 text \(invalid start byte at byte 20\)") as err:
        chatdata.load_chat_table(tmp_path / "t.csv")
    assert "\n" not in str(err.value)


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(chatdata.DataError, match="no such file"):
        chatdata.load_chat_table(tmp_path / "none.csv")
    (tmp_path / "x.parquet").write_bytes(b"x")
    with pytest.raises(chatdata.DataError, match="unsupported file type"):
        chatdata.load_chat_table(tmp_path / "x.parquet")


def test_real_corpus_loads_with_its_quirks(corpus_csv):
    table = chatdata.load_chat_table(corpus_csv)
    assert len(table.rows) == 11823 and table.dropped_empty == 0
    assert table.rows["label"].value_counts().to_dict() == {"0": 5290, "1": 3570, "2": 2963}
    assert table.sha256 == chatdata.CORPUS_SHA256


def test_split_is_seeded_stratified_and_keeps_questions_on_one_side(corpus_csv):
    rows = chatdata.load_chat_table(corpus_csv).rows
    train, val = chatdata.split_train_val(rows, 0.05, seed=7)
    assert len(train) + len(val) == len(rows)
    assert not set(train["Q"]) & set(val["Q"])
    for label, count in rows["label"].value_counts().items():
        share = (val["label"] == label).sum() / count
        assert 0.04 < share < 0.06, (label, share)
    again = chatdata.split_train_val(rows, 0.05, seed=7)[1]
    other = chatdata.split_train_val(rows, 0.05, seed=8)[1]
    assert list(again["Q"]) == list(val["Q"])
    assert list(other["Q"]) != list(val["Q"])


def test_val_ratio_bounds(sample_csv):
    rows = chatdata.load_chat_table(sample_csv).rows
    assert len(chatdata.split_train_val(rows, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="--val-ratio must be >= 0 and < 1; got 1.0"):  # the option's own rule
        chatdata.split_train_val(rows, 1.0)


def test_fetch_verifies_the_checksum(tmp_path, corpus_csv):
    good = chatdata.fetch_default_corpus(tmp_path / "a" / "ChatbotData.csv", url=corpus_csv.as_uri())
    assert hashlib.sha256(good.read_bytes()).hexdigest() == chatdata.CORPUS_SHA256
    wrong = write_csv(tmp_path / "wrong.csv", "Q,A,label\n안녕,반가워,0\n")
    with pytest.raises(chatdata.DataError, match="expected 287eb1"):
        chatdata.fetch_default_corpus(tmp_path / "b" / "ChatbotData.csv", url=wrong.as_uri())
    assert not (tmp_path / "b").exists()  # no partial file, and no folder made for it, left behind


def test_fetch_failure_says_how_to_pass_a_copy(tmp_path):
    with pytest.raises(chatdata.DataError, match="--data PATH"):
        chatdata.fetch_default_corpus(tmp_path / "c.csv", url=(tmp_path / "absent.csv").as_uri())


def test_dataset_and_dynamic_padding(sample_csv, tiny_backbone):
    _, tok = tiny_backbone
    rows = chatdata.load_chat_table(sample_csv).rows.head(5)
    dataset = chatdata.ChatDataset(rows, tok, max_len=64)
    first = rows.iloc[0]
    ids, labels, chars = dataset[0]
    assert (ids, labels) == framing.example_ids(tok, first.Q, first.label, first.A, 64)
    assert chars == len(first.A) + 1  # the answer's characters and one for </s>
    pad = framing.control_ids(tok)["<pad>"]
    batch = chatdata.collate([dataset[i] for i in range(5)], pad_id=pad)
    longest = max(len(dataset[i][0]) for i in range(5))
    assert batch["input_ids"].shape == (5, longest) < (5, 64)
    for i in range(5):
        n = len(dataset[i][0])
        assert torch.all(batch["input_ids"][i, n:] == pad)
        assert torch.all(batch["labels"][i, n:] == framing.IGNORE_INDEX)


def test_length_grouped_sampler_covers_everything_and_cuts_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(8, 60) for _ in range(1000)]
    sampler = chatdata.LengthGroupedSampler(lengths, batch_size=32, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch

    def padded(indices):
        return sum(32 * max(lengths[i] for i in indices[k:k + 32]) for k in range(0, len(indices), 32))

    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    assert padded(order) < 0.75 * padded(shuffled)


def test_under_ddp_each_process_takes_its_share_of_a_new_grouped_order_every_epoch(monkeypatch):
    import random

    rng = random.Random(0)
    lengths = [rng.randint(8, 60) for _ in range(1001)]
    told = []
    sampler = chatdata.LengthGroupedSampler(lengths, batch_size=16, seed=1, on_epoch=told.append)
    # Lightning leaves a DistributedSampler in place (and tells it each epoch) instead of wrapping it
    assert isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
    alone = list(sampler)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    shares = {}
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        shares[rank] = list(sampler)
    assert len(shares[0]) == len(shares[1]) == len(sampler) == 501  # equal shares, or DDP would hang
    assert sorted(shares[0] + shares[1]) == sorted([*range(1001), alone[0]])  # everything, one index twice
    assert [i for pair in zip(shares[0], shares[1]) for i in pair][:1001] == alone  # the same order, dealt out

    def padded(indices):
        return sum(16 * max(lengths[i] for i in indices[k:k + 16]) for k in range(0, len(indices), 16))

    shuffled = list(shares[0])
    rng.shuffle(shuffled)
    assert padded(shares[0]) < 0.75 * padded(shuffled)  # each process's batches stay grouped by length
    sampler.set_epoch(3)
    assert told == [3] and list(sampler) != shares[1]  # a new order, and the dataset told the epoch


# --- conversations --------------------------------------------------------------------------

DIALOGUES = chatdata.Path(__file__).resolve().parents[1] / "data" / "sample_dialogues.csv"


def test_the_multi_turn_sample_reads_as_conversations():
    table = chatdata.load_chat_table(DIALOGUES)
    frame = pd.read_csv(DIALOGUES, dtype=str, keep_default_na=False)
    assert table.conversations == len(frame) and table.history_turns == 2
    turns = sum((frame[f"사람문장{n}"] != "").sum() for n in (1, 2, 3))
    assert len(table.rows) == turns
    first = table.rows[table.rows.conv == 0]
    assert list(first.Q) == [frame.사람문장1[0], frame.사람문장2[0], frame.사람문장3[0]]
    # The six 감정_대분류 through the one emotion map: 기쁨 2; 분노, 불안, 상처, 슬픔 1; 당황 0.
    expected = {"기쁨": "2", "분노": "1", "불안": "1", "상처": "1", "슬픔": "1", "당황": "0"}
    by_conv = table.rows.groupby("conv").label.first()
    assert list(by_conv) == [expected[e] for e in frame.감정_대분류]


def test_numbered_q_a_columns_and_a_missing_emotion_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", "Q1,A1,Q2,A2\n안녕,반가워,이름이 뭐야,심심이야\n배고파,밥 먹어,,\n")
    table = chatdata.load_chat_table(path)
    assert list(table.rows.Q) == ["안녕", "이름이 뭐야", "배고파"] and list(table.rows.turn) == [0, 1, 0]
    assert set(table.rows.label) == {"0"} and "every turn gets sentiment 0" in table.notes[0]


def test_jsonl_messages_with_sentiments(tmp_path):
    lines = [
        {"messages": [{"role": "system", "content": "친절하게"}, {"role": "user", "content": "나 헤어졌어", "sentiment": 1},
                      {"role": "assistant", "content": "힘들겠어요."}, {"role": "user", "content": "고마워"},
                      {"role": "assistant", "content": "언제든지요."}], "sentiment": "positive"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "배고파"}]},
                      {"role": "assistant", "content": "밥 드세요."}, {"role": "user", "content": "뭐 먹지"}]},
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    table = chatdata.load_chat_table(path)
    assert list(table.rows.Q) == ["나 헤어졌어", "고마워", "배고파"]
    assert list(table.rows.label) == ["1", "2", "0"] and list(table.rows.conv) == [0, 0, 1]
    notes = " ".join(table.notes)
    assert "1 conversation(s) ended in a question without an answer" in notes and "(lines 2)" in notes
    assert "1 system message(s) skipped" in notes


@pytest.mark.parametrize("messages, words", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
     "both assistant messages"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "both user messages"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "is empty"),
    ([{"role": "bot", "content": "a"}], "role 'bot'"),
    ([{"role": "user", "content": "a", "sentiment": "행복하다"}, {"role": "assistant", "content": "b"}],
     "maps to no sentiment"),
])
def test_bad_jsonl_conversations_are_reported_by_line(tmp_path, messages, words):
    good = {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": messages}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    with pytest.raises(chatdata.DataError) as err:
        chatdata.load_chat_table(path)
    assert "line 2:" in str(err.value) and words in str(err.value) and "fix or remove" in str(err.value)


@pytest.mark.parametrize("row, words", [
    ("안녕,반가워,,,잘 자,굿나잇,기쁨", "turn 2 is empty but turn 3 is not"),
    (",반가워,,,,,기쁨", "answer without a question"),
    ("안녕,,뭐해,쉬어,,,기쁨", "question without an answer"),
    ("안녕,반가워,,,,,행복함", "maps to no sentiment"),
])
def test_bad_wide_rows_are_reported_by_line(tmp_path, row, words):
    header = "사람문장1,시스템문장1,사람문장2,시스템문장2,사람문장3,시스템문장3,감정_대분류"
    path = write_csv(tmp_path / "t.csv", f"{header}\n좋아,나도,,,,,기쁨\n{row}\n")
    with pytest.raises(chatdata.DataError) as err:
        chatdata.load_chat_table(path)
    assert "line 3:" in str(err.value) and words in str(err.value)


def test_an_unknown_layout_lists_the_formats(tmp_path):
    path = write_csv(tmp_path / "t.csv", "text,reply\n안녕,반가워\n")
    with pytest.raises(chatdata.DataError, match="numbered turn columns"):
        chatdata.load_chat_table(path)


def test_split_holds_out_whole_conversations():
    table = chatdata.load_chat_table(DIALOGUES)
    train, val = chatdata.split_train_val(table.rows, 0.2, seed=1)
    assert len(val) and not set(train.conv) & set(val.conv)
    for conv in set(val.conv):  # every turn of a held-out conversation is held out
        assert (val.conv == conv).sum() == (table.rows.conv == conv).sum()


def test_dataset_frames_a_conversation_per_example(tiny_backbone):
    _, tok = tiny_backbone
    table = chatdata.load_chat_table(DIALOGUES)
    dataset = chatdata.ChatDataset(table.rows, tok, 256)
    assert len(dataset) == table.conversations
    ids, labels, _ = dataset[0]
    assert (ids, labels) == framing.conversation_ids(tok, chatdata.conversation_turns(table.rows)[0], 256)


@pytest.mark.parametrize("a, b", [("배고파", "배고파!!"), ("배고파", "배 고파"), ("헤어졌어", "헤어졌어ㅠㅠ"),
                                  ("좋아", "좋아ㅋㅋㅋ"), ("뭐해?", "뭐해~")])
def test_near_duplicate_questions_share_a_side(a, b):
    assert chatdata.question_key(a) == chatdata.question_key(b)
    assert chatdata.question_key("배고파") != chatdata.question_key("배불러")


def test_the_split_keeps_near_duplicates_together(tmp_path):
    lines = ["Q,A,label"] + [f"질문{i}{end},답{i},{i % 3}" for i in range(40) for end in ("", "?", "ㅋㅋ", " !")]
    table = chatdata.load_chat_table(write_csv(tmp_path / "t.csv", "\n".join(lines) + "\n"))
    train, val = chatdata.split_train_val(table.rows, 0.2, seed=3)
    assert len(val) and not set(train.Q.map(chatdata.question_key)) & set(val.Q.map(chatdata.question_key))


def test_kochatbart_split_is_80_10_10_and_fixed(corpus_csv):
    rows = chatdata.load_chat_table(corpus_csv).rows
    train, val, test = chatdata.split_kochatbart(rows, 42)
    assert (len(train), len(val), len(test)) == (9458, 1182, 1183)
    again = chatdata.split_kochatbart(rows, 42)
    assert list(again[2].line) == list(test.line) and not set(train.line) & set(test.line)


def test_answer_characters_count_every_answer_and_its_end():
    assert chatdata.answer_chars([" 안녕 ", "반가워요."]) == 2 + 1 + 5 + 1


def test_refine_training_blends_references_anew_each_epoch(sample_csv, tiny_backbone):
    _, tok = tiny_backbone
    rows = chatdata.load_chat_table(sample_csv).rows.head(200)
    c = framing.control_ids(tok)
    retrieved = [f"다른 대답 {i}" for i in range(len(rows))]
    plain = chatdata.ChatDataset(rows, tok, 64)
    blended = chatdata.ChatDataset(rows, tok, 64, retrieved, refine=0.5, alpha=0.5, seed=3)

    def kinds(epoch):
        blended.set_epoch(epoch)
        out = []
        for i, row in enumerate(rows.itertuples()):
            ids = blended[i][0]
            if c[framing.REF] not in ids:
                assert blended[i] == plain[i]  # no reference: the plain framing
                out.append("plain")
                continue
            ref = ids[ids.index(c[framing.REF]) + 1 : ids.index(c["<sys>"])]
            assert ref in (framing.text_ids(tok, row.A), framing.text_ids(tok, retrieved[i]))
            out.append("own" if ref == framing.text_ids(tok, row.A) else "retrieved")
        return out

    first, again, second = kinds(0), kinds(0), kinds(1)
    assert first == again and first != second  # drawn per epoch, the same for the same epoch
    for name, share in (("plain", 0.5), ("own", 0.25), ("retrieved", 0.25)):
        assert abs(first.count(name) / len(first) - share) < 0.1
    assert max(blended.lengths()) >= max(len(e[0]) for e in plain.examples)
    assert chatdata.ChatDataset(rows, tok, 64, retrieved, refine=0.0)[5] == plain[5]
