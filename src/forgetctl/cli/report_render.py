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

SERIES = ("parent", "candidate", "candidate int4")
FIGURE_LABELS = {"acc": "token accuracy", "recall": "answer recall"}

VERDICTS = {"pass": "pass", "fail": "FAIL", "no_signal": "NO SIGNAL", "not_run": "NOT RUN"}
MEANING = {
    "pass": "the check had evidence and it was within every limit",
    "fail": "a figure exceeded its limit",
    "no_signal": "the check had no evidence to judge (nothing to measure, or the parent already "
    "scored like the controls): not a pass, it blocks promotion like a failure",
    "not_run": "a mandatory check that has not run: it blocks promotion",
}


def plot_png(doc: dict) -> bytes | None:
    """Grouped bars per unit (all kinds, each kind) of the subject's gap to the controls:
    the parent's, the candidate's and the int4 candidate's, token accuracy and recall."""
    data = (doc.get("version") or {}).get("forget_gaps") or {}
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = list(dict.fromkeys(u for rows in data.values() for u in rows))
    width = 0.25
    fig, axes = plt.subplots(len(data), 1, figsize=(max(6, 1.4 * len(units)), 3.2 * len(data)),
                             dpi=110, squeeze=False)  # fmt: skip
    for ax, (metric, rows) in zip(axes[:, 0], data.items(), strict=True):
        for i, series in enumerate(SERIES):
            xs = [k + (i - 1) * width for k in range(len(units))]
            ax.bar(xs, [rows.get(u, {}).get(series, 0.0) for u in units], width, label=series)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(units)), units, rotation=15)
        ax.set_ylabel(f"{FIGURE_LABELS.get(metric, metric)} gap")
        ax.set_title(f"Subject minus controls: {FIGURE_LABELS.get(metric, metric)} (0: like a "
                     "person the model never saw)")  # fmt: skip
        ax.legend(fontsize=7)
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _values(values: dict) -> str:
    """``label value`` pairs, the limit among them; unmeasured ones left out."""
    return ", ".join(f"{k} {_fmt(v)}" for k, v in values.items() if v is not None)


def _first(reasons: list[str]) -> str:
    """The first reason, and how many more the check's section lists."""
    if len(reasons) < 2:
        return "".join(reasons)
    return f"{reasons[0]} (and {len(reasons) - 1} more below)"


def _check_section(c: dict) -> list[str]:
    verdict = c["verdict"]
    lines = [
        f"### {c['check_name']}: {VERDICTS.get(verdict, verdict)}"
        f"{' (mandatory)' if c['mandatory'] else ''}",
        "",
        f"{VERDICTS.get(verdict, verdict)}: {MEANING.get(verdict, '')}.",
        "",
    ]
    if c["reasons"]:
        lines += [f"- {r}" for r in c["reasons"]] + [""]
    if c["key_figures"]:
        lines += ["| where | figure | figures (limit beside them) | note |", "|---|---|---|---|"]
        lines += [
            f"| {_cell(r['where'])} | {_cell(r['figure'])} | {_cell(_values(r['values']))} "
            f"| {_cell(r['note'] or '')} |"
            for r in c["key_figures"]
        ]
        lines.append("")
    return lines


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
            "| check | mandatory | verdict | reasons |",
            "|---|---|---|---|",
        ]
        for c in v["checks"]:
            lines.append(
                f"| {c['check_name']} | {'yes' if c['mandatory'] else 'no'} "
                f"| {VERDICTS.get(c['verdict'], c['verdict'])} | {_cell(_first(c['reasons']))} |"
            )
        lines.append("")
        for c in v["checks"]:
            lines += _check_section(c)
        if v["superseded_checks"]:
            lines += ["Earlier verifications (superseded by the rows above):", ""]
            lines += [
                f"- {s['ts']} {s['check_name']}: {VERDICTS.get(s['verdict'], s['verdict'])}"
                for s in v["superseded_checks"]
            ]
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
        f'<img alt="subject minus controls per prompt kind" '
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
