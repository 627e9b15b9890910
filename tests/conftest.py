"""Test setup: never reach the hub; keep torch to the threads the machine has."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh, empty PEFTPORT_HOME: for tests of the cache itself."""
    home = tmp_path / "peftport-home"
    monkeypatch.setenv("PEFTPORT_HOME", str(home))
    return home
