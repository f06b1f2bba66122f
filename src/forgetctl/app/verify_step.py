"""The verify step bound to the ledger: run the gate on a version, record every check.

The candidate is compared with its parent (production when it was built). The forget
sets are the planned prompt sets of the requests the version covers; the retain side is
their neighbor and general items; regression covers every request forgotten earlier in the
lineage whose prompt set is still readable (a purged request keeps only its evidence).

Scores are cached per model and item (``verify.scores``): a retry's parent, or a promoted
candidate that becomes the next request's parent, is not asked the same questions again.

Verdict: any check that ran and failed rejects the version; when every check its policies
make mandatory has passed, it is verified; otherwise it stays a candidate with checks to run.
"""

from __future__ import annotations

from collections.abc import Callable

from forgetctl.app import versions
from forgetctl.app.home import Home
from forgetctl.app.plan_step import load_plan
from forgetctl.core.errors import InvalidState
from forgetctl.core.items import PromptItem
from forgetctl.core.policy import Policy, strictest
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger
from forgetctl.store.scores import ScoreCache
from forgetctl.verify.checks import CheckResult, run_checks


def _dedupe(items: list[PromptItem]) -> list[PromptItem]:
    return list({(i.prompt, i.target): i for i in items}.values())


def verify_version(
    ledger: Ledger,
    home: Home,
    keys: Keyring,
    policies: dict[str, Policy],
    version_id: int,
    *,
    int4: bool = False,
    relearn: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, list[CheckResult]]:
    """Run the checks, record them, and set the version's status. Returns (status, results)."""
    version = ledger.version(version_id)
    if version["kind"] != "adapter" or version["status"] not in (
        "candidate",
        "verified",
        "rejected",
    ):
        raise InvalidState(f"version {version_id} is a {version['status']} {version['kind']}")
    plans = {rid: load_plan(ledger, keys, rid) for rid in version["requests"]}
    forget_sets = {str(rid): p.forget for rid, p in plans.items()}
    retain = _dedupe([i for p in plans.values() for i in p.retain if i.kind != "general"])
    general = _dedupe([i for p in plans.values() for i in p.retain if i.kind == "general"])
    earlier: dict[str, list[PromptItem]] = {}
    for rid in versions.forgotten_requests(ledger, version["parent"]):
        try:
            earlier[str(rid)] = load_plan(ledger, keys, rid).forget
        except InvalidState:
            ledger.append_event("verification.regression_skipped", request_id=rid,
                                version_id=version_id, reason="prompt set purged")  # fmt: skip
    cfg = strictest([policies[ledger.request(rid)["policy"]].verify for rid in version["requests"]])
    parent_model, tokenizer = versions.load_version(ledger, home, version["parent"])
    candidate_model, _ = versions.load_version(ledger, home, version_id)
    results = run_checks(
        parent_model, candidate_model, tokenizer, forget_sets, retain, general, earlier, cfg,
        int4=int4, relearn=relearn, progress=progress,
        cache=ScoreCache(home.cache / "scores.sqlite", keys.keyed_hash),
        model_keys=(versions.version_key(ledger, version["parent"]),
                    versions.version_key(ledger, version_id)),
    )  # fmt: skip
    with ledger.transaction():
        for r in results:
            ledger.add_verification(version_id, r.name, r.passed, r.figures, r.reasons)
        verdicts = versions.check_status(ledger, version_id)
        needed = set(cfg.mandatory)
        if not all(verdicts.values()):
            status = "rejected"
        elif needed <= verdicts.keys():
            status = "verified"
        else:
            status = "candidate"
        if status != version["status"]:
            failed = sorted(k for k, ok in verdicts.items() if not ok)
            ledger.set_version_status(version_id, status, failed=failed,
                                      missing=sorted(needed - verdicts.keys()))  # fmt: skip
        if status == "verified":
            for rid in version["requests"]:
                if ledger.request(rid)["status"] == "applied":
                    ledger.set_request_status(rid, "verified", version=version_id)
    return status, results
