"""Shared fixtures: an isolated forgetctl home and the tiny memorising model.

- ``forgetctl_home`` (autouse): ``FORGETCTL_HOME`` points at a per-test temporary directory,
  so no test reads or writes ``./.forgetctl``.
- ``tiny_lm_dir`` (session): a directory with the tiny Llama that memorised
  :data:`tinylm.TINY_FACTS` and :data:`tinylm.TINY_GENERAL` (trained once, cached).
- ``tiny_lm``: a fresh ``(model, tokenizer)`` loaded from it, safe to modify in a test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tinylm  # noqa: E402

# One thread: the tiny model is far too small to gain from intra-op parallelism, and on a
# shared 2-core machine a second thread makes it many times slower (spinning on contention).
torch.set_num_threads(int(os.environ.get("FORGETCTL_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def forgetctl_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "forgetctl-home"
    monkeypatch.setenv("FORGETCTL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_lm_dir() -> Path:
    return tinylm.build_tiny_lm()


@pytest.fixture
def tiny_lm(tiny_lm_dir):
    from forgetctl.lm.weights import load_model

    return load_model(tiny_lm_dir)
