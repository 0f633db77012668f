"""checkpoint.py: whole files or none, the umask's permissions, plain-data entries that travel from
training to Chatbot.info and the hf/ export, which model a door loads and the line saying so."""
import errno
import io
import json
import os
import shutil
import stat

import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot import checkpoint as C
from kogpt2_chatbot.__main__ import legacy_main, main
from kogpt2_chatbot.module import KoGPT2Chat

from conftest import SAMPLE


def run(capsys, *argv, legacy=False):
    code = (legacy_main if legacy else main)(list(argv))
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def run_dir(trained_dir, tmp_path_factory):
    """A copy of the trained run (best and last checkpoints, hf/), safe to change."""
    out = tmp_path_factory.mktemp("run") / "demo"
    shutil.copytree(trained_dir, out, ignore=shutil.ignore_patterns("logs", ".cache"))
    return out


def test_a_full_disk_never_leaves_a_cut_checkpoint_under_its_name(run_dir, tmp_path, monkeypatch):
    target = tmp_path / "model_-last.ckpt"
    shutil.copyfile(run_dir / "model_-last.ckpt", target)
    before = target.read_bytes()
    checkpoint = C.read_checkpoint(target)

    def half_then_full(obj, f, *args, **kwargs):  # the disk fills up in the middle of the write
        with open(f, "wb") as fh:
            fh.write(before[: len(before) // 2])
        disk_full()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        C.checkpoint_io().save_checkpoint(checkpoint, str(target))  # Lightning's way in (Trainer plugins)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["model_-last.ckpt"]
    with pytest.raises(OSError):
        C.write_checkpoint(checkpoint, tmp_path / "new.ckpt")
    assert os.listdir(tmp_path) == ["model_-last.ckpt"]  # no new file, no temporary left behind


def test_files_follow_the_umask(run_dir, tmp_path, umask_022):
    checkpoint = C.read_checkpoint(run_dir / "model_-best.ckpt")
    C.write_checkpoint(checkpoint, tmp_path / "a.ckpt")
    bot = Chatbot.load(run_dir)
    out = bot.save_pretrained(tmp_path / "hf")
    assert mode_of(tmp_path / "a.ckpt") == 0o644 and mode_of(out) == 0o755
    assert {p.name: mode_of(p) for p in out.iterdir()}["model.safetensors"] == 0o644
    assert all(mode_of(p) == 0o644 for p in out.iterdir())
    os.umask(0o077)
    C.write_checkpoint(checkpoint, tmp_path / "b.ckpt")
    assert mode_of(tmp_path / "b.ckpt") == 0o600


def test_chatbot_entries_travel_from_the_module_to_info_and_the_export(run_dir, tmp_path, monkeypatch):
    module = KoGPT2Chat.load_from_checkpoint(run_dir / "model_-best.ckpt")
    extra = {"index": {"rows": [1, 2], "answers": ["네", "아니요"]}}
    monkeypatch.setattr(KoGPT2Chat, "chatbot_state", lambda self: {"history_turns": 0, **extra})
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    C.write_checkpoint(checkpoint, tmp_path / "x.ckpt")
    bot = Chatbot.load(tmp_path / "x.ckpt")
    assert bot.info["index"] == extra["index"]
    out = bot.save_pretrained(tmp_path / "hf")
    assert json.loads((out / C.INFO_FILE).read_text(encoding="utf-8"))["index"] == extra["index"]
    assert Chatbot.load(out).info["index"] == extra["index"]


def test_only_plain_data_goes_into_a_checkpoint():
    checkpoint = {"hyper_parameters": {}}
    with pytest.raises(TypeError, match=r"chatbot\.index\.ids is a set, not plain data"):
        C.store(checkpoint, {}, {}, {"index": {"ids": {1, 2}}})
    C.store(checkpoint, {}, {"seed": 1}, {"index": {"ids": [1, 2], "vectors": torch.zeros(2)}})
    assert checkpoint["chatbot"]["index"]["ids"] == [1, 2] and checkpoint["chatbot_split"] == {"seed": 1}


def test_doors_load_the_newest_run_best_weights_and_say_which(run_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "project"
    shutil.copytree(run_dir, home / "model_chp" / "demo")
    monkeypatch.chdir(home)
    assert C.find_model(None)[0] == os.path.join("model_chp", "demo", "model_-best.ckpt")
    bot = Chatbot.load()
    best = Chatbot.load(home / "model_chp" / "demo" / "model_-best.ckpt")
    assert bot.chat_batch(["배고파", "헤어졌어"]) == best.chat_batch(["배고파", "헤어졌어"])
    code, out, err = run(capsys, "ask", "배고파", "--sentiment", "0")
    assert code == 0 and out.strip() == best.chat("배고파", 0)
    assert err.strip() == "model: model_chp/demo/model_-best.ckpt (the newest run under model_chp/, best by validation)"
    monkeypatch.setattr("sys.stdin", io.StringIO("배고파\n"))  # python train_torch.py --chat, through a pipe
    code, out, err = run(capsys, "--chat", "--sentiment", "0", legacy=True)
    assert code == 0 and out.strip() == best.chat("배고파", 0) and "model_chp/demo/model_-best.ckpt" in err
    served = []  # python -m kogpt2_chatbot serve: the same model, without starting a server here
    monkeypatch.setattr("kogpt2_chatbot.serve.serve", lambda bot, *args, **kwargs: served.append(bot))
    code, _, err = run(capsys, "serve")
    assert code == 0 and served[0].info["source"] == os.path.join("model_chp", "demo", "model_-best.ckpt")
    assert "model_chp/demo/model_-best.ckpt" in err
    shutil.copytree(SAMPLE.parents[1] / "EC_data", home / "EC_data")  # python chatbot.py, no arguments
    code, out, err = run(capsys, "answer", "--no-progress")
    assert code == 0 and "63 answered" in out and "model_chp/demo/model_-best.ckpt" in err
    assert (home / "EC_data" / "sample_emotions.answered.xlsx").exists()
    # a newer run wins; one without validation has only its last state
    newer = home / "model_chp" / "small"
    newer.mkdir()
    shutil.copyfile(run_dir / "model_-last.ckpt", newer / "model_-last.ckpt")
    assert C.find_model(None)[0] == os.path.join("model_chp", "small", "model_-last.ckpt")
    assert "no validation split" in C.find_model(None)[1]
    assert C.find_model("model_chp/demo") == (os.path.join("model_chp", "demo", "model_-best.ckpt"),
                                              "best by validation")


def test_no_model_anywhere_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ask", "배고파")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no checkpoint at model_chp/" in err and "--model-dir" in err and "--model_params" in err
    assert not (tmp_path / "model_chp").exists()


def test_export_never_writes_over_other_files(run_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("내 메모", encoding="utf-8")
    code, _, err = run(capsys, "export", "--model_params", str(run_dir), "--out", str(mine))
    assert code == 2 and "holding other files" in err and (mine / "notes.txt").read_text(encoding="utf-8") == "내 메모"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, _, err = run(capsys, "export", "--model_params", str(run_dir), "--out", str(a_file))
    assert code == 2 and "is a file" in err and a_file.read_text() == "x"
    code, _, err = run(capsys, "evaluate", "--model_params", str(run_dir), "--out", str(a_file))
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "hf"
    for _ in range(2):  # an earlier export is replaced whole
        code, _, err = run(capsys, "export", "--model_params", str(run_dir), "--out", str(out))
        assert code == 0 and "model_-best.ckpt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "hf", "mine"]
    assert Chatbot.load(out).chat("배고파") == Chatbot.load(run_dir).chat("배고파")


def test_a_failed_run_leaves_no_empty_folders(tmp_path, capsys):
    target = tmp_path / "model_chp" / "new" / "run"
    code, _, err = run(capsys, "train", "--base-model", "scratch-tiny", "--data", str(tmp_path / "none.csv"),
                       "--model-dir", str(target))
    assert code == 2 and not (tmp_path / "model_chp").exists()
    code, _, err = run(capsys, "train", "--base-model", str(tmp_path / "no-such-model"), "--data", str(SAMPLE),
                       "--model-dir", str(target))
    assert code == 2 and "no such folder here" in err and "could not load the hub model" not in err
    assert not (tmp_path / "model_chp").exists()


def test_a_failed_download_leaves_no_empty_folder(tmp_path):
    from kogpt2_chatbot import data as chatdata

    with pytest.raises(chatdata.DataError, match="could not download"):
        chatdata.fetch_default_corpus(tmp_path / "Chatbot_data" / "ChatbotData.csv", url=(tmp_path / "x").as_uri())
    assert list(tmp_path.iterdir()) == []


def test_loading_draws_no_progress_bar(run_dir, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh Python session
    Chatbot.load(run_dir / "hf")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # and the user's own setting is back
