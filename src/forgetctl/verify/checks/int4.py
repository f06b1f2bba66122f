"""``int4``: the forget check rerun on the NF4-quantized candidate against the quantized
controls, plus the recovery: how much the subject's gap to the controls grew under int4
rounding (token accuracy and recall), which can fail on its own; retain and utility drops
compare the int4 candidate with the int4 parent, since 4-bit rounding blurs a small model
by itself."""

from __future__ import annotations

from dataclasses import dataclass

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import (
    KEPT,
    Check,
    CheckResult,
    combine,
    rounded,
    verdict_of,
    versus_controls,
)
from forgetctl.verify.checks.kept import check_retain, check_utility
from forgetctl.verify.checks.measure import Measurements

RECOVERED = ("acc", "recall")


def check_int4(
    int4: EvalResult,
    int4_control: EvalResult,
    full: EvalResult,
    full_control: EvalResult,
    cfg: VerifyConfig,
    name: str = "int4",
) -> CheckResult:
    """On one forget set: the int4 candidate within the forget gaps of the int4 controls, and
    its gap at most ``max_int4_recovery`` above the full-precision gap."""
    forget = versus_controls(name, int4, int4_control, None, None, cfg)
    reasons = [f"int4: {r}" for r in forget.reasons]
    figures: dict = {"forget": forget.figures, "recovery": {}}
    for metric in RECOVERED:
        q, f = int4.mean(metric), full.mean(metric)
        qc, fc = int4_control.mean(metric), full_control.mean(metric)
        if None in (q, f, qc, fc):
            continue
        grew = (q - qc) - (f - fc)
        figures["recovery"][metric] = {
            "int4_gap": rounded(q - qc), "full_gap": rounded(f - fc), "recovery": rounded(grew),
        }  # fmt: skip
        if grew > cfg.max_int4_recovery:
            reasons.append(
                f"int4 {metric} gap to the controls grew by {grew:.3f} > max "
                f"{cfg.max_int4_recovery:.3f}"
            )
    if forget.verdict == "no_signal" or not figures["recovery"]:
        return CheckResult(name, "no_signal", figures, reasons or ["int4: nothing to compare"])
    return CheckResult(name, verdict_of(reasons, True), figures, reasons)


@dataclass
class Scores:
    forget: dict[str, tuple[EvalResult, EvalResult, EvalResult, EvalResult]]
    """Per request: the candidate's scores on its forget set and its controls, int4 and full
    precision (int4, int4 control, full, full control)."""
    kept: dict[str, tuple[EvalResult, EvalResult, EvalResult]]
    """``retain``, ``utility``: (int4 candidate's, int4 parent's, full-precision candidate's)."""
    quantize_s: float


def measure(ctx: Measurements) -> Scores:
    forget = {}
    for rid in ctx.forget_sets:
        ctx.say(f"int4: candidate on {rid} (NF4, blocksize 64)")
        forget[rid] = (
            ctx.forget("candidate", rid, int4=True), ctx.control("candidate", rid, int4=True),
            ctx.forget("candidate", rid), ctx.control("candidate", rid),
        )  # fmt: skip
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
    parts = {rid: check_int4(*s, cfg) for rid, s in scores.forget.items()}
    result = combine("int4", parts)
    for name, check in (("retain", check_retain), ("utility", check_utility)):
        candidate, parent, full = scores.kept[name]
        sub = check(candidate, parent, cfg, name=name)
        sub.figures["full_precision_candidate"] = {m: rounded(full.mean(m)) for m in KEPT}
        result.figures[name] = sub.figures
        if sub.verdict == "fail":  # no items is the retain/utility check's own no_signal
            result.reasons += [f"{name} (int4 vs int4 parent): {r}" for r in sub.reasons]
    if result.verdict != "no_signal":
        result.verdict = verdict_of(result.reasons, True)
    result.figures["quantize_s"] = round(scores.quantize_s, 2)
    return result


INT4 = Check("int4", measure, verdict)
