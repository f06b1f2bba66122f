"""Audit evidence for a request or a version, as Markdown, HTML (with a plot) or JSON.

Personal data (the subject's name and aliases) appears only while the request's payload
can still be decrypted, i.e. before its retention ended and it was crypto-shredded; the
rest (dates, policy, method, counts, figures, verdicts, hashes, chain head) is PII-free
and stays available for as long as the ledger exists.
"""

from __future__ import annotations

from forgetctl.app.requests import payload, summary
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.store.ledger import Ledger


def _versions_of(ledger: Ledger, request_id: int) -> list[int]:
    return sorted(v["id"] for v in ledger.versions.of_request(request_id))


def request_section(ws: Workspace, request_id: int) -> dict:
    ledger = ws.ledger
    row = ledger.requests.get(request_id)
    policy = ws.policy_of(row)
    section = summary(row, policy)
    try:
        subject = payload(ws, request_id)["subject"]
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
    plan = ledger.plans.get(request_id)
    section["prompt_set"] = plan["counts"] if plan else None
    section["versions"] = _versions_of(ledger, request_id)
    section["events"] = [
        {"seq": e["seq"], "ts": e["ts"], "kind": e["kind"], "data": e["data"]}
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
    version = ledger.versions.get(version_id)
    checks = ledger.verifications.of(version_id)
    return {
        "id": version_id,
        "parent": version["parent"],
        "status": version["status"],
        "created_at": version["created_at"],
        "adapter_sha256": version["adapter_sha256"],
        "requests": version["requests"],
        "training": version["metrics"],
        "checks": [
            {k: c[k] for k in ("check_name", "passed", "verdict", "figures", "reasons", "ts")} for c in checks
        ],
        "verdicts": ledger.verifications.verdicts(version_id),
        "forget_recall_by_kind": forget_recall_by_kind(checks),
        "alias_history": [h for h in ledger.aliases.history() if version_id in (h["version_id"],)],
    }


def build_report(ws: Workspace, target: str) -> dict:
    """``target``: a request id or ref, or ``v<N>`` for a version."""
    ledger = ws.ledger
    target = target.strip()
    if target[:1] in "vV" and target[1:].isdigit():
        version = version_section(ledger, int(target[1:]))
        request_ids = version["requests"]
    else:
        if target.isdigit():
            request_id = int(target)
        else:
            found = ledger.requests.id_of_ref(target)
            if found is None:
                raise NotFound(f"no request or version {target!r} (versions are v<N>)")
            request_id = found
        ledger.requests.get(request_id)
        ids = _versions_of(ledger, request_id)
        version = version_section(ledger, ids[-1]) if ids else None
        request_ids = [request_id]
    chain = ledger.verify_chain()
    return {
        "requests": [request_section(ws, rid) for rid in request_ids],
        "version": version,
        "ledger": {"ok": chain.ok, "events": chain.events, "head": chain.head},
    }
