"""The audit report on hand-made verifications (no model): every check has a row with its
verdict, its key figures beside their limits and its reasons, and a no-signal verdict says
in words that the check had no evidence."""

from __future__ import annotations

from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from forgetctl.app.home import Home
from forgetctl.app.intake import add_request, parse_request
from forgetctl.app.report import CHECK_PURPOSE, build_report
from forgetctl.app.requests import cancel, extend
from forgetctl.app.workspace import Workspace
from forgetctl.cli.report_render import render
from forgetctl.core.policy import ALL_CHECKS, AttackConfig, VerifyConfig
from forgetctl.lm.evaluate import EvalResult, ItemScore
from forgetctl.verify.checks import CheckResult
from forgetctl.verify.checks import int4 as int4_check
from forgetctl.verify.checks.forget import FORGET
from forgetctl.verify.checks.kept import RETAIN, UTILITY
from forgetctl.verify.checks.membership import MEMBERSHIP
from forgetctl.verify.checks.regression import REGRESSION
from forgetctl.verify.checks.relearn import RELEARN
from forgetctl.verify.checks.tell import TELL

N = 12


def scores(acc: float, recall: float, mink: float, repetition: float = 0.0,
           kind: str = "record", n: int = N) -> EvalResult:  # fmt: skip
    """``n`` items whose figures spread a little around the given means."""
    wobble = [(i % 3 - 1) * 0.02 for i in range(n)]
    return EvalResult([
        ItemScore(prompt=f"q{i}", target="t", kind=kind, source=i, output="", recall=recall + w,
                  leakage=recall + w, facts=1, prob=None, acc=acc + w, mink=mink + w * 10,
                  repetition=repetition, nonword=0.0, length=20.0)
        for i, w in enumerate(wobble)
    ])  # fmt: skip


def attack_result(subject_after: EvalResult, control_after: EvalResult) -> SimpleNamespace:
    """What ``relearn_attack`` returns, for one attack (the check reads only these fields)."""

    def side(rest: EvalResult) -> SimpleNamespace:
        return SimpleNamespace(attack_items=N, rest=rest, rest_int4=rest, losses=[2.0, 0.5])

    return SimpleNamespace(attack=AttackConfig(mode="full", learning_rate=1e-4, steps=20),
                           subject=side(subject_after), control=side(control_after),
                           attack_s=1.0)  # fmt: skip


def gate_results(cfg: VerifyConfig) -> list[CheckResult]:
    """One result of every check, from the checks' own verdicts on hand-made scores: the
    subject forgotten (like the controls), but its answers repetitive (tell fails), the
    relearning attack bringing it back (relearn fails), the parent's Min-K%++ unable to
    tell the subject from the controls (membership: no signal), no general items (utility:
    no signal)."""
    parent, control = scores(0.9, 0.8, 5.0), scores(0.3, 0.2, 0.0)
    candidate = scores(0.32, 0.21, 0.1, repetition=0.6)
    forget = {"1": (candidate, control, parent, control)}
    retain_parent, retain_cand = (
        scores(0.9, 0.9, 5.0, kind="neighbor", n=40),
        scores(0.9, 0.88, 5.0, kind="neighbor", n=40),
    )
    int4_scores = int4_check.Scores(
        forget={"1": (candidate, control, candidate, control)},
        kept={"retain": (retain_cand, retain_parent, retain_cand),
              "utility": (EvalResult([]), EvalResult([]), EvalResult([]))},
        quantize_s=0.5,
    )  # fmt: skip
    relearned = attack_result(scores(0.85, 0.75, 4.0), control)
    return [
        FORGET.verdict(forget, cfg),
        RETAIN.verdict((retain_cand, retain_parent), cfg),
        UTILITY.verdict((EvalResult([]), EvalResult([])), cfg),
        REGRESSION.verdict({}, cfg),
        MEMBERSHIP.verdict({"1": (candidate, control, control, control)}, cfg),
        TELL.verdict(forget, cfg),
        int4_check.verdict(int4_scores, cfg),
        RELEARN.verdict({"1": [(relearned, parent, candidate, control)]}, cfg),
    ]


FIRST_METHOD = {"objective": "npo", "learning_rate": 1e-3, "max_steps": 40, "sam": False}
RETRY_METHOD = {"objective": "npo", "learning_rate": 5e-4, "max_steps": 80, "sam": False}


def report_home(tmp_path: Path, name: str = "Ada Quill") -> tuple[Workspace, int, int]:
    """A home with one request and two candidates built for it: the first rejected (it did
    not forget: the candidate scores like the parent), the retry with every check's
    hand-made result (:func:`gate_results`). Returns (workspace, request id, retry id)."""
    home = Home(tmp_path / "home")
    home.create_dirs()
    ws = Workspace.open(home, create=True)
    ledger = ws.ledger
    with ledger.transaction():
        ledger.versions.add(id=0, kind="base", status="promoted", base_path="/nowhere",
                            base_sha256="0" * 64)  # fmt: skip
        ledger.aliases.move("production", 0, "base model registered")
    rid, _ = add_request(ws, parse_request(
        {"ref": "R-1", "regulation": "gdpr", "subject": {"name": name}}))  # fmt: skip
    ids = []
    for sha, method in (("1" * 64, FIRST_METHOD), ("2" * 64, RETRY_METHOD)):
        ids.append(ledger.versions.add(kind="adapter", parent=0, status="candidate",
                                       adapter_path=f"/nowhere/{sha[0]}", adapter_sha256=sha,
                                       requests=[rid], metrics={"method": method, "steps": 7,
                                       "stop_reason": "max_steps"}))  # fmt: skip
    first, retry = ids
    cfg = ws.resolved(first).verify
    parent, control = scores(0.9, 0.8, 5.0), scores(0.3, 0.2, 0.0)
    ledger.verifications.add(first, *astuple(FORGET.verdict({"1": (parent, control, parent,
                                                                   control)}, cfg)))  # fmt: skip
    ledger.versions.set_status(first, "rejected", failed=["forget"])
    for r in gate_results(cfg):
        ledger.verifications.add(retry, *astuple(r))
    return ws, rid, retry


def astuple(r: CheckResult) -> tuple:
    return r.name, r.verdict, r.figures, r.reasons


def make_report_doc(tmp_path: Path, name: str = "Ada Quill") -> dict:
    """The report of the retry of :func:`report_home` (the candidates: both)."""
    ws, _, vid = report_home(tmp_path, name)
    return build_report(ws, f"v{vid}")


@pytest.fixture
def report_doc(tmp_path) -> dict:
    return make_report_doc(tmp_path)


def test_every_check_has_a_row_with_its_verdict(report_doc):
    verdicts = {c["check_name"]: c["verdict"] for c in report_doc["version"]["checks"]}
    assert verdicts == {"forget": "pass", "retain": "pass", "utility": "no_signal",
                        "regression": "pass", "membership": "no_signal", "tell": "fail",
                        "int4": "pass", "relearn": "fail"}  # fmt: skip
    md = render(report_doc, "md")
    for row in ("| forget | yes | pass |", "| utility | yes | NO SIGNAL |",
                "| membership | yes | NO SIGNAL |", "| tell | yes | FAIL |",
                "| relearn | yes | FAIL |", "### membership: NO SIGNAL (mandatory)"):  # fmt: skip
        assert row in md, row
    # No signal is said in words: no evidence, not a pass.
    assert "NO SIGNAL: the check had no evidence to judge" in md
    assert "no utility items to compare" in md
    assert "no signal: the parent's Min-K%++ AUC" in md


def test_key_figures_stand_beside_their_limits(report_doc):
    checks = {c["check_name"]: c for c in report_doc["version"]["checks"]}
    forget = {(r["where"], r["figure"]): r["values"] for r in checks["forget"]["key_figures"]}
    acc = forget[("request 1, all", "acc")]
    assert acc["subject"] == pytest.approx(0.32) and acc["controls"] == pytest.approx(0.3)
    assert acc["gap"] == pytest.approx(0.02) and acc["parent gap"] == pytest.approx(0.6)
    assert acc["limit"] >= 0.1
    assert ("request 1, record", "leakage") in forget
    relearn = checks["relearn"]["key_figures"]
    attacks = {r["where"] for r in relearn}
    assert attacks == {"request 1, full fine-tuning, lr 0.0001, 20 steps (full)",
                       "request 1, full fine-tuning, lr 0.0001, 20 steps (int4)"}  # fmt: skip
    share = next(r["values"] for r in relearn if r["figure"] == "recall recovered share")
    assert share["share"] > 0.8 and share["limit"] == 0.2 and share["allowance"] is not None
    int4 = {r["figure"]: r["values"] for r in checks["int4"]["key_figures"]}
    assert int4["acc recovery"] == {"int4 gap": 0.02, "full gap": 0.02, "recovery": 0.0,
                                    "limit": 0.05}  # fmt: skip
    tell = {r["figure"]: r["values"] for r in checks["tell"]["key_figures"]}
    assert tell["repetition"]["auc"] == 1.0 and tell["repetition"]["limit |auc - 0.5|"] == 0.2
    retain = checks["retain"]["key_figures"][0]
    assert retain["values"]["n"] == 40 and retain["values"]["limit"] == 0.05
    md = render(report_doc, "md")
    # Every item moved alike, so the spread is zero: that is no resolution of 0.
    assert retain["values"]["min detectable drop"] == 0
    assert "all 40 items moved alike: 40 items show no resolution" in md
    assert "acc | n 12, subject 0.320, controls 0.300, gap 0.020, limit" in md
    assert "Min-K%++" in md and "recall recovered share" in md


def test_html_report_has_the_gap_plot(report_doc):
    gaps = report_doc["version"]["forget_gaps"]
    forget = next(c for c in report_doc["version"]["checks"] if c["check_name"] == "forget")
    limit = next(r["values"]["limit"] for r in forget["key_figures"]
                 if (r["where"], r["figure"]) == ("request 1, all", "acc"))  # fmt: skip
    # The limit the candidate's gap was judged against is drawn with the bars.
    assert gaps["acc"]["all"] == {"parent": 0.6, "candidate": 0.02, "candidate int4": 0.02,
                                  "limit": limit}  # fmt: skip
    [curve] = [c for c in report_doc["version"]["relearn_curves"] if c["figure"] == "recall"]
    assert curve["subject_after"] > curve["subject_before"] + 0.5  # relearnt
    assert curve["control_after"] == curve["control_before"]
    page = render(report_doc, "html")
    assert page.count('src="data:image/png;base64,') == 2 and "NO SIGNAL" in page


class Tables(HTMLParser):
    """The text of every table cell of a page, per table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self.cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables_of(page: str) -> list[list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def test_candidates_list_the_rejected_one_and_what_the_retry_changed(report_doc):
    [request] = report_doc["requests"]
    first, retry = request["candidates"]
    assert first["status"] == "rejected" and first["changed"] is None
    assert {"check": "forget", "verdict": "fail"} in first["not_passed"]
    assert retry["changed"] == {"learning_rate": {"from": 1e-3, "to": 5e-4},
                                "max_steps": {"from": 40, "to": 80}}  # fmt: skip
    assert retry["failed_before"] == ["forget"]  # what the retry was aimed at
    [table] = [
        t for t in tables_of(render(report_doc, "html")) if t[0][:2] == ["version", "status"]
    ]
    rows = {row[0]: row for row in table[1:]}
    assert rows["v1"][1] == "rejected" and "forget FAIL" in rows["v1"][5]
    assert rows["v1"][6] == "first attempt"
    assert rows["v2"][6] == "learning_rate 0.001 → 0.0005; max_steps 40 → 80 (aimed at forget)"
    md = render(report_doc, "md")
    assert "| v1 | rejected |" in md and "learning_rate 0.001 -> 0.0005; max_steps 40 -> 80 |" in md


def test_the_check_table_holds_figure_limit_and_verdict_side_by_side(report_doc):
    page = render(report_doc, "html")
    tables = tables_of(page)
    [gate] = [t for t in tables if t[0] == ["check", "mandatory", "verdict", "reasons"]]
    assert [row[0] for row in gate[1:]] == list(ALL_CHECKS)
    assert dict((row[0], row[2]) for row in gate[1:])["membership"] == "NO SIGNAL"
    forget = next(t for t in tables if t[0][:2] == ["where", "figure"] and "gap" in t[0])
    header = forget[0]
    acc = next(row for row in forget if row[:2] == ["request 1, all", "acc"])
    assert acc[header.index("gap")] == "0.020" and float(acc[header.index("limit")]) >= 0.1
    # Why each check exists, once per check, in the gate's order.
    [why] = [t for t in tables if t[0] == ["check", "mandatory", "why it exists"]]
    assert [row[0] for row in why[1:]] == list(ALL_CHECKS)
    assert [row[2] for row in why[1:]] == [CHECK_PURPOSE[c] for c in ALL_CHECKS]
    # No signal is said in words where the check's figures are.
    assert "no signal: the parent&#39;s Min-K%++ AUC" in page
    assert "no utility items to compare" in page


def test_dates_received_due_extended_and_completed(tmp_path):
    ws, rid, vid = report_home(tmp_path)
    open_doc = build_report(ws, "R-1")
    assert open_doc["requests"][0]["dates"]["completed"] is None
    extend(ws, rid, 5, "the subject was told", date.today())
    cancel(ws, rid, "withdrawn by the subject")
    doc = build_report(ws, "R-1")
    dates = doc["requests"][0]["dates"]
    [extended] = dates["extended"]
    assert extended["days"] == 5 and extended["due"] == doc["requests"][0]["due"]
    [cancelled] = [e for e in ws.ledger.events(rid) if e["kind"] == "request.status"
                   and e["data"]["to"] == "cancelled"]  # fmt: skip
    assert dates["completed"] == {"at": cancelled["ts"], "status": "cancelled"}
    assert doc["version"]["id"] == vid
    page = render(doc, "html")
    fields = {row[0]: row[1] for t in tables_of(page) for row in t if len(row) == 2}
    assert fields["received"] == dates["received"]
    assert fields["due"] == dates["due"]  # closed: no "days left"
    assert fields["extended"].startswith(cancelled["ts"][:10]) and "by 5 days" in fields["extended"]
    assert fields["completed"] == f"{cancelled['ts'][:19].replace('T', ' ')} UTC (cancelled)"
    md = render(doc, "md")
    assert f"| received / due | {dates['received']} / {dates['due']} |" in md
    assert "(cancelled) |" in md


def test_a_hostile_name_is_text_not_markup(tmp_path):
    name = '<img src=x onerror="alert(1)"> Eve | & <b>Mallory</b>'
    doc = make_report_doc(tmp_path, name)
    page = render(doc, "html")
    assert "<img src=x" not in page and "<b>Mallory" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; Eve | &amp; &lt;b&gt;Mallory" in page
    fields = {row[0]: row[1] for t in tables_of(page) for row in t if len(row) == 2}
    assert fields["subject"] == name
    # In Markdown a '|' would end the table cell.
    assert f"| subject | {name.replace('|', chr(92) + '|')} |" in render(doc, "md")
