import os
import sys
from pathlib import Path

# Tests never touch the network: a hub call would only fail after ~45 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_chats.csv"
CORPUS = ROOT / "Chatbot_data" / "ChatbotData.csv"  # where training looks for (and downloads) it
sys.path.insert(0, str(ROOT))

# What a user must never see from a command: library warnings, tips, tracebacks.
NOISE = re.compile(r"warn|deprecat|tip:|traceback|litlogger|available: (true|false)|^\[transformers\]|"
                   r"strongly recommend", re.IGNORECASE)
# A command's environment as a user has it (no PYTHONWARNINGS), offline, with this checkout importable.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"HF_HUB_OFFLINE": "1",
                                                                             "PYTHONPATH": str(ROOT)}


def noise(stderr: str) -> list[str]:
    """The lines of a command's stderr that a user could not act on."""
    return [line for line in stderr.splitlines() if NOISE.search(line)]


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def corpus_csv() -> Path:
    if not CORPUS.exists():
        pytest.skip("the real corpus is not at Chatbot_data/ChatbotData.csv; fetch it (python -c \"from "
                    "kogpt2_chatbot.data import fetch_default_corpus; fetch_default_corpus()\") to run these tests")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_backbone(sample_csv):
    """(model, tokenizer) of the scratch-tiny preset, tokenizer trained on the sample chats."""
    import pandas as pd

    from kogpt2_chatbot import backbone, framing

    rows = pd.read_csv(sample_csv, dtype=str)
    return backbone.load_backbone("scratch-tiny", texts=[*rows.Q, *rows.A, *framing.SENTIMENTS])


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, sample_csv):
    """A scratch-tiny model trained on the sample chats until it answers in sentences (~15 s)."""
    from kogpt2_chatbot.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(out), max_epochs=30,
                      batch_size=16, lr=3e-3, val_ratio=0.1, samples=0, progress=False))
    return out
