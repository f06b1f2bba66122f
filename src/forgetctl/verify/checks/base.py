"""What every check is made of, and the figures helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

from forgetctl.core.policy import CheckName, VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.measure import Measurements


@dataclass
class CheckResult:
    name: str
    passed: bool
    figures: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    """Why it failed (empty when it passed)."""

    def to_dict(self) -> dict:
        return asdict(self)


Measured = TypeVar("Measured")


@dataclass(frozen=True)
class Check(Generic[Measured]):
    """One check of the gate: ``run_checks`` calls ``verdict(measure(context), cfg)``."""

    name: CheckName
    measure: Callable[[Measurements], Measured]
    """Gathers the scores the check needs from the shared context (which measures each once)."""
    verdict: Callable[[Measured, VerifyConfig], CheckResult]
    """Pure: the measured scores and the policy's thresholds in, the result out."""


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def combine(name: str, parts: Mapping[str, CheckResult]) -> CheckResult:
    """One check over several requests: passes when every request passes."""
    return CheckResult(
        name=name,
        passed=all(p.passed for p in parts.values()),
        figures={"requests": {rid: p.figures for rid, p in parts.items()}},
        reasons=[f"{rid}: {reason}" for rid, p in parts.items() for reason in p.reasons],
    )


def recovery(before: float, after: float, cfg: VerifyConfig) -> float:
    """Recall regained, counted from the never-seen level at the lowest.

    A model that never saw the subject still reaches ``recall_floor`` on its questions
    (template words: "X was born in ..."). Unlearning often pushes recall below that
    (garbled answers); int4 rounding or a relearning attack that only restores fluent
    answers brings it back to the floor, which is no knowledge regained.
    """
    return after - max(before, cfg.recall_floor)


def check_drop(
    name: str,
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    max_drop: float,
    kinds: Sequence[str] | None,
) -> CheckResult:
    """Knowledge kept: the drop in recall, parent minus candidate, is at most ``max_drop``."""
    cand = candidate_eval.only(kinds) if kinds is not None else candidate_eval
    par = parent_eval.only(kinds) if kinds is not None else parent_eval
    c, p = cand.mean("recall"), par.mean("recall")
    figures: dict = {"n": len(cand.items), "max_drop": max_drop}
    if c is None or p is None:
        figures["note"] = "no items to compare"
        return CheckResult(name, True, figures, [])
    drop = p - c
    figures.update(
        parent_recall=rounded(p),
        candidate_recall=rounded(c),
        drop=rounded(drop),
        relative=rounded(c / p) if p > 0 else None,
        parent_prob=rounded(par.mean("prob")),
        candidate_prob=rounded(cand.mean("prob")),
    )
    reasons = [] if drop <= max_drop else [f"recall drop {drop:.3f} > max {max_drop:.3f}"]
    return CheckResult(name, not reasons, figures, reasons)
