"""The verify step bound to the ledger: run the gate on a version, record every check.

The candidate is compared with its parent (production when it was built) and with control
subjects, people the model never saw. The forget sets are the planned prompt sets of the
requests the version covers, each with the control subjects' prompt sets its plan built;
the retain side is the held-out part of their neighbor and general items (the adapter
trained on the other part); regression covers every request forgotten earlier in the
lineage whose prompt set is still readable (a purged request keeps only its evidence),
against its own controls. The thresholds are the strictest of the version's policies.

Scores are cached per model and item (``store.scores``): a retry's parent, or a promoted
candidate that becomes the next request's parent, is not asked the same questions again.

Verdict: any check that ran and did not pass (failed, or had no signal: no evidence to
judge, which is never a pass) rejects the version; when every check its policies make
mandatory has passed, it is verified; otherwise it stays a candidate with checks to run.
"""

from __future__ import annotations

from collections.abc import Collection

from forgetctl.app import versions
from forgetctl.app.plan_step import load_plan
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import BadInput, InvalidState
from forgetctl.core.items import PromptItem
from forgetctl.core.lifecycle import JUDGED_STATUSES
from forgetctl.core.progress import Progress, silent
from forgetctl.store.scores import ScoreCache
from forgetctl.verify.checks import CheckResult, ForgetSet, in_formats, run_checks


def _dedupe(items: list[PromptItem]) -> list[PromptItem]:
    return list({(i.prompt, i.target): i for i in items}.values())


OPTIONAL = ("int4", "relearn")
"""The checks a run may leave out (``--skip``, with a reason): the two that cost most."""


def verify_version(
    ws: Workspace,
    version_id: int,
    *,
    add: Collection[str] = (),
    skip: Collection[str] = (),
    reason: str | None = None,
    progress: Progress = silent,
) -> tuple[str, list[CheckResult]]:
    """Run the checks the version's policies make mandatory, plus ``add``, less ``skip``
    (which needs a ``reason``, recorded); record them and set the version's status.
    Returns (status, results)."""
    ledger, keys = ws.ledger, ws.keys
    version = ledger.versions.get(version_id)
    if version["kind"] not in ("adapter", "consolidated") or (
        version["status"] not in JUDGED_STATUSES
    ):
        raise InvalidState(f"version {version_id} is a {version['status']} {version['kind']}")
    if unknown := sorted(set(skip) - set(OPTIONAL)):
        raise BadInput(f"--skip {unknown[0]}: only {' and '.join(OPTIONAL)} can be skipped")
    if skip and not (reason and reason.strip()):
        raise BadInput("--skip needs --reason")
    rules = ws.resolved(version)
    checks = rules.checks_to_run(add, skip)
    if skipped := sorted(rules.mandatory & set(skip)):
        ledger.append_event("verification.skipped", version_id=version_id, checks=skipped,
                            reason=reason)  # fmt: skip
    # A consolidated model is judged against the registered deployed model, which knew
    # every subject it covers (production has forgotten them already: it would show no
    # signal), and it covers them all itself: no earlier request to regress. A purged
    # request's prompt set is gone: its rows were still left out by blind index.
    consolidated = version["kind"] == "consolidated"
    plans = {}
    for rid in version["requests"]:
        try:
            plans[rid] = load_plan(ws, rid)
        except InvalidState:
            if not consolidated:
                raise
            ledger.append_event("verification.forget_skipped", request_id=rid,
                                version_id=version_id, reason="prompt set purged")  # fmt: skip
    reference = versions.BASE_VERSION if consolidated else version["parent"]
    parent_model, tokenizer = versions.load_version(ws, reference)
    served = versions.serving_formats(ledger, tokenizer)
    forget_sets = in_formats(
        {str(rid): ForgetSet(p.forget, p.control) for rid, p in plans.items()}, tokenizer, served
    )
    held_out = [i for p in plans.values() for i in p.split_retain()[1]]  # unseen in training
    retain = _dedupe([i for i in held_out if i.kind != "general"])
    general = _dedupe([i for i in held_out if i.kind == "general"])
    earlier: dict[str, ForgetSet] = {}
    for rid in [] if consolidated else ledger.versions.forgotten_requests(version["parent"]):
        try:
            plan = load_plan(ws, rid)
            earlier[str(rid)] = ForgetSet(plan.forget, plan.control)
        except InvalidState:
            ledger.append_event("verification.regression_skipped", request_id=rid,
                                version_id=version_id, reason="prompt set purged")  # fmt: skip
    earlier = in_formats(earlier, tokenizer, served, held_out=False)
    cfg = rules.verify
    candidate_model, _ = versions.load_version(ws, version_id)
    results = run_checks(
        parent_model, candidate_model, tokenizer, forget_sets, retain, general, earlier, cfg,
        checks=checks, progress=progress,
        cache=ScoreCache(ws.home.cache / "scores.sqlite", keys.keyed_hash),
        model_keys=(versions.version_key(ledger, reference),
                    versions.version_key(ledger, version_id)),
    )  # fmt: skip
    with ledger.transaction():
        for r in results:
            ledger.verifications.add(version_id, r.name, r.verdict, r.figures, r.reasons)
        verdicts = ledger.verifications.verdicts(version_id)
        needed = rules.mandatory
        if not all(verdicts.values()):
            status = "rejected"
        elif needed <= verdicts.keys():
            status = "verified"
        else:
            status = "candidate"
        if status != version["status"]:
            failed = sorted(k for k, ok in verdicts.items() if not ok)
            ledger.versions.set_status(version_id, status, failed=failed,
                                       missing=sorted(needed - verdicts.keys()))  # fmt: skip
        if status == "verified":
            for rid in version["requests"]:
                if ledger.requests.get(rid)["status"] == "applied":
                    ledger.requests.set_status(rid, "verified", version=version_id)
    return status, results
