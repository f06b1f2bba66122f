"""Audit evidence for a request or a version, as Markdown, HTML (with a plot) or JSON.

Personal data (the subject's name and aliases) appears only while the request's payload
can still be decrypted, i.e. before its retention ended and it was crypto-shredded; the
rest (dates, policy, method, counts, figures, verdicts, hashes, chain head) is PII-free
and stays available for as long as the ledger exists.
"""

from __future__ import annotations

import base64
import html
import io
import json

from forgetctl import requests as rq
from forgetctl import versions
from forgetctl.crypto import Keyring
from forgetctl.errors import BadInput, InvalidState, NotFound
from forgetctl.ledger import Ledger
from forgetctl.plan.step import plan_counts
from forgetctl.policies import Policy

SERIES = ("parent", "candidate", "candidate int4", "candidate after relearning")


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


def plot_png(doc: dict) -> bytes | None:
    """A grouped bar chart of forget recall per prompt kind and series."""
    data = (doc.get("version") or {}).get("forget_recall_by_kind") or {}
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(data)
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(kinds)), 3.6), dpi=110)
    for i, series in enumerate(SERIES):
        xs = [k + (i - 1.5) * width for k in range(len(kinds))]
        ax.bar(xs, [data[kind].get(series, 0.0) for kind in kinds], width, label=series)
    ax.set_xticks(range(len(kinds)), kinds, rotation=15)
    ax.set_ylabel("answer recall (ROUGE-L)")
    ax.set_ylim(0, 1)
    ax.set_title("Forget recall per prompt kind")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _check_lines(check: dict) -> list[str]:
    figures = check["figures"]
    flat = {k: v for k, v in figures.items() if not isinstance(v, dict | list)}
    per_request = figures.get("requests", {})
    for rid, sub in per_request.items():
        overall = sub.get("overall", sub)
        for k, v in overall.items():
            if not isinstance(v, dict | list):
                flat[f"r{rid}.{k}"] = v
    return [f"{k}={_fmt(v)}" for k, v in flat.items()]


def render_markdown(doc: dict) -> str:
    lines = ["# forgetctl audit report", ""]
    for r in doc["requests"]:
        subject = r["subject"]["name"] if r["subject"] else "(personal data destroyed)"
        lines += [
            f"## Request {r['id']} ({r['ref']})",
            "",
            "| field | value |",
            "|---|---|",
            f"| subject | {subject} |",
            f"| status | {r['status']} |",
            f"| policy | {r['policy']} ({r['policy_detail']['title']}) |",
            f"| received / due | {r['received']} / {r['due']} ({r['days_left']} days left) |",
            f"| mandatory checks | {', '.join(r['policy_detail']['mandatory_checks'])} |",
            f"| method | {_fmt(r['policy_detail']['method'])} |",
            f"| prompt set | {_fmt(r['prompt_set'])} |",
            f"| personal data purged | {r['purged_at'] or 'no'} |",
            "",
        ]
    v = doc["version"]
    if v:
        lines += [
            f"## Version {v['id']} (parent {v['parent']}): {v['status']}",
            "",
            f"Adapter sha256: `{v['adapter_sha256']}`",
            "",
            f"Training: {_fmt({k: v['training'].get(k) for k in ('steps', 'wall_s', 'layers')})}",
            "",
            "| check | verdict | figures | reasons |",
            "|---|---|---|---|",
        ]
        for c in v["checks"]:
            verdict = "pass" if c["passed"] else "FAIL"
            lines.append(
                f"| {c['check_name']} | {verdict} | {' '.join(_check_lines(c))} "
                f"| {'; '.join(c['reasons'])} |"
            )
        if v["forget_recall_by_kind"]:
            lines += ["", "Forget recall per prompt kind:", ""]
            lines += ["| kind | " + " | ".join(SERIES) + " |", "|---" * (len(SERIES) + 1) + "|"]
            for kind, row in v["forget_recall_by_kind"].items():
                cells = " | ".join(_fmt(row.get(s)) for s in SERIES)
                lines.append(f"| {kind} | {cells} |")
    ledger = doc["ledger"]
    lines += [
        "",
        f"Ledger chain: {'intact' if ledger['ok'] else 'BROKEN'}, {ledger['events']} events, "
        f"head `{ledger['head']}`",
        "",
    ]
    return "\n".join(lines)


def render_html(doc: dict) -> str:
    """Self-contained HTML: the Markdown tables as preformatted text plus the plot."""
    png = plot_png(doc)
    img = (
        f'<img alt="forget recall per prompt kind" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png
        else "<p>(no verification figures yet)</p>"
    )
    body = html.escape(render_markdown(doc))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>forgetctl audit report"
        "</title><style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "pre{white-space:pre-wrap;font-size:.85em}</style></head><body>"
        f"<h1>forgetctl audit report</h1>{img}<pre>{body}</pre></body></html>"
    )


def render(doc: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True, default=str)
    if fmt == "md":
        return render_markdown(doc)
    if fmt == "html":
        return render_html(doc)
    raise BadInput(f"unknown format {fmt!r} (md, html, json)")
