"""``int4``: the forget check rerun on the NF4-quantized candidate, plus the recovery (int4
recall minus full-precision recall); retain and utility drops compare the int4 candidate
with the int4 parent, since 4-bit rounding blurs a small model by itself."""

from __future__ import annotations

from dataclasses import dataclass

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, combine, recovery, rounded
from forgetctl.verify.checks.forget import check_forget
from forgetctl.verify.checks.kept import check_retain, check_utility
from forgetctl.verify.checks.measure import Measurements


def check_int4(
    int4_forget_eval: EvalResult,
    full_forget_eval: EvalResult,
    cfg: VerifyConfig,
    name: str = "int4",
) -> CheckResult:
    """The int4 candidate on one forget set: still forgotten (forget thresholds), and
    recovery = int4 recall - max(full-precision recall, recall_floor) <= max_int4_recovery."""
    forget = check_forget(int4_forget_eval, None, cfg, name)
    reasons = [f"int4: {r}" for r in forget.reasons]
    # Full-precision figures of the same candidate next to the int4 ones, per kind.
    for kind, row in forget.figures["by_kind"].items():
        full = full_forget_eval.by_kind.get(kind)
        if full is not None:
            row["full_recall"] = rounded(full["recall"])
            row["full_leakage"] = rounded(full["leakage"])
            row["recovery"] = rounded(recovery(full["recall"] or 0.0, row["recall"] or 0.0, cfg))
    figures: dict = {"forget": forget.figures}
    full = full_forget_eval.mean("recall") or 0.0
    int4 = int4_forget_eval.mean("recall") or 0.0
    regained = recovery(full, int4, cfg)
    figures.update(
        full_recall=rounded(full),
        int4_recall=rounded(int4),
        recall_floor=cfg.recall_floor,
        recovery=rounded(regained),
        raw_recovery=rounded(int4 - full),
    )
    leak4, leak = int4_forget_eval.mean("leakage"), full_forget_eval.mean("leakage")
    figures["leakage_recovery"] = (
        rounded(leak4 - leak) if leak4 is not None and leak is not None else None
    )
    if regained > cfg.max_int4_recovery:
        reasons.append(f"int4 recall recovery {regained:.3f} > max {cfg.max_int4_recovery:.3f}")
    return CheckResult(name, not reasons, figures, reasons)


@dataclass
class Scores:
    forget: dict[str, tuple[EvalResult, EvalResult]]
    """Per request: (int4 candidate's, full-precision candidate's) scores on its forget set."""
    kept: dict[str, tuple[EvalResult, EvalResult, EvalResult]]
    """``retain``, ``utility``: (int4 candidate's, int4 parent's, full-precision candidate's)."""
    quantize_s: float


def measure(ctx: Measurements) -> Scores:
    forget = {}
    for rid in ctx.forget_sets:
        ctx.say(f"int4: candidate on {rid} (NF4, blocksize 64)")
        forget[rid] = ctx.forget("candidate", rid, int4=True), ctx.forget("candidate", rid)
    ctx.say("int4: retain and utility, candidate vs parent, both quantized")
    kept = {
        name: (
            ctx.kept("candidate", name, int4=True),
            ctx.kept("parent", name, int4=True),
            ctx.kept("candidate", name),
        )
        for name in ("retain", "utility")
    }
    ctx.release_int4()
    return Scores(forget, kept, ctx.quantize_s)


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    parts = {rid: check_int4(q, full, cfg) for rid, (q, full) in scores.forget.items()}
    result = combine("int4", parts)
    for name, check in (("retain", check_retain), ("utility", check_utility)):
        candidate, parent, full = scores.kept[name]
        sub = check(candidate, parent, cfg, name=name)
        sub.figures["full_precision_candidate_recall"] = rounded(full.mean("recall"))
        result.figures[name] = sub.figures
        result.reasons += [f"{name} (int4 vs int4 parent): {r}" for r in sub.reasons]
    result.passed = not result.reasons
    result.figures["quantize_s"] = round(scores.quantize_s, 2)
    return result


INT4 = Check("int4", measure, verdict)
