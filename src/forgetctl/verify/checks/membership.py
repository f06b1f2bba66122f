"""``membership``: a membership-inference attack (MUSE's PrivLeak) cannot tell the subject's
items from the control subjects'.

The attack scores each item with Min-K%++ (higher: looks more like training data) and is
measured by its AUC, the chance that a subject's item scores above a control's: 0.5 when
the subject looks as unseen as the controls. The check has signal only where the parent's
AUC shows there was membership to remove.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import CheckResult, paired_check, rounded, verdict_of


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """The chance that a random positive scores higher than a random negative, ties counting
    half (the Mann-Whitney U statistic over ``len(positives) * len(negatives)``); both must
    be non-empty."""
    if not positives or not negatives:
        raise ValueError("an AUC needs at least one positive and one negative")
    ranked = sorted(negatives)
    wins = sum(bisect_left(ranked, p) + (bisect_right(ranked, p) - bisect_left(ranked, p)) / 2
               for p in positives)  # fmt: skip
    return wins / (len(positives) * len(ranked))


def too_few(n: int, control_n: int, cfg: VerifyConfig) -> list[str]:
    """Why an AUC on ``n`` subject and ``control_n`` control items says nothing (no reason
    when both have at least ``2 * min_kind_items``)."""
    if min(n, control_n) >= 2 * cfg.min_kind_items:
        return []
    return [f"too few items: an AUC on {n} and {control_n} items cannot tell "
            f"(at least {2 * cfg.min_kind_items} each)"]  # fmt: skip


def separation(subject: Sequence[float], control: Sequence[float]) -> dict:
    """The subject's and the controls' means of a figure and the AUC separating them."""
    return {
        "subject": rounded(sum(subject) / len(subject)),
        "control": rounded(sum(control) / len(control)),
        "auc": rounded(auc(subject, control)),
    }


def separated(label: str, row: dict, max_gap: float) -> list[str]:
    """Why ``row`` (a :func:`separation`) tells the subject from the controls: its AUC is
    more than ``max_gap`` from 0.5 (no reason when it is not)."""
    if abs(row["auc"] - 0.5) <= max_gap:
        return []
    side = ">" if row["auc"] > 0.5 else "<"
    return [f"{label}: subject {row['subject']:.2f} vs controls {row['control']:.2f}, "
            f"AUC {row['auc']:.2f} {side} 0.5 +/- {max_gap:.2f}"]  # fmt: skip


def _mink(ev: EvalResult) -> list[float]:
    return [s.mink for s in ev.items if s.mink is not None]


def check_membership(
    candidate: EvalResult,
    control: EvalResult,
    parent: EvalResult,
    parent_control: EvalResult,
    cfg: VerifyConfig,
    name: str = "membership",
) -> CheckResult:
    """The candidate's Min-K%++ AUC, subject vs controls, within ``max_membership_gap`` of
    0.5, where the parent's AUC exceeded 0.5 by more than that."""
    gap = cfg.max_membership_gap
    subject, controls = _mink(candidate), _mink(control)
    p_subject, p_controls = _mink(parent), _mink(parent_control)
    figures: dict = {"n": len(subject), "control_n": len(controls), "max_gap": gap}
    short = too_few(len(subject), len(controls), cfg) or too_few(
        len(p_subject), len(p_controls), cfg
    )
    if short:
        return CheckResult(name, "no_signal", figures, short)
    row, ref = separation(subject, controls), separation(p_subject, p_controls)
    figures.update(
        auc=row["auc"], parent_auc=ref["auc"],
        subject_mink=row["subject"], control_mink=row["control"],
        parent_subject_mink=ref["subject"], parent_control_mink=ref["control"],
    )  # fmt: skip
    if ref["auc"] <= 0.5 + gap:
        return CheckResult(name, "no_signal", figures, [
            f"no signal: the parent's Min-K%++ AUC {ref['auc']:.2f} <= 0.5 + {gap:.2f}, it "
            "did not tell the subject from the controls (no membership to remove)"
        ])  # fmt: skip
    reasons = separated("Min-K%++", row, gap)
    return CheckResult(name, verdict_of(reasons, True), figures, reasons)


MEMBERSHIP = paired_check("membership", check_membership)
