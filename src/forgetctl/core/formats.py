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

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from forgetctl.core.errors import BadInput
from forgetctl.core.files import read_text

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


def check_served(names: list[str], templates: Mapping[str, str] | None = None) -> list[str]:
    """``names`` as registered: each a served format or one of the user's ``templates``, no
    repeats."""
    if not names:
        raise BadInput("at least one serving format")
    known = [*SERVED, *(templates or {})]
    if bad := [n for n in names if n not in known]:
        raise BadInput(f"unknown serving format {bad[0]!r} (known: {', '.join(known)}, or a "
                       f"template file {' or '.join(TEMPLATE_SUFFIXES)})")  # fmt: skip
    return list(dict.fromkeys(names))


# A user's own serving format: a Jinja template file that renders the prompt of one question
# (``{{ question }}``), as a server that is not chat-templated builds it. The answer follows
# the rendered prompt directly when it ends in whitespace, else after one space.
TEMPLATE_SUFFIXES = (".jinja", ".j2")
MAX_TEMPLATE_BYTES = 16 * 1024
_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_PROBE = "Where was the person of this probe born?"


def is_template_file(entry: str) -> bool:
    """Whether a ``--format`` entry names a template file rather than a built-in format."""
    return entry.lower().endswith(TEMPLATE_SUFFIXES)


def load_template(path: str | Path) -> tuple[str, str]:
    """A user's prompt template file as (format name, template text); the name is the file's
    without its suffix. One BadInput line for a file that is not a usable template."""
    path = Path(path)
    name = path.name.lower()
    for suffix in TEMPLATE_SUFFIXES:
        name = name.removesuffix(suffix)
    text = read_text(path, MAX_TEMPLATE_BYTES)
    check_template(name, text, str(path))
    return name, text


def check_template(name: str, text: str, where: str) -> None:
    """BadInput (naming ``where``) unless ``text`` is a usable template for format ``name``."""
    if not _TEMPLATE_NAME.fullmatch(name) or name in FORMATS:
        raise BadInput(f"{where}: a template's file name is its format's name: lowercase "
                       "letters, digits, - and _ (at most 32), not a built-in one")  # fmt: skip
    from jinja2 import TemplateError, TemplateSyntaxError  # 0.16 s: not at every start

    try:
        rendered = render_template(text, _PROBE)
    except TemplateSyntaxError as exc:
        raise BadInput(f"{where}: not a Jinja template: line {exc.lineno}: {exc.message}") from None
    except TemplateError as exc:
        raise BadInput(f"{where}: the template cannot render a question ({exc}); it is given "
                       "`question` only") from None  # fmt: skip
    if rendered.count(_PROBE) != 1:
        raise BadInput(f"{where}: the template must put {{{{ question }}}} in the prompt once")


def render_template(text: str, question: str) -> str:
    """The prompt of ``question`` in a user's template."""
    return _compiled(text).render(question=question)


@lru_cache(maxsize=16)
def _compiled(text: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Sandboxed: a template comes from a file a user names, and is rendered in every step.
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text)
