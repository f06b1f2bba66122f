"""The measurement context the checks share: every score is measured once per run.

The int4 check reuses the full-precision scores of the forget, retain and utility checks,
and the relearning attack starts from the forget check's candidate scores, so scores are
kept per (model, item set, precision) and a second request for them costs nothing.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from forgetctl.core.formats import HELD_OUT
from forgetctl.core.items import PromptItem, in_format
from forgetctl.core.policy import VerifyConfig
from forgetctl.core.progress import Progress
from forgetctl.lm.evaluate import EvalResult, ScoreStore, evaluate, evaluate_cached
from forgetctl.lm.int4 import quantize_model_int4
from forgetctl.lm.prompts import formats_of, item_format

Role = Literal["parent", "candidate"]


@dataclass(frozen=True)
class ForgetSet:
    """One request's forget prompts and its control subjects' prompts (built alike).

    Only the kinds the controls have are judged (``items``): a kind whose targets are the
    parent's own answers (attribute questions) has no control, since the parent predicts
    its own greedy answer about anyone, and held against other kinds' controls it fails a
    model that never saw the subject. The apply step still trains on every planned kind.
    """

    planned: list[PromptItem]
    control: Mapping[str, list[PromptItem]] = field(default_factory=dict)
    format: str | None = None
    """The prompt format every item is put in (None: the model's default)."""

    def in_format(self, fmt: str | None) -> ForgetSet:
        """Subject and controls alike in prompt format ``fmt``."""
        control = {name: in_format(items, fmt) for name, items in self.control.items()}
        return ForgetSet(in_format(self.planned, fmt), control, fmt)

    @cached_property
    def control_items(self) -> list[PromptItem]:
        """Every control subject's prompts, pooled in name order (the relearning check
        lines up its attacks on each control with this order)."""
        return [i for name in sorted(self.control) for i in self.control[name]]

    @cached_property
    def control_kinds(self) -> set[str]:
        return {i.kind for i in self.control_items}

    @cached_property
    def items(self) -> list[PromptItem]:
        """The planned prompts of the kinds the controls have (all of them without controls,
        which the checks report as missing evidence)."""
        kinds = self.control_kinds
        return [i for i in self.planned if i.kind in kinds] if kinds else list(self.planned)

    @property
    def uncompared(self) -> dict[str, int]:
        """Planned prompts per kind the controls lack, which no check judges."""
        kinds = self.control_kinds
        return dict(Counter(i.kind for i in self.planned if kinds and i.kind not in kinds))


def in_formats(
    sets: Mapping[str, ForgetSet], tokenizer: Any, served: Sequence[str], held_out: bool = True
) -> dict[str, ForgetSet]:
    """Each request's set in every ``served`` format and, with ``held_out``, in the held-out
    wrappers (:data:`forgetctl.core.formats.HELD_OUT`) the tokenizer can render: keyed by
    the request in the model's default format (its items' format stays None) and
    "<request> [<format>]" in the others, so every check judges each format on its own."""
    names = dict.fromkeys([*served, *(formats_of(tokenizer, HELD_OUT) if held_out else [])])
    return {
        rid if (f := item_format(tokenizer, fmt)) is None else f"{rid} [{fmt}]": fs.in_format(f)
        for rid, fs in sets.items()
        for fmt in names
    }


def request_of(key: str) -> str:
    """The request a key of :func:`in_formats` belongs to."""
    return key.split(" [", 1)[0]


@dataclass
class Measurements:
    """What a verification run measures: two models, the item sets, and their scores."""

    parent_model: object
    candidate_model: object
    tokenizer: object
    forget_sets: Mapping[str, ForgetSet]
    retain: list[PromptItem]
    general: list[PromptItem]
    earlier: Mapping[str, ForgetSet]
    cfg: VerifyConfig
    say: Progress
    seed: int = 0
    cache: ScoreStore | None = None
    model_keys: tuple[str, str] | None = None
    """(parent's, candidate's) score-cache keys; with ``cache``, scores persist across runs."""
    quantize_s: float = 0.0
    """Seconds spent quantizing so far."""
    _int4_models: dict[Role, object] = field(default_factory=dict)
    _scores: dict[tuple[Role, str, bool], EvalResult] = field(default_factory=dict)

    def model(self, role: Role) -> object:
        return self.candidate_model if role == "candidate" else self.parent_model

    def quantized(self, role: Role) -> object:
        """The NF4 copy of a model, made on first use: a model whose int4 scores are all
        cached never is quantized."""
        if role not in self._int4_models:
            start = time.perf_counter()
            self._int4_models[role] = quantize_model_int4(self.model(role))
            self.quantize_s += time.perf_counter() - start
        return self._int4_models[role]

    def release_int4(self) -> None:
        """Drop the quantized copies (two more models in memory for the later checks)."""
        self._int4_models.clear()
        gc.collect()

    def scores(
        self, role: Role, name: str, items: list[PromptItem], int4: bool = False
    ) -> EvalResult:
        """The parent's or the candidate's scores on ``items``, full precision or int4;
        ``name`` identifies the item set within the run (one name, one list of items)."""
        key = (role, name, int4)
        if key not in self._scores:
            self._scores[key] = self._measure(role, items, int4)
        return self._scores[key]

    def forget(self, role: Role, rid: str, int4: bool = False) -> EvalResult:
        """Scores on request ``rid``'s forget set (the forget, int4 and relearn checks share
        them)."""
        return self.scores(role, f"forget/{rid}", self.forget_sets[rid].items, int4)

    def control(self, role: Role, rid: str, int4: bool = False) -> EvalResult:
        """Scores on request ``rid``'s control subjects' prompts, pooled."""
        return self.scores(role, f"control/{rid}", self.forget_sets[rid].control_items, int4)

    def versus_controls(self, label: str) -> dict[str, tuple[EvalResult, ...]]:
        """Per request: the candidate's and the parent's scores on the subject's and the
        controls' prompts (candidate, control, parent, parent control), which the forget,
        membership and tell checks share."""
        out = {}
        for rid, sets in self.forget_sets.items():
            skipped = "".join(f", {n} {kind} not compared (no control of that kind)"
                              for kind, n in sets.uncompared.items())  # fmt: skip
            self.say(f"{label}: candidate and parent on {rid} ({len(sets.items)} items, "
                     f"{len(sets.control_items)} control items{skipped})")  # fmt: skip
            out[rid] = (
                self.forget("candidate", rid), self.control("candidate", rid),
                self.forget("parent", rid), self.control("parent", rid),
            )  # fmt: skip
        return out

    def kept(
        self, role: Role, name: Literal["retain", "utility"], int4: bool = False
    ) -> EvalResult:
        """Scores on the neighbor set (``retain``) or the general-knowledge set (``utility``);
        the int4 check reuses the full-precision ones."""
        return self.scores(role, name, self.retain if name == "retain" else self.general, int4)

    def _measure(self, role: Role, items: list[PromptItem], int4: bool) -> EvalResult:
        def load():
            return self.quantized(role) if int4 else self.model(role)

        if self.cache is None or self.model_keys is None:
            return evaluate(load(), self.tokenizer, items, progress=self.say)
        key = self.model_keys[role == "candidate"] + ("/nf4" if int4 else "")
        return evaluate_cached(self.cache, key, load, self.tokenizer, items, progress=self.say)
