"""``regression``: the forget sets of requests handled earlier in the lineage stay forgotten.

Each earlier set is compared with its own control subjects, as the forget check did when
that request was verified, on a sample (spread over kinds, drawn per candidate) when the
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
from forgetctl.verify.checks.base import GAPS, Check, CheckResult, combine, versus_controls
from forgetctl.verify.checks.measure import Measurements

Z_99 = 2.326
"""One-sided 99% normal quantile: the bound a sample must clear to pass on its own."""


def clearly_forgotten(
    sample: EvalResult, kind_sizes: Mapping[str, int], control: EvalResult, cfg: VerifyConfig
) -> bool:
    """Whether a sample of a forget set passes the forget check with room to spare: for
    every kind, the sample mean of each compared figure plus ``Z_99`` standard errors
    (corrected for sampling without replacement from ``kind_sizes[kind]`` items) is at or
    under the controls' mean plus its gap limit. A kind sampled once, or not at all, is
    never clear."""
    for kind, size in kind_sizes.items():
        scores = [s for s in sample.items if s.kind == kind]
        same = control.only([kind])
        reference = same if same.items else control
        for metric, limit in GAPS:
            values = [v for s in scores if (v := getattr(s, metric)) is not None]
            if not values and scores:
                continue  # not measured here (targets without key facts: nothing can leak)
            n = len(values)
            if n < 2 and n < size:
                return False
            spread = statistics.stdev(values) if n >= 2 else 0.0
            shrink = math.sqrt((size - n) / (size - 1)) if size > 1 else 0.0
            bound = (reference.mean(metric) or 0.0) + getattr(cfg, limit)
            if sum(values) / n + Z_99 * spread / math.sqrt(n) * shrink > bound:
                return False
    return True


def check_regression(
    earlier: Mapping[str, tuple[EvalResult, EvalResult]],
    cfg: VerifyConfig,
    name: str = "regression",
) -> CheckResult:
    """Every earlier request's subject still scores like its controls. With no earlier
    request there is nothing that could have come back: a pass that says so."""
    if not earlier:
        return CheckResult(name, "pass", {"requests": {}, "note": "no earlier requests"}, [])
    parts = {
        rid: versus_controls(name, ev, control, None, None, cfg)
        for rid, (ev, control) in earlier.items()
    }
    return combine(name, parts)


Scores = dict[str, tuple[EvalResult, EvalResult, int]]
"""Per earlier request: the candidate's scores on the items answered and on the request's
control prompts, and the set's size."""


def measure(ctx: Measurements) -> Scores:
    # Drawn from the candidate's key: the same sample when the same weights are re-verified,
    # other items for the next version.
    sample_seed = f"/{ctx.model_keys[1]}" if ctx.model_keys else "/"
    out = {}
    for rid, sets in ctx.earlier.items():
        items = sets.items
        cap = ctx.cfg.regression_items or len(items)
        sample = sample_by_kind(items, cap, seed=rid + sample_seed)
        ctx.say(f"regression: candidate on request {rid} ({len(sample)} of {len(items)} items)")
        scores = ctx.scores("candidate", f"regression/{rid}", sample)
        control = ctx.scores("candidate", f"regression/{rid}/control", sets.control_items)
        if len(sample) < len(items) and not clearly_forgotten(
            scores, Counter(i.kind for i in items), control, ctx.cfg
        ):
            ctx.say(f"regression: not clear on the sample; candidate on the rest of {rid}")
            chosen = {id(i) for i in sample}
            rest = [i for i in items if id(i) not in chosen]
            rest_scores = ctx.scores("candidate", f"regression/{rid}/rest", rest)
            scores = EvalResult(scores.items + rest_scores.items)
        out[rid] = scores, control, len(items)
    return out


def verdict(scores: Scores, cfg: VerifyConfig) -> CheckResult:
    result = check_regression({rid: (ev, c) for rid, (ev, c, _) in scores.items()}, cfg)
    if scores:  # {request: [items answered, items in set]}
        result.figures["answered"] = {rid: [len(ev.items), n] for rid, (ev, _, n) in scores.items()}
    return result


REGRESSION = Check("regression", measure, verdict)
