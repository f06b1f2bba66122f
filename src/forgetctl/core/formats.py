"""The prompt formats a question can be put to a model in, and which of them the gate uses.

A model answers in the format it was fine-tuned in, and often in others (a fine-tune in
plain completion keeps its base's chat template): knowledge removed behind one wrapper can
stay behind another. So a model's registration names the formats it is served in
(``SERVED``: the default is every one the model can render), unlearning trains in those,
and the gate judges forgetting in those and in ``HELD_OUT`` wrappers no training saw; the
worst format decides. Rendering is :func:`forgetctl.lm.prompts.format_prompt`'s.

``completion`` asks no question at all: a record's answer is cut into a prefix and its
continuation (:func:`forgetctl.core.items.in_format`), the prefix is the whole prompt, and
the model is judged on how it continues, as a model that memorised the text would (MUSE's
verbatim probe). Knowledge removed behind "question, answer" can stay in plain text.
"""

from __future__ import annotations

from forgetctl.core.errors import BadInput

FORMATS = {
    "chat": "the tokenizer's chat template with an empty system message",
    "plain": "plain completion: 'Question: {q}\\nAnswer:'",
    "chat-default": "the chat template with no system message (the template's own default)",
    "few-shot": "plain completion after two worked general-knowledge examples",
    "completion": "no wrapper: the first part of a record's answer, continued by the model",
}
SERVED = ("chat", "plain")
"""The formats a model can be registered as served in."""
HELD_OUT = ("chat-default", "few-shot", "completion")
"""Wrappers the gate asks in but unlearning never trains in."""

FEW_SHOT = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a week?", "There are seven days in a week."),
)
"""The worked examples of ``few-shot``: general knowledge, about no person."""

MIN_COMPLETION_WORDS = 4
"""The shortest answer that ``completion`` probes: two words of prefix, two to continue."""


def check_served(names: list[str]) -> list[str]:
    """``names`` as registered: each a served format, no repeats."""
    if not names:
        raise BadInput("at least one serving format")
    if bad := [n for n in names if n not in SERVED]:
        raise BadInput(f"unknown serving format {bad[0]!r} (known: {', '.join(SERVED)})")
    return list(dict.fromkeys(names))
