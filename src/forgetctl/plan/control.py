"""Control subjects: people the model never saw, planned the way the request was.

The gate judges forgetting by comparison: after unlearning, the forgotten subject should
look to every check like someone the model never saw. What "never saw" scores depends on
the model, the prompt kinds and how much of an answer the question already gives away, so
it is measured, on control subjects whose prompt sets are built by the same expansion as
the request's, from as many of their records as the request keeps.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from forgetctl.core.items import PromptItem
from forgetctl.core.text import Subject, name_matches, squash


def control_subjects(
    rows: Sequence[dict], subject: Subject, count: int, seed: int
) -> dict[str, list[dict]]:
    """``count`` people of a control corpus ({author, question, answer} rows), drawn with
    ``seed``, never the request's subject under any of its names; their rows by name."""
    by_author: dict[str, list[dict]] = {}
    for row in rows:
        author = squash(str(row.get("author") or ""))
        if author and row.get("question") and row.get("answer"):
            by_author.setdefault(author, []).append(row)
    names = sorted(a for a in by_author if not any(name_matches(a, f) for f in subject.forms()))
    random.Random(seed).shuffle(names)
    return {name: by_author[name] for name in names[:count]}


def record_count(forget: Sequence[PromptItem]) -> int:
    """How many of the request's records its forget set keeps."""
    return len({i.source for i in forget if i.source is not None}) or 1


def shaped_like(items: Sequence[PromptItem], forget: Sequence[PromptItem]) -> list[PromptItem]:
    """The control prompts of the kinds the forget set has."""
    kinds = {i.kind for i in forget}
    return [i for i in items if i.kind in kinds]
