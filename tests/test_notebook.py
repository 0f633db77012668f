"""The Colab notebook, run offline: network cells skipped, scratch-tiny on the sample chats."""
import os

import nbclient
import nbformat

from conftest import ROOT

NOTEBOOK = ROOT / "KoGPT2_chatbot_pytorch.ipynb"


def test_notebook_runs_offline(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    skipped = [c for c in nb.cells if "network" in c.get("metadata", {}).get("tags", [])]
    assert skipped, "the clone/install cells are tagged 'network'"
    nb.cells = [c for c in nb.cells if c not in skipped]
    env = {
        "KOGPT2_BASE_MODEL": "scratch-tiny", "KOGPT2_DATA": str(ROOT / "data" / "sample_chats.csv"),
        "KOGPT2_MAX_EPOCHS": "20", "KOGPT2_GPUS": "0", "KOGPT2_MODEL_DIR": str(tmp_path / "model_chp"),
        "KOGPT2_TRAIN_EXTRA": "--batch-size 16 --lr 3e-3 --samples 0", "HF_HUB_OFFLINE": "1",
        "KOGPT2_OUT": str(tmp_path),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Simsimi >" in text and "user > 배탈났어." in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the training curves and the evaluation chart, inline
    assert (tmp_path / "model_chp" / "model_-last.ckpt").exists()
    assert (tmp_path / "answers.xlsx").exists() and (tmp_path / "eval" / "report.md").exists()
