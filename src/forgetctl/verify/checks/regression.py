"""``regression``: the forget sets of requests handled earlier in the lineage stay forgotten.

Each earlier set is judged on a sample (spread over kinds, drawn per candidate) when the
sample clears the thresholds by its sampling error, on the whole set otherwise, so that a
set near its limits is judged on every item, as without sampling.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping

from forgetctl.core.items import sample_by_kind
from forgetctl.core.policy import VerifyConfig
from forgetctl.lm.evaluate import EvalResult
from forgetctl.verify.checks.base import Check, CheckResult, combine
from forgetctl.verify.checks.forget import check_forget
from forgetctl.verify.checks.measure import Measurements

Z_99 = 2.326
"""One-sided 99% normal quantile: the bound a sample must clear to pass on its own."""


def clearly_forgotten(sample: EvalResult, kind_sizes: Mapping[str, int], cfg: VerifyConfig) -> bool:
    """Whether a sample of a forget set passes the forget thresholds with room to spare: for
    every kind, the sample mean of recall and of leakage plus ``Z_99`` standard errors
    (corrected for sampling without replacement from ``kind_sizes[kind]`` items) is at or
    under its limit. A kind sampled once, or not at all, is never clear."""
    for kind, size in kind_sizes.items():
        scores = [s for s in sample.items if s.kind == kind]
        for metric, limit in (
            ("recall", cfg.max_forget_recall),
            ("leakage", cfg.max_key_fact_leakage),
        ):
            values = [v for s in scores if (v := getattr(s, metric)) is not None]
            if metric == "leakage" and not values and scores:
                continue  # no key facts in these targets: nothing can leak
            n = len(values)
            if n < 2 and n < size:
                return False
            spread = statistics.stdev(values) if n >= 2 else 0.0
            shrink = math.sqrt((size - n) / (size - 1)) if size > 1 else 0.0
            if sum(values) / n + Z_99 * spread / math.sqrt(n) * shrink > limit:
                return False
    return True


def check_regression(
    earlier_evals: Mapping[str, EvalResult], cfg: VerifyConfig, name: str = "regression"
) -> CheckResult:
    """Every earlier request's forget set still passes the forget thresholds."""
    if not earlier_evals:
        return CheckResult(name, True, {"requests": {}, "note": "no earlier requests"}, [])
    parts = {rid: check_forget(ev, None, cfg, name) for rid, ev in earlier_evals.items()}
    return combine(name, parts)


Scores = dict[str, tuple[EvalResult, int]]
"""Per earlier request: the candidate's scores on the items answered, and the set's size."""


def measure(ctx: Measurements) -> Scores:
    # Drawn from the candidate's key: the same sample when the same weights are re-verified,
    # other items for the next version.
    sample_seed = f"/{ctx.model_keys[1]}" if ctx.model_keys else "/"
    out = {}
    for rid, items in ctx.earlier.items():
        cap = ctx.cfg.regression_items or len(items)
        sample = sample_by_kind(items, cap, seed=rid + sample_seed)
        ctx.say(f"regression: candidate on request {rid} ({len(sample)} of {len(items)} items)")
        scores = ctx.scores("candidate", f"regression/{rid}", sample)
        if len(sample) < len(items) and not clearly_forgotten(
            scores, Counter(i.kind for i in items), ctx.cfg
        ):
            ctx.say(f"regression: not clear on the sample; candidate on the rest of {rid}")
            chosen = {id(i) for i in sample}
            rest = [i for i in items if id(i) not in chosen]
            rest_scores = ctx.scores("candidate", f"regression/{rid}/rest", rest)
            scores = EvalResult(scores.items + rest_scores.items)
        out[rid] = scores, len(items)
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    result = check_regression({rid: ev for rid, (ev, _) in scores.items()}, cfg)
    if scores:  # {request: [items answered, items in set]}
        result.figures["answered"] = {rid: [len(ev.items), n] for rid, (ev, n) in scores.items()}
    return result


REGRESSION = Check("regression", measure, verdict)
