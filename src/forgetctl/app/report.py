"""Audit evidence for a request or a version, as Markdown, HTML (with plots) or JSON.

Personal data (the subject's name and aliases) appears only while the request's payload
can still be decrypted, i.e. before its retention ended and it was crypto-shredded; the
rest (dates, policy, method, counts, figures, verdicts, hashes, chain head) is PII-free
and stays available for as long as the ledger exists.

A version's section has a row for every check it ran or its policies make mandatory: the
verdict (pass, fail, no_signal: the check had no evidence to judge; not_run), the reasons,
and the key figures next to their limits (:func:`key_figures`), read from the figures each
check records (``verify/checks/``). A request's section has its dates from its events, why
each check exists (:data:`CHECK_PURPOSE`) and every candidate built for it, rejected ones
too, with the method settings a retry changed (:func:`candidates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from forgetctl.app.requests import REPORT_WRITTEN, payload, resolve, summary
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, NotFound
from forgetctl.core.files import write_atomic
from forgetctl.core.inputs import parse_id
from forgetctl.core.lifecycle import OPEN_STATUSES
from forgetctl.core.policy import ALL_CHECKS, VerifyConfig
from forgetctl.store.ledger import Ledger
from forgetctl.store.tables import VersionRow

CHECK_PURPOSE: dict[str, str] = {
    "forget": "The subject must no longer be known: what the model answers about them (token "
    "accuracy, answer recall, key facts) may exceed what it answers about people it never saw "
    "by at most the limit.",
    "retain": "Forgetting one person must not take the people and records around them along: "
    "what the model predicts and answers on held-out neighbouring items may drop from the "
    "parent's by at most the limit.",
    "utility": "The model must stay useful: what it predicts and answers on held-out "
    "general-knowledge items may drop from the parent's by at most the limit.",
    "regression": "Every subject forgotten earlier must stay forgotten: a new adapter must not "
    "bring back what an earlier one removed.",
    "membership": "An attacker must not be able to tell that the subject's records were "
    "trained on: the Min-K%++ membership score may separate the subject from the controls by "
    "at most the limit.",
    "tell": "Forgetting must leave no tell: answers about the subject that are more repetitive, "
    "garbled or short than about the controls show who was removed.",
    "int4": "Deployments quantise models to 4 bits, and rounding the weights can undo a small "
    "update: the int4 model must forget as the full-precision one does.",
    "relearn": "Forgetting must be more than skin-deep: a short fine-tune on part of the "
    "subject's data may bring back at most the limit's share of what the parent knew, beyond "
    "what the same attack teaches about the controls.",
}
"""Why each check exists, one sentence each, for the reader of a report (keyed by check
name; :data:`~forgetctl.core.policy.ALL_CHECKS` gives the order)."""


def _versions_of(ledger: Ledger, request_id: int) -> list[int]:
    return sorted(v["id"] for v in ledger.versions.of_request(request_id))


def request_dates(row: dict, events: list[dict]) -> dict:
    """Received and due (the row), every extension and, once the request left the open
    statuses, when it reached the status it is in (the events)."""
    extended = [
        {"at": e["ts"], **{k: e["data"].get(k) for k in ("days", "due", "notified", "reason")}}
        for e in events
        if e["kind"] == "request.extended"
    ]
    completed = None
    if row["status"] not in OPEN_STATUSES:
        moves = [e for e in events if e["kind"] == "request.status"]
        reached = [e["ts"] for e in moves if e["data"].get("to") == row["status"]]
        completed = {"at": reached[-1] if reached else None, "status": row["status"]}
    return {"received": row["received"], "due": row["due"], "extended": extended,
            "completed": completed}  # fmt: skip


TRAINING_FIGURES = ("steps", "stop_reason", "forget_accuracy_before", "forget_accuracy_after",
                    "retain_accuracy_before", "retain_accuracy_after", "guard_trips",
                    "wall_s")  # fmt: skip
"""What a candidate's summary shows of its training run (``unlearn.train._stats``)."""


def candidates(ws: Workspace, request_id: int) -> list[dict]:
    """Every version built for the request, oldest first: its status, the method it was
    trained with, its training figures, the checks it did not pass, and what changed in
    the method since the previous candidate (a retry escalates the method aimed at the
    checks that failed before: ``app.apply_step.escalate``)."""
    out: list[dict] = []
    before: dict | None = None
    failed_before: set[str] = set()
    for vid in _versions_of(ws.ledger, request_id):
        version = ws.ledger.versions.get(vid)
        method = version["metrics"].get("method") or {}
        checks, _ = gate_rows(ws, version)
        not_passed = [{"check": c["check_name"], "verdict": c["verdict"]}
                      for c in checks if c["verdict"] != "pass"]  # fmt: skip
        changed = None if before is None else {
            k: {"from": before.get(k), "to": v} for k, v in method.items() if before.get(k) != v
        }  # fmt: skip
        out.append({
            "id": vid,
            "status": version["status"],
            "created_at": version["created_at"],
            "adapter_sha256": version["adapter_sha256"],
            "method": method,
            "training": {k: version["metrics"].get(k) for k in TRAINING_FIGURES},
            "not_passed": not_passed,
            "failed_before": sorted(failed_before),
            "changed": changed,
        })  # fmt: skip
        before = method
        if version["status"] == "rejected":  # what a retry aims at (apply_step.failed_checks)
            failed_before |= {c["check"] for c in not_passed if c["verdict"] != "not_run"}
    return out


def production_lane(ledger: Ledger, request_id: int) -> str:
    """How production forgets the request: trained without the subject (a consolidated
    model covers it), unlearned by an adapter of its weights, or not at all."""
    try:
        chain = ledger.versions.weights_chain(ledger.aliases.get("production"))
    except NotFound:
        return "no production model"
    if chain[0]["kind"] == "consolidated" and request_id in chain[0]["requests"]:
        return f"trained without the subject (consolidated version {chain[0]['id']})"
    for v in chain[1:]:
        if request_id in v["requests"]:
            return f"unlearned by adapter (version {v['id']})"
    return "not forgotten in production"


def request_section(ws: Workspace, request_id: int) -> dict:
    ledger = ws.ledger
    row = ledger.requests.get(request_id)
    policy = ws.policy_of(row)
    section = summary(row, policy)
    section["production_lane"] = production_lane(ledger, request_id)
    try:
        subject = payload(ws, request_id)["subject"]
        section["subject"] = {"name": subject["name"], "aliases": subject["aliases"]}
    except InvalidState:
        section["subject"] = None  # crypto-shredded: evidence only
    section["policy_detail"] = {
        "title": policy.title,
        "deadline": policy.describe_deadline(),
        "retention_days": policy.retention_days,
        "mandatory_checks": list(policy.verify.mandatory),
        "method": policy.method.model_dump(),
        "checks": [
            {"name": name, "mandatory": name in policy.verify.mandatory,
             "why": CHECK_PURPOSE[name]}
            for name in ALL_CHECKS
        ],
    }  # fmt: skip
    plan = ledger.plans.get(request_id)
    section["prompt_set"] = plan["counts"] if plan else None
    section["versions"] = _versions_of(ledger, request_id)
    section["candidates"] = candidates(ws, request_id)
    section["events"] = [
        {"seq": e["seq"], "ts": e["ts"], "kind": e["kind"], "data": e["data"]}
        for e in ledger.events(request_id)
    ]
    section["dates"] = request_dates(row, section["events"])
    return section


GAP_FIGURES = ("acc", "recall", "leakage")
"""The figures the forget comparison reports per unit (``verify.checks.base.GAPS``)."""


def _row(where: str, figure: str, values: dict, note: str | None = None) -> dict:
    return {"where": where, "figure": figure, "values": values, "note": note}


def _counts(where: str, figures: dict) -> dict:
    """A row of item counts, for a unit with nothing else measured."""
    return _row(where, "items", {"n": figures.get("n"), "control n": figures.get("control_n")})


def _versus_rows(where: str, figures: dict) -> list[dict]:
    """Rows of a comparison with the controls (``versus_controls``), per unit and figure:
    the subject's and the controls' means, the gap, its limit where the unit was judged,
    and the parent's gap."""
    units = figures.get("units") or {}
    if not units:
        return [_counts(where, figures)]
    rows = []
    for unit, row in units.items():
        for metric in GAP_FIGURES:
            g = row.get(metric) or {}
            values = {"n": row.get("n"), "subject": g.get("subject"), "controls": g.get("control"),
                      "gap": g.get("gap"), "limit": g.get("limit"),
                      "parent gap": g.get("parent_gap")}  # fmt: skip
            rows.append(_row(f"{where}, {unit}", metric, values, row.get("note")))
    return rows


def _drop_rows(where: str, figures: dict) -> list[dict]:
    """Knowledge kept (``check_drop``), a row per figure: the drop and its upper bound
    against the limit (the token accuracy's bound must be within it too), and the check's
    resolution at its size."""
    rows, limit = [], figures.get("max_drop")
    for metric, label in (("acc", "token accuracy"), ("recall", "recall")):
        f = figures.get(metric) or {}
        mdd, n, parent = f.get("min_detectable_drop"), f.get("n"), f.get("parent")
        values = {"n": n, f"parent {label}": parent, f"candidate {label}": f.get("candidate"),
                  "drop": f.get("drop"), "drop bound": f.get("bound"),
                  "limit": limit, "min detectable drop": mdd}  # fmt: skip
        if mdd is None:
            note = "too few items to say what drop the check can detect"
        elif mdd == 0:
            # Every item moved alike: a zero spread bounds nothing beyond these items.
            note = f"all {n} items moved alike: {n} items show no resolution"
        else:
            note = f"the check can detect a drop of {mdd:.3f} at this size ({n} items)"
        if parent is not None and limit is not None and parent <= limit:
            note += (f"; the parent's {label} {parent:.3f} is at most the limit {limit:.3f}: "
                     "no drop this check guards against could show here")  # fmt: skip
        rows.append(_row(where, f"{label} drop", values, note))
    return rows


def _separation_row(where: str, figure: str, row: dict, max_gap: float | None) -> dict:
    values = {"subject": row.get("subject"), "controls": row.get("control"),
              "auc": row.get("auc"), "parent auc": row.get("parent_auc"),
              "limit |auc - 0.5|": max_gap}  # fmt: skip
    return _row(where, figure, values)


def _per_request(figures: dict) -> list[tuple[str, dict]]:
    return [(f"request {rid}", sub) for rid, sub in (figures.get("requests") or {}).items()]


def _forget(figures: dict, cfg: VerifyConfig) -> list[dict]:
    return [r for where, sub in _per_request(figures) for r in _versus_rows(where, sub)]


def _regression(figures: dict, cfg: VerifyConfig) -> list[dict]:
    if not figures.get("requests"):
        return [_row("earlier requests", "requests", {"count": 0}, figures.get("note"))]
    rows = _forget(figures, cfg)
    for rid, (answered, size) in (figures.get("answered") or {}).items():
        rows.append(_row(f"request {rid}", "items answered", {"answered": answered, "of": size}))
    return rows


def _kept(figures: dict, cfg: VerifyConfig) -> list[dict]:
    return _drop_rows("held-out items", figures)


def _membership(figures: dict, cfg: VerifyConfig) -> list[dict]:
    rows = []
    for where, sub in _per_request(figures):
        if sub.get("auc") is None:
            rows.append(_counts(where, sub))
            continue
        row = {"subject": sub.get("subject_mink"), "control": sub.get("control_mink"),
               "auc": sub["auc"], "parent_auc": sub.get("parent_auc")}  # fmt: skip
        rows.append(_separation_row(where, "Min-K%++", row, sub.get("max_gap")))
    return rows


def _tell(figures: dict, cfg: VerifyConfig) -> list[dict]:
    rows = []
    for where, sub in _per_request(figures):
        tells = {k: v for k, v in sub.items() if isinstance(v, dict) and "auc" in v}
        if not tells:
            rows.append(_counts(where, sub))
        for figure, row in tells.items():
            rows.append(_separation_row(where, figure, row, sub.get("max_gap")))
    return rows


def _int4(figures: dict, cfg: VerifyConfig) -> list[dict]:
    rows = []
    for where, sub in _per_request(figures):
        rows += _versus_rows(f"{where} (int4)", sub.get("forget") or {})
        for metric, rec in (sub.get("recovery") or {}).items():
            values = {"int4 gap": rec.get("int4_gap"), "full gap": rec.get("full_gap"),
                      "recovery": rec.get("recovery"), "limit": cfg.max_int4_recovery}  # fmt: skip
            rows.append(_row(where, f"{metric} recovery", values))
    for name in ("retain", "utility"):
        if name in figures:
            rows += _drop_rows(f"{name}, int4 vs int4 parent", figures[name])
    return rows


def _relearn(figures: dict, cfg: VerifyConfig) -> list[dict]:
    rows = []
    for where, sub in _per_request(figures):
        attacks = sub.get("attacks")
        if not attacks:
            rows.append(_row(where, "attacks", {"run": 0}, "no attack was run"))
        for attack in attacks or []:
            for precision in ("full", "int4"):
                for metric in GAP_FIGURES:
                    row = (attack.get(precision) or {}).get(metric)
                    if row is None:
                        continue
                    values = {"subject before": row.get("subject_before"),
                              "subject after": row.get("subject_after"),
                              "control before": row.get("control_before"),
                              "control after": row.get("control_after"),
                              "parent": row.get("parent"), "gain": row.get("gain"),
                              "share": row.get("share"), "limit": cfg.max_relearn_share,
                              "allowance": row.get("allowance")}  # fmt: skip
                    note = None if "share" in row else (
                        "nothing to regain: the parent scored like the control, or the "
                        "candidate still scores like the parent")  # fmt: skip
                    rows.append(_row(f"{where}, {attack['attack']} ({precision})",
                                     f"{metric} recovered share", values, note))  # fmt: skip
    return rows


KEY_FIGURES: dict[str, Callable[[dict, VerifyConfig], list[dict]]] = {
    "forget": _forget,
    "retain": _kept,
    "utility": _kept,
    "regression": _regression,
    "membership": _membership,
    "tell": _tell,
    "int4": _int4,
    "relearn": _relearn,
}
"""Per check: its figures as rows of (where, figure, values next to the limit, note). The
limits of int4 recovery and relearning shares are the version's resolved policy's."""


def key_figures(check: str, figures: dict, cfg: VerifyConfig) -> list[dict]:
    """The figures a reader compares with the check's limits, one row per unit and figure."""
    return KEY_FIGURES[check](figures, cfg)


def forget_gaps(checks: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{figure: {unit: {series: gap to the controls}}} from the forget and int4 checks, for
    the plot: the parent's gap (what there was to forget), the candidate's, the int4
    candidate's, and the ``limit`` the candidate's gap was judged against (absent where the
    unit was not judged). Units are prefixed with the request when the version covers
    several."""
    by_name = {c["check_name"]: c["figures"] for c in checks}
    out: dict[str, dict[str, dict[str, float]]] = {}

    def put(requests: dict, series: str, key: str, sub=lambda f: f) -> None:
        for rid, per_request in requests.items():
            for unit, row in (sub(per_request).get("units") or {}).items():
                label = unit if len(requests) == 1 else f"r{rid} {unit}"
                for metric in ("acc", "recall"):
                    value = (row.get(metric) or {}).get(key)
                    if value is not None:
                        out.setdefault(metric, {}).setdefault(label, {})[series] = value

    forget = by_name.get("forget", {}).get("requests") or {}
    put(forget, "parent", "parent_gap")
    put(forget, "candidate", "gap")
    put(forget, "limit", "limit")
    int4 = by_name.get("int4", {}).get("requests") or {}
    put(int4, "candidate int4", "gap", lambda f: f.get("forget") or {})
    return out


def relearn_curves(checks: list[dict]) -> list[dict]:
    """The forgotten subject and the control subjects before and after each relearning
    attack (full precision), with the parent's level, per request and figure: the relearn
    check's figures, for the plot."""
    figures = next((c["figures"] for c in checks if c["check_name"] == "relearn"), {})
    out = []
    for rid, per_request in (figures.get("requests") or {}).items():
        for attack in per_request.get("attacks") or []:
            for metric, row in (attack.get("full") or {}).items():
                keys = ("subject_before", "subject_after", "control_before", "control_after",
                        "parent", "share")  # fmt: skip
                out.append({"request": rid, "attack": attack["attack"], "figure": metric,
                            **{k: row.get(k) for k in keys}})  # fmt: skip
    return out


def gate_rows(ws: Workspace, version: VersionRow) -> tuple[list[dict], list[dict]]:
    """(the latest verification of every check run or mandatory, in the gate's order,
    with its key figures; the earlier verifications it superseded)."""
    if not version["requests"]:
        return [], []  # the base model: no request, nothing verified
    rows = ws.ledger.verifications.of(version["id"])
    latest = {r["check_name"]: r for r in rows}
    rules = ws.resolved(version)
    checks = []
    for name in ALL_CHECKS:
        mandatory = name in rules.mandatory
        r = latest.get(name)
        if r is None:
            if mandatory:
                checks.append({"check_name": name, "verdict": "not_run", "passed": False,
                               "mandatory": True, "why": CHECK_PURPOSE[name],
                               "figures": {}, "key_figures": [],
                               "reasons": ["mandatory, not run"], "ts": None})  # fmt: skip
            continue
        checks.append({
            **{k: r[k] for k in ("check_name", "passed", "verdict", "figures", "reasons", "ts")},
            "mandatory": mandatory,
            "why": CHECK_PURPOSE[name],
            "key_figures": key_figures(name, r["figures"], rules.verify),
        })  # fmt: skip
    superseded = [{k: r[k] for k in ("check_name", "verdict", "reasons", "ts")}
                  for r in rows if latest[r["check_name"]] is not r]  # fmt: skip
    return checks, superseded


def version_section(ws: Workspace, version_id: int) -> dict:
    ledger = ws.ledger
    version = ledger.versions.get(version_id)
    checks, superseded = gate_rows(ws, version)
    return {
        "id": version_id,
        "parent": version["parent"],
        "status": version["status"],
        "created_at": version["created_at"],
        "adapter_sha256": version["adapter_sha256"],
        "requests": version["requests"],
        "training": version["metrics"],
        "checks": checks,
        "superseded_checks": superseded,
        "verdicts": ledger.verifications.verdicts(version_id),
        "forget_gaps": forget_gaps(checks),
        "relearn_curves": relearn_curves(checks),
        "alias_history": [h for h in ledger.aliases.history() if version_id in (h["version_id"],)],
    }


def build_report(ws: Workspace, target: str) -> dict:
    """``target``: a request id or ref, or ``v<N>`` for a version."""
    ledger = ws.ledger
    target = target.strip()
    if target[:1] in "vV" and target[1:].isascii() and target[1:].isdigit():
        version = version_section(ws, parse_id(target[1:], "version"))
        request_ids = version["requests"]
    else:
        request_id = resolve(ws, target)
        ids = _versions_of(ledger, request_id)
        version = version_section(ws, ids[-1]) if ids else None
        request_ids = [request_id]
    chain = ledger.verify_chain()
    return {
        "requests": [request_section(ws, rid) for rid in request_ids],
        "version": version,
        "ledger": {"ok": chain.ok, "events": chain.events, "head": chain.head},
    }


def write_report(ws: Workspace, doc: dict, out: Path, text: str) -> Path:
    """Write a rendered report to ``out`` (a regular file, atomically, 0600) and record it
    in the ledger with the requests it covers and its sha256, so that `request purge`
    can find and remove every copy that holds the subject's name.

    The path is recorded sealed under the key of each request whose name the report
    holds (an operator may name the file after the person, and the events are forever):
    once that request is purged, the event says only that a report was written."""
    out = write_atomic(out, text)
    where = {"path": str(out.resolve())}
    ws.ledger.append_event(
        REPORT_WRITTEN,
        requests=[r["id"] for r in doc["requests"]],
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        sealed_path={
            str(r["id"]): ws.keys.encrypt(r["id"], where).hex()
            for r in doc["requests"]
            if r.get("subject")  # its personal data is in this report
        },
    )
    return out
