"""Audit evidence for a request or a version, as Markdown, HTML (with plots) or JSON.

Personal data (the subject's name and aliases) appears only while the request's payload
can still be decrypted, i.e. before its retention ended and it was crypto-shredded; the
rest (dates, policy, method, counts, figures, verdicts, hashes, chain head) is PII-free
and stays available for as long as the ledger exists.

The HTML is one self-contained page (inline CSS, plots as ``data:`` PNGs, no script) from
the packaged template ``templates/report.html.j2``, with autoescaping on: names and reasons
come from request files and must not become markup.
"""

from __future__ import annotations

import base64
import io
import json
import textwrap

import jinja2

from forgetctl.core.errors import BadInput

SERIES = ("parent", "candidate", "candidate int4")
FIGURE_LABELS = {"acc": "token accuracy", "recall": "answer recall", "leakage": "key-fact leakage"}
METHOD_SHOWN = ("objective", "learning_rate", "max_steps", "retain_weight", "target_accuracy",
                "int4_aware", "sam", "sam_rho")  # fmt: skip
"""The method settings a candidates table shows (the ones ``apply_step.escalate`` changes,
and the objective); every setting that changed between candidates is shown besides."""

VERDICTS = {"pass": "pass", "fail": "FAIL", "no_signal": "NO SIGNAL", "not_run": "NOT RUN"}
MEANING = {
    "pass": "the check had evidence and it was within every limit",
    "fail": "a figure exceeded its limit",
    "no_signal": "the check had no evidence to judge (nothing to measure, or the parent already "
    "scored like the controls): not a pass, it blocks promotion like a failure",
    "not_run": "a mandatory check that has not run: it blocks promotion",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_png(doc: dict) -> bytes | None:
    """Grouped bars per unit (all kinds, each kind) of the subject's gap to the controls:
    the parent's, the candidate's and the int4 candidate's, token accuracy and recall, with
    the limit the candidate's gap was judged against drawn over each unit (the legend
    beside the axes, not over the bars)."""
    data = (doc.get("version") or {}).get("forget_gaps") or {}
    if not data:
        return None
    plt = _pyplot()
    units = list(dict.fromkeys(u for rows in data.values() for u in rows))
    width = 0.25
    fig, axes = plt.subplots(len(data), 1, figsize=(max(7, 1.05 * len(units) + 2.5),
                             2.9 * len(data)), dpi=100, squeeze=False)  # fmt: skip
    for ax, (metric, rows) in zip(axes[:, 0], data.items(), strict=True):
        for i, series in enumerate(SERIES):
            xs = [k + (i - 1) * width for k in range(len(units))]
            ax.bar(xs, [rows.get(u, {}).get(series, 0.0) for u in units], width, label=series)
        judged = [(k, rows[u]["limit"]) for k, u in enumerate(units) if "limit" in rows.get(u, {})]
        if judged:
            ax.hlines([lim for _, lim in judged], [k - 0.45 for k, _ in judged],
                      [k + 0.45 for k, _ in judged], colors="crimson", linestyles="--",
                      linewidth=1.4, label="limit (candidate)")  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.6)
        labels = ["\n".join(textwrap.wrap(u, 14)) + ("" if "limit" in rows.get(u, {}) else
                  "\n(not judged)") for u in units]  # fmt: skip
        ax.set_xticks(range(len(units)), labels, fontsize=8)
        label = FIGURE_LABELS.get(metric, metric)
        ax.set_ylabel(f"{label} gap", fontsize=9)
        ax.set_title(f"Subject minus controls: {label} (0: like a person the model never saw)",
                     fontsize=10)  # fmt: skip
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def relearn_png(doc: dict) -> bytes | None:
    """Per relearning attack and figure: the forgotten subject and the controls before and
    after the attack (full precision), the parent's level dashed: a subject whose line
    climbs back towards the parent's while the controls' stays flat was only hidden."""
    curves = [c for c in (doc.get("version") or {}).get("relearn_curves") or []
              if c["figure"] in ("acc", "recall") and c["subject_after"] is not None]  # fmt: skip
    if not curves:
        return None
    plt = _pyplot()
    panels = list(dict.fromkeys((c["request"], c["attack"]) for c in curves))
    metrics = list(dict.fromkeys(c["figure"] for c in curves))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(max(10, 3.6 * len(panels)),
                             2.6 * len(metrics) + 0.6), dpi=100, squeeze=False,
                             sharey="row")  # fmt: skip
    for c in curves:
        ax = axes[metrics.index(c["figure"]), panels.index((c["request"], c["attack"]))]
        ax.plot([0, 1], [c["subject_before"], c["subject_after"]], "o-", color="tab:red",
                label="forgotten subject")  # fmt: skip
        ax.plot([0, 1], [c["control_before"], c["control_after"]], "s-", color="tab:blue",
                label="control subjects")  # fmt: skip
        if c["parent"] is not None:
            ax.axhline(c["parent"], color="gray", linestyle="--", linewidth=1,
                       label="parent (before forgetting)")  # fmt: skip
        ax.set_xticks([0, 1], ["before attack", "after attack"], fontsize=8)
        ax.set_xlim(-0.3, 1.3)
        share = "" if c["share"] is None else f", share {c['share']:.2f}"
        title = f"{c['request']}: {c['attack']}{share}"
        ax.set_title("\n".join(textwrap.wrap(title, 56)), fontsize=8)
        ax.set_ylabel(FIGURE_LABELS.get(c["figure"], c["figure"]), fontsize=9)
    fig.suptitle("Relearning attacks: the forgotten subject and the controls, full precision",
                 fontsize=10)  # fmt: skip
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    png = _png(fig)
    plt.close(fig)
    return png


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _setting(value) -> str:
    """A method setting as written in a policy (a learning rate of 5e-4 is not 0.001)."""
    return f"{value:g}" if isinstance(value, float) else _fmt(value)


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


def _dates_md(r: dict) -> list[str]:
    dates = r["dates"]
    done = dates["completed"]
    left = "" if done else f" ({r['days_left']} days left)"
    completed = f"{_ts(done['at'])} ({done['status']})" if done else "not yet"
    return [
        f"| received / due | {dates['received']} / {dates['due']}{left} |",
        *(f"| extended | {_ts(e['at'])}: {e['days']} days to {e['due']} |"
          for e in dates["extended"]),
        f"| completed | {completed} |",
    ]  # fmt: skip


def _candidates_md(candidates: list[dict]) -> list[str]:
    """Every candidate: its status, the checks it did not pass, what its retry changed."""
    if not candidates:
        return []
    lines = ["| candidate | status | created | not passed | what the retry changed |",
             "|---|---|---|---|---|"]  # fmt: skip
    for c in candidates:
        failed = ", ".join(f"{n['check']} {VERDICTS.get(n['verdict'], n['verdict'])}"
                           for n in c["not_passed"])  # fmt: skip
        changed = ("first attempt" if c["changed"] is None else "; ".join(
            f"{k} {_setting(d['from'])} -> {_setting(d['to'])}" for k, d in c["changed"].items())
            or "nothing")  # fmt: skip
        lines.append(f"| v{c['id']} | {c['status']} | {_ts(c['created_at'])} "
                     f"| {failed or 'none'} | {changed} |")  # fmt: skip
    return [*lines, ""]


def render_markdown(doc: dict) -> str:
    lines = ["# forgetctl audit report", ""]
    for r in doc["requests"]:
        subject = _cell(r["subject"]["name"]) if r["subject"] else "(personal data destroyed)"
        lines += [
            f"## Request {r['id']} ({r['ref']})",
            "",
            "| field | value |",
            "|---|---|",
            f"| subject | {subject} |",
            f"| status | {r['status']} |",
            f"| in production | {r['production_lane']} |",
            f"| policy | {r['policy']} ({r['policy_detail']['title']}) |",
            *_dates_md(r),
            f"| mandatory checks | {', '.join(r['policy_detail']['mandatory_checks'])} |",
            f"| method | {_fmt(r['policy_detail']['method'])} |",
            f"| prompt set | {_fmt(r['prompt_set'])} |",
            f"| personal data purged | {r['purged_at'] or 'no'} |",
            "",
            "| check | mandatory | why it exists |",
            "|---|---|---|",
            *(f"| {c['name']} | {'yes' if c['mandatory'] else 'no'} | {c['why']} |"
              for c in r["policy_detail"]["checks"]),
            "",
            *_candidates_md(r["candidates"]),
        ]  # fmt: skip
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


def _ts(value: str | None) -> str:
    """An event's ISO timestamp to the second, in UTC as the ledger records it."""
    if not value:
        return "(no event)"
    return value[:19].replace("T", " ") + (" UTC" if value.endswith("+00:00") else "")


def _columns(rows: list[dict]) -> list[str]:
    """The value labels of a check's key-figure rows, in first-seen order (a table's
    columns; a row without one leaves its cell empty)."""
    return list(dict.fromkeys(k for r in rows for k in r["values"]))


def _method_columns(candidates: list[dict]) -> list[str]:
    changed = {k for c in candidates for k in (c["changed"] or {})}
    return [k for k in dict.fromkeys((*METHOD_SHOWN, *sorted(changed)))
            if any(k in c["method"] for c in candidates)]  # fmt: skip


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("forgetctl.cli", "templates"),
    autoescape=True,  # every value is text, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(fmt=_fmt, ts=_ts, setting=_setting)
_ENV.globals.update(VERDICTS=VERDICTS, MEANING=MEANING, FIGURE_LABELS=FIGURE_LABELS,
                    columns=_columns, method_columns=_method_columns)  # fmt: skip


def render_html(doc: dict) -> str:
    """One self-contained page: per request its dates, policy, why each check exists and
    every candidate; the latest candidate's gate, each check's figures beside their limits
    in a table, the plots; the ledger's chain head."""
    plots = [
        {"src": _data_uri(png), "alt": alt, "caption": caption}
        for png, alt, caption in (
            (plot_png(doc), "the subject's gap to the controls per prompt kind, with the limit",
             "The subject's lead over people the model never saw, per prompt kind: before "
             "forgetting (parent) and after (candidate, full precision and int4). A candidate "
             "bar above the dashed limit fails the forget check (int4: the int4 check)."),
            (relearn_png(doc), "the forgotten subject and the controls before and after each "
             "relearning attack", "Each relearning attack fine-tunes a copy of the candidate "
             "on part of the subject's data and, separately, of the controls'; it is scored on "
             "the held-out rest. The share is what came back of the parent's lead, beyond the "
             "controls' gain."),
        )
        if png
    ]  # fmt: skip
    return _ENV.get_template("report.html.j2").render(doc=doc, plots=plots)


def render(doc: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True, default=str)
    if fmt == "md":
        return render_markdown(doc)
    if fmt == "html":
        return render_html(doc)
    raise BadInput(f"unknown format {fmt!r} (md, html, json)")
