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

from forgetctl.core.errors import BadInput

SERIES = ("parent", "candidate", "candidate int4", "candidate after relearning")


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
            verdict = {"pass": "pass", "no_signal": "NO SIGNAL"}.get(c["verdict"], "FAIL")
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
