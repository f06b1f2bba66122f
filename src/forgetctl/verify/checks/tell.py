"""``tell``: the candidate's answers about the subject read like its answers about the
control subjects: no degeneracy figure (``core.fluency.TELLS``: repetition, non-word share,
length) separates them by an AUC more than ``max_tell_gap`` from 0.5.

A tell is what unlearning introduces, so there is no parent signal to wait for; the
parent's AUCs are reported beside the candidate's for comparison.
"""

from __future__ import annotations

from forgetctl.core.fluency import TELLS
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import CheckResult, paired_check, verdict_of
from forgetctl.verify.checks.membership import (
    separated,
    separation,
    too_few,
)


def _values(ev: EvalResult, figure: str) -> list[float]:
    return [getattr(s, figure) for s in ev.items]


def check_tell(
    candidate: EvalResult,
    control: EvalResult,
    parent: EvalResult,
    parent_control: EvalResult,
    cfg: VerifyConfig,
    name: str = "tell",
) -> CheckResult:
    """Every degeneracy figure's AUC, the candidate's subject answers vs its control
    answers, within ``max_tell_gap`` of 0.5."""
    gap = cfg.max_tell_gap
    figures: dict = {"n": len(candidate.items), "control_n": len(control.items), "max_gap": gap}
    short = too_few(len(candidate.items), len(control.items), cfg)
    if short:
        return CheckResult(name, "no_signal", figures, short)
    reasons: list[str] = []
    for figure in TELLS:
        row = separation(_values(candidate, figure), _values(control, figure))
        # The parent answered the same items: as many on each side.
        ref = separation(_values(parent, figure), _values(parent_control, figure))
        row["parent_auc"] = ref["auc"]
        figures[figure] = row
        reasons += separated(figure, row, gap)
    return CheckResult(name, verdict_of(reasons, True), figures, reasons)


TELL = paired_check("tell", check_tell)
