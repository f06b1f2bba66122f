"""``retain``: the drop in answer recall, parent minus candidate, on the neighbor set."""

from __future__ import annotations

from collections.abc import Sequence

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, check_drop
from forgetctl.verify.checks.measure import Measurements


def check_retain(
    candidate_eval: EvalResult,
    parent_eval: EvalResult,
    cfg: VerifyConfig,
    kinds: Sequence[str] | None = None,
    name: str = "retain",
) -> CheckResult:
    """Neighbor knowledge kept: parent recall - candidate recall <= max_retain_drop."""
    return check_drop(name, candidate_eval, parent_eval, cfg.max_retain_drop, kinds)


def measure(ctx: Measurements) -> tuple[EvalResult, EvalResult]:
    ctx.say(f"retain: candidate and parent on {len(ctx.retain)} items")
    return ctx.kept("candidate", "retain"), ctx.kept("parent", "retain")


def verdict(scores: tuple[EvalResult, EvalResult], cfg: VerifyConfig) -> CheckResult:
    return check_retain(*scores, cfg)


RETAIN = Check("retain", measure, verdict)
