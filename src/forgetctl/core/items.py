"""The unit every pipeline step works on: a prompt with its target answer and its kind."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from forgetctl.core.formats import MIN_COMPLETION_WORDS
from forgetctl.core.text import split_continuation

ForgetKind = Literal["record", "attribute", "paraphrase", "indirect", "adversarial"]


RetainKind = Literal["neighbor", "general"]


FORGET_KINDS: tuple[str, ...] = ("record", "attribute", "paraphrase", "indirect", "adversarial")


class PromptItem(BaseModel):
    prompt: str
    """The question as put to the model (without chat formatting)."""
    target: str
    """The answer that reveals the data (forget side) or must be kept (retain side)."""
    kind: str
    source: int | None = None
    """Index of the request record this item was derived from, when there is one."""
    format: str | None = None
    """The prompt format it is put to the model in (:mod:`forgetctl.core.formats`); None:
    the model's default."""

    @property
    def pair(self) -> tuple[str, str, str | None]:
        """(question, answer, format), what the model layer trains and scores on."""
        return self.prompt, self.target, self.format


class PromptSet(BaseModel):
    """The output of the plan step, stored encrypted with the request's payload key."""

    forget: list[PromptItem]
    retain: list[PromptItem]
    dropped: list[dict] = []
    """What filtering removed and why: {prompt, kind, reason, figure}."""
    probe: dict = {}
    """Memorisation-probe evidence: counts and mean recall before filtering."""
    control: dict[str, list[PromptItem]] = {}
    """Per control subject (a person the model never saw), prompts built from their records
    the way ``forget`` was built from the request's: what the gate compares the subject with."""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in [*self.forget, *self.retain]:
            out[item.kind] = out.get(item.kind, 0) + 1
        if self.control:
            out["control"] = sum(map(len, self.control.values()))
        return out

    def split_retain(self) -> tuple[list[PromptItem], list[PromptItem]]:
        """``retain`` as (train, held_out): the retain term trains on the first, the retain
        and utility checks judge the second, which the adapter never saw. Decided per item
        (:func:`trains_retain`), so the stored form needs no field and old plans split too."""
        train = [item for item in self.retain if trains_retain(item)]
        return train, [item for item in self.retain if not trains_retain(item)]


def in_format(items: Sequence[PromptItem], fmt: str | None) -> list[PromptItem]:
    """The same items, put to the model in prompt format ``fmt``. In ``completion`` there is
    no question: each record whose answer is long enough becomes its answer's prefix and
    continuation, and the other kinds (questions about the subject) have no such form."""
    if fmt != "completion":
        return [i.model_copy(update={"format": fmt}) for i in items]
    out = []
    for i in items:
        if i.kind == "record" and len(i.target.split()) >= MIN_COMPLETION_WORDS:
            prefix, rest = split_continuation(i.target)
            out.append(i.model_copy(update={"prompt": prefix, "target": rest, "format": fmt}))
    return out


def in_each_format(items: Sequence[PromptItem], fmts: Sequence[str | None]) -> list[PromptItem]:
    """Every item in every format of ``fmts`` (format by format)."""
    return [i for fmt in fmts for i in in_format(items, fmt)]


def trains_retain(item: PromptItem) -> bool:
    """Whether a retain item is on the training side: the first byte of the sha256 of its
    prompt and target is under 128. A function of the item alone, so an item stays on its
    side whatever else is in the set (a larger general set moves no item)."""
    return hashlib.sha256(f"{item.prompt}\0{item.target}".encode()).digest()[0] < 128


def sample_by_kind(items: Sequence[PromptItem], cap: int, seed: int | str) -> list[PromptItem]:
    """At most ``cap`` items, spread evenly over kinds: a seeded shuffle per kind, then
    one item of each kind in turn. All of them when there are at most ``cap``."""
    if len(items) <= cap:
        return list(items)
    rng = random.Random(seed)
    by_kind: dict[str, list[PromptItem]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    pools = [by_kind[k] for k in sorted(by_kind)]
    for pool in pools:
        rng.shuffle(pool)
    out: list[PromptItem] = []
    while len(out) < cap:
        for pool in pools:
            if pool and len(out) < cap:
                out.append(pool.pop())
    return out
