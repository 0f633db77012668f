import codecs

import pytest

from kogpt2_chatbot import textfile


@pytest.mark.parametrize("raw, encoding", [
    ("배고파\n".encode(), "utf-8-sig"),
    (codecs.BOM_UTF8 + "배고파\n".encode(), "utf-8-sig"),
    (b"", "utf-8-sig"),
    ("Sentence\t배고파\n".encode("utf-16"), "utf-16"),  # Excel's "Unicode text"
    (codecs.BOM_UTF16_BE + "가\n".encode("utf-16-be"), "utf-16"),
    ("똠방각하\n".encode("cp949"), "cp949"),  # outside EUC-KR's 2,350 syllables, inside cp949
])
def test_each_encoding_a_korean_user_saves_is_recognised(tmp_path, raw, encoding):
    path = tmp_path / "t.csv"
    path.write_bytes(raw)
    assert textfile.encoding_of(path) == encoding
    assert path.read_text(encoding=encoding) == raw.decode(encoding)


def test_the_note_is_given_only_for_the_guess(tmp_path):
    assert textfile.note(tmp_path / "t.csv", "utf-8-sig") is None and textfile.note(tmp_path / "t.csv", "utf-16") is None
    assert textfile.note(tmp_path / "t.csv", "cp949").startswith("t.csv is not UTF-8; it was read as cp949")


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_the_first_bad_byte_is_found_across_chunk_edges(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(textfile, "_CHUNK", chunk)
    path = tmp_path / "t.csv"
    good = "질문,답\n배고파,".encode()
    path.write_bytes(good + "밥".encode()[:2] + b"," + b"\x80" * 3)  # a character cut short, then no text at all
    with pytest.raises(textfile.NotText) as err:
        textfile.encoding_of(path)
    assert f"(invalid continuation byte at byte {len(good)}), nor Korean Windows text" in str(err.value)
    assert str(err.value).endswith("save it as UTF-8") and "\n" not in str(err.value)
    path.write_bytes("질문,답\n배고파,밥밥밥".encode("cp949"))  # two-byte characters, cut by small chunks
    assert textfile.encoding_of(path) == "cp949"


def test_a_piped_line_is_decoded_by_the_same_rule():
    assert textfile.decode("배고파\n".encode()) == ("배고파\n", "utf-8-sig")
    assert textfile.decode("똠방각하\r\n".encode("cp949")) == ("똠방각하\r\n", "cp949")
    with pytest.raises(UnicodeDecodeError) as err:
        textfile.decode("배".encode() + b"\xff\n")
    assert err.value.encoding == "utf-8" and err.value.start == 3  # where UTF-8 stopped, as the notice says


@pytest.mark.parametrize("name, raw, sep", [
    ("t.csv", "Q\tA,B\n".encode(), ","),
    ("t.tsv", "Q,A\n".encode(), "\t"),
    ("t.txt", "Q\tA\tlabel\n배고파\t밥\t0\n".encode("utf-16"), "\t"),  # Excel's "유니코드 텍스트"
    ("t.txt", "Q\tA\n배고파\t밥\n".encode("cp949"), "\t"),  # Excel's "텍스트 (탭으로 분리)"
    ("T.TXT", "Q,A\n배고파,밥\t먹자\n".encode(), ","),  # a tab only below the header: the header decides
    ("t.txt", b"", ","),
])
def test_the_separator_of_a_text_table(tmp_path, name, raw, sep):
    path = tmp_path / name
    path.write_bytes(raw)
    assert textfile.separator(path, textfile.encoding_of(path)) == sep


def test_the_kit_writes_txt_tab_separated_as_excel_does(tmp_path):
    assert [textfile.written_separator(tmp_path / n) for n in ("a.csv", "a.tsv", "a.txt", "a.TXT")] == [",", "\t", "\t", "\t"]
