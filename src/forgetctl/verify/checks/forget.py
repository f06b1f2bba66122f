"""``forget``: on every prompt kind of every covered request, the candidate's answer recall
and key-fact leakage are at or under the thresholds (parent figures alongside)."""

from __future__ import annotations

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, combine, rounded
from forgetctl.verify.checks.measure import Measurements


def check_forget(
    candidate_eval: EvalResult,
    parent_eval: EvalResult | None,
    cfg: VerifyConfig,
    name: str = "forget",
) -> CheckResult:
    """Per prompt kind: recall <= max_forget_recall and key-fact leakage <= max_key_fact_leakage."""
    figures: dict = {"by_kind": {}, "overall": {}}
    reasons: list[str] = []
    if not candidate_eval.items:
        return CheckResult(name, False, figures, ["no forget items to check"])
    for kind, summary in candidate_eval.by_kind.items():
        row = {
            "n": summary["n"],
            "recall": rounded(summary["recall"]),
            "leakage": rounded(summary["leakage"]),
            "prob": rounded(summary["prob"]),
        }
        if parent_eval is not None and kind in parent_eval.by_kind:
            row["parent_recall"] = rounded(parent_eval.by_kind[kind]["recall"])
            row["parent_leakage"] = rounded(parent_eval.by_kind[kind]["leakage"])
        figures["by_kind"][kind] = row
        recall, leakage = summary["recall"], summary["leakage"]
        if recall is not None and recall > cfg.max_forget_recall:
            reasons.append(f"{kind}: recall {recall:.3f} > max {cfg.max_forget_recall:.3f}")
        if leakage is not None and leakage > cfg.max_key_fact_leakage:
            reasons.append(
                f"{kind}: key-fact leakage {leakage:.3f} > max {cfg.max_key_fact_leakage:.3f}"
            )
    figures["overall"] = {
        "n": candidate_eval.overall["n"],
        "recall": rounded(candidate_eval.overall["recall"]),
        "leakage": rounded(candidate_eval.overall["leakage"]),
        "prob": rounded(candidate_eval.overall["prob"]),
    }
    if parent_eval is not None:
        figures["overall"]["parent_recall"] = rounded(parent_eval.overall["recall"])
        figures["overall"]["parent_leakage"] = rounded(parent_eval.overall["leakage"])
    return CheckResult(name, not reasons, figures, reasons)


Scores = dict[str, tuple[EvalResult, EvalResult]]
"""Per request: (candidate's, parent's) scores on its forget set."""


def measure(ctx: Measurements) -> Scores:
    out = {}
    for rid, items in ctx.forget_sets.items():
        ctx.say(f"forget: candidate on {rid} ({len(items)} items)")
        candidate = ctx.forget("candidate", rid)
        ctx.say(f"forget: parent on {rid}")
        out[rid] = candidate, ctx.forget("parent", rid)
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    return combine("forget", {rid: check_forget(c, p, cfg) for rid, (c, p) in scores.items()})


FORGET = Check("forget", measure, verdict)
