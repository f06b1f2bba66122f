"""``retain`` and ``utility``: knowledge kept, the drop in token accuracy and answer recall
(parent minus candidate, :func:`.base.check_drop`) on the held-out neighbor set and on the
held-out general-knowledge set.

The two are one measurement on two item sets, each with its own limit in the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, check_drop
from forgetctl.verify.checks.measure import Measurements


def _drop_check(name: str, limit: str) -> Callable[..., CheckResult]:
    def check(
        candidate_eval: EvalResult,
        parent_eval: EvalResult,
        cfg: VerifyConfig,
        kinds: Sequence[str] | None = None,
        name: str = name,
    ) -> CheckResult:
        return check_drop(name, candidate_eval, parent_eval, getattr(cfg, limit), kinds,
                          min_items=getattr(cfg, f"min_{name}_items"))  # fmt: skip

    check.__doc__ = (
        f"Knowledge kept: the token accuracy drop <= {limit}, bounded on min_{name}_items "
        "items or more; the recall drop <= it too."
    )
    return check


check_retain = _drop_check("retain", "max_retain_drop")
"""Neighbor knowledge kept."""
check_utility = _drop_check("utility", "max_utility_drop")
"""General knowledge kept."""


def _kept(name: str, verdict) -> Check:
    def measure(ctx: Measurements) -> tuple[EvalResult, EvalResult]:
        items = ctx.retain if name == "retain" else ctx.general
        ctx.say(f"{name}: candidate and parent on {len(items)} items")
        return ctx.kept("candidate", name), ctx.kept("parent", name)

    return Check(name, measure, lambda scores, cfg: verdict(*scores, cfg))


RETAIN = _kept("retain", check_retain)
UTILITY = _kept("utility", check_utility)
