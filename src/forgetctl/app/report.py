"""Audit evidence for a request or a version, as Markdown, HTML (with a plot) or JSON.

Personal data (the subject's name and aliases) appears only while the request's payload
can still be decrypted, i.e. before its retention ended and it was crypto-shredded; the
rest (dates, policy, method, counts, figures, verdicts, hashes, chain head) is PII-free
and stays available for as long as the ledger exists.
"""

from __future__ import annotations

import json

from forgetctl.app import intake as rq
from forgetctl.app import versions
from forgetctl.app.plan_step import plan_counts
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.policy import Policy
from forgetctl.store.crypto import Keyring
from forgetctl.store.ledger import Ledger


def _versions_of(ledger: Ledger, request_id: int) -> list[int]:
    return [
        r["id"]
        for r in ledger.db.query("SELECT id, requests FROM versions ORDER BY id")
        if request_id in json.loads(r["requests"])
    ]


def request_section(
    ledger: Ledger, keys: Keyring, policies: dict[str, Policy], request_id: int
) -> dict:
    row = ledger.request(request_id)
    policy = policies[row["policy"]]
    section = rq.summary(row, policy)
    try:
        subject = rq.payload(ledger, keys, request_id)["subject"]
        section["subject"] = {"name": subject["name"], "aliases": subject["aliases"]}
    except InvalidState:
        section["subject"] = None  # crypto-shredded: evidence only
    section["policy_detail"] = {
        "title": policy.title,
        "deadline_days": policy.deadline_days,
        "retention_days": policy.retention_days,
        "mandatory_checks": list(policy.verify.mandatory),
        "method": policy.method.model_dump(),
    }
    section["prompt_set"] = plan_counts(ledger, request_id)
    section["versions"] = _versions_of(ledger, request_id)
    section["events"] = [
        {"seq": e["seq"], "ts": e["ts"], "kind": e["kind"], "data": json.loads(e["data"])}
        for e in ledger.events(request_id)
    ]
    return section


def forget_recall_by_kind(checks: list[dict]) -> dict[str, dict[str, float]]:
    """{kind: {series: recall}} from a version's forget, int4 and relearn check figures."""
    latest = {c["check_name"]: c["figures"] for c in checks}
    out: dict[str, dict[str, float]] = {}

    def put(kind: str, series: str, value: float | None) -> None:
        if value is not None:
            out.setdefault(kind, {})[series] = value

    for per_request in latest.get("forget", {}).get("requests", {}).values():
        for kind, row in per_request.get("by_kind", {}).items():
            put(kind, "parent", row.get("parent_recall"))
            put(kind, "candidate", row.get("recall"))
    for per_request in latest.get("int4", {}).get("requests", {}).values():
        for kind, row in per_request.get("forget", {}).get("by_kind", {}).items():
            put(kind, "candidate int4", row.get("recall"))
    for per_request in latest.get("relearn", {}).get("requests", {}).values():
        # The attack is measured on held-out items of every kind together.
        put("held-out (relearn)", "candidate", per_request.get("recall_before"))
        put("held-out (relearn)", "parent", per_request.get("parent_recall"))
        put("held-out (relearn)", "candidate after relearning", per_request.get("recall_after"))
    return out


def version_section(ledger: Ledger, version_id: int) -> dict:
    version = ledger.version(version_id)
    checks = ledger.verifications(version_id)
    return {
        "id": version_id,
        "parent": version["parent"],
        "status": version["status"],
        "created_at": version["created_at"],
        "adapter_sha256": version["adapter_sha256"],
        "requests": version["requests"],
        "training": version["metrics"],
        "checks": [
            {k: c[k] for k in ("check_name", "passed", "figures", "reasons", "ts")} for c in checks
        ],
        "verdicts": versions.check_status(ledger, version_id),
        "forget_recall_by_kind": forget_recall_by_kind(checks),
        "alias_history": [h for h in ledger.alias_history() if version_id in (h["version_id"],)],
    }


def build_report(ledger: Ledger, keys: Keyring, policies: dict[str, Policy], target: str) -> dict:
    """``target``: a request id or ref, or ``v<N>`` for a version."""
    target = target.strip()
    if target[:1] in "vV" and target[1:].isdigit():
        version = version_section(ledger, int(target[1:]))
        request_ids = version["requests"]
    else:
        if target.isdigit():
            request_id = int(target)
        else:
            rows = list(ledger.db.query("SELECT id FROM requests WHERE ref = ?", [target]))
            if not rows:
                raise NotFound(f"no request or version {target!r} (versions are v<N>)")
            request_id = rows[0]["id"]
        ledger.request(request_id)
        ids = _versions_of(ledger, request_id)
        version = version_section(ledger, ids[-1]) if ids else None
        request_ids = [request_id]
    chain = ledger.verify_chain()
    return {
        "requests": [request_section(ledger, keys, policies, rid) for rid in request_ids],
        "version": version,
        "ledger": {"ok": chain.ok, "events": chain.events, "head": chain.head},
    }
