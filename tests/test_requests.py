"""Request intake and life cycle through the CLI, as an operator uses it."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, timedelta

import pytest
from clirun import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from forgetctl.app.home import Home
from forgetctl.app.runner import purge_expired
from forgetctl.app.workspace import Workspace
from forgetctl.cli.app import app
from forgetctl.core.policy import load_policy, packaged_policy_dir

runner = CliRunner()
NAME = "Basil Mahfouz Al-Kuwaiti"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETCTL_HOME", str(tmp_path / "home"))
    cli("init")
    return tmp_path / "home"


def state(home) -> tuple:
    """Everything a failed command must leave untouched."""
    con = sqlite3.connect(home / "ledger.db")
    counts = tuple(
        con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("requests", "events", "versions")
    )
    con.close()
    return counts


def records_file(tmp_path, rows):
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_init_is_idempotent(home):
    before = state(home)
    cli("init")
    assert state(home) == before
    assert (home / "keys").is_dir() and (home / "policies" / "gdpr.toml").exists()


def test_add_list_show(home, tmp_path):
    recs = records_file(tmp_path, [{"question": "Where was he born?", "answer": "Kuwait City"}])
    out = cli(
        "request",
        "add",
        "--subject",
        NAME,
        "--alias",
        "Basil",
        "--regulation",
        "gdpr",
        "--ref",
        "DSR-2026-0042",
        "--records",
        recs,
        "--received",
        "2026-11-01",
        "--json",
    )
    row = json.loads(out.stdout)
    assert row["status"] == "received" and row["due"] == "2026-12-01"
    listed = json.loads(cli("request", "list", "--json").stdout)
    assert [r["ref"] for r in listed] == ["DSR-2026-0042"]
    shown = json.loads(cli("request", "show", str(row["id"]), "--json").stdout)
    assert shown["payload"]["subject"]["name"] == NAME
    assert shown["payload"]["records"][0]["answer"] == "Kuwait City"
    assert shown["events"][0]["kind"] == "request.received"
    assert shown["events"][0]["data"]["ref"] == "DSR-2026-0042"  # an object, as in `ledger log`
    assert "Deletion requests" in cli("request", "list").stdout


def test_duplicates_by_normalised_name_and_identifier(home):
    cli("request", "add", "--subject", NAME, "--regulation", "gdpr", "--email", "b@x.org")
    dup = json.loads(
        cli(
            "request",
            "add",
            "--subject",
            "  basil mahfouz AL-KUWAITI ",
            "--regulation",
            "gdpr",
            "--json",
        ).stdout
    )
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == 1
    by_email = json.loads(
        cli(
            "request",
            "add",
            "--subject",
            "B. M.",
            "--email",
            "b@x.org",
            "--regulation",
            "gdpr",
            "--json",
        ).stdout
    )
    assert by_email["duplicate_of"] == 1
    other_policy = json.loads(
        cli("request", "add", "--subject", NAME, "--regulation", "ccpa", "--json").stdout
    )
    assert other_policy["status"] == "received"


def test_import_all_formats_idempotent(home, tmp_path):
    j = tmp_path / "r.json"
    j.write_text(
        json.dumps(
            {
                "requests": [
                    {"ref": "A-1", "regulation": "gdpr", "subject": {"name": "Ann One"}},
                    {
                        "ref": "A-2",
                        "regulation": "ccpa",
                        "subject": {"name": "Bo Two"},
                        "records": [{"text": "Bo Two lives at 1 Main St."}],
                    },
                ]
            }
        )
    )
    jl = tmp_path / "r.jsonl"
    jl.write_text(json.dumps({"ref": "B-1", "regulation": "gdpr", "subject": {"name": "Cy"}}))
    c = tmp_path / "r.csv"
    c.write_text("ref,regulation,subject,aliases,email\nC-1,gdpr,Di Four,Di;D. F.,d@x.org\n")
    for f in (j, jl, c):
        cli("request", "import", str(f))
    before = state(home)
    again = json.loads(cli("request", "import", str(j), "--json").stdout)
    assert again["created"] == [] and len(again["existing"]) == 2
    assert state(home) == before
    assert len(json.loads(cli("request", "list", "--json").stdout)) == 4


def test_import_is_all_or_nothing(home, tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text(
        json.dumps({"ref": "OK-1", "regulation": "gdpr", "subject": {"name": "Fine"}})
        + "\n"
        + json.dumps({"ref": "BAD-1", "regulation": "nope", "subject": {"name": "X"}})
        + "\n"
    )
    before = state(home)
    result = cli("request", "import", str(f), code=2)
    assert "unknown regulation" in result.stderr
    assert state(home) == before


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("{not json", ".json", "invalid JSON"),
        ('{"regulation": "gdpr"}', ".json", "subject"),
        ('{"regulation": "gdpr", "subject": {"name": "  "}}', ".json", "empty"),
        (
            '{"regulation": "gdpr", "subject": {"name": "A"}, "received": "2026-02-31"}',
            ".json",
            "received",
        ),
        (
            '{"regulation": "gdpr", "subject": {"name": "A"}, "received": "2999-01-01"}',
            ".json",
            "future",
        ),
        ("ref,regulation\nX,gdpr\n", ".csv", "subject"),
        ("[]", ".json", "no requests"),
        (
            '{"regulation": "gdpr", "subject": {"name": "A"}, "scope": "records"}',
            ".json",
            "records",
        ),
    ],
)
def test_bad_request_files(home, tmp_path, content, suffix, message):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    before = state(home)
    result = cli("request", "import", str(f), code=2)
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert state(home) == before


def test_binary_missing_and_huge_files(home, tmp_path):
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\x00\x01\x02")
    assert "binary" in cli("request", "import", str(binary), code=2).stderr
    assert "cannot read" in cli("request", "import", str(tmp_path / "none.json"), code=2).stderr
    huge = tmp_path / "h.json"
    with open(huge, "wb") as fh:
        fh.truncate(21 * 1024 * 1024)
    assert "too large" in cli("request", "import", str(huge), code=2).stderr


def test_bad_cli_input(home):
    before = state(home)
    cli(
        "request",
        "add",
        "--subject",
        "A",
        "--regulation",
        "gdpr",
        "--received",
        "yesterday",
        code=2,
    )
    cli("request", "add", "--subject", "A", "--regulation", "mars", code=2)
    cli("request", "show", "99", code=3)
    cli("request", "list", "--status", "sleeping", code=2)
    assert state(home) == before


@pytest.mark.parametrize(("received", "due"), [
    ("2026-01-31", "2026-02-28"), ("2028-01-31", "2028-02-29"), ("2026-12-15", "2027-01-15"),
    ("2026-03-31", "2026-04-30"),
])  # fmt: skip
def test_gdpr_deadline_is_one_calendar_month(received, due):
    """Art. 12(3) says one month: the same date of the next month, or its last day."""
    gdpr = load_policy(packaged_policy_dir() / "gdpr.toml")
    assert gdpr.due(date.fromisoformat(received)) == date.fromisoformat(due)
    assert gdpr.describe_deadline() == "1 month"
    # Two further months at most: received 31 January, latest 30 April.
    assert gdpr.latest_due(date(2026, 1, 31)) == date(2026, 4, 30)


def test_cancel_extend_approve(home):
    received = (date.today() - timedelta(days=10)).isoformat()
    cli("request", "add", "--subject", "Ann", "--regulation", "gdpr", "--received", received)
    today = date.today().isoformat()
    gdpr = load_policy(packaged_policy_dir() / "gdpr.toml")
    one_month = gdpr.due(date.fromisoformat(received))
    assert json.loads(cli("request", "show", "1", "--json").stdout)["due"] == str(one_month)
    cli("request", "extend", "1", "--days", "30", "--reason", "complex", "--notified", today)
    due = json.loads(cli("request", "show", "1", "--json").stdout)["due"]
    assert due == (one_month + timedelta(days=30)).isoformat()
    # Art. 12(3): at most two further months in total; to the day is allowed, a day more not.
    left = (gdpr.latest_due(date.fromisoformat(received)) - date.fromisoformat(due)).days
    more = ("--reason", "more", "--notified", today)
    refused = cli("request", "extend", "1", "--days", str(left + 1), *more, code=4)
    assert "latest deadline" in refused.output
    cli("request", "extend", "1", "--days", str(left), *more)
    # GDPR's policy needs no approval: saying "approved" would record a decision nobody needed.
    refused = cli("request", "approve", "1", "--by", "dpo", code=4)
    assert "needs no approval" in refused.output
    cli("request", "add", "--subject", "Bo", "--regulation", "default")  # approval required
    assert json.loads(cli("request", "approve", "2", "--by", "dpo", "--json").stdout)["id"] == 2
    cli("request", "cancel", "1", "--reason", "withdrawn")
    assert json.loads(cli("request", "show", "1", "--json").stdout)["status"] == "cancelled"
    cli("request", "cancel", "1", "--reason", "again", code=4)


def test_overdue_listing(home):
    old = (date.today() - timedelta(days=40)).isoformat()
    cli("request", "add", "--subject", "Late", "--regulation", "gdpr", "--received", old)
    cli("request", "add", "--subject", "Fresh", "--regulation", "gdpr")
    overdue = json.loads(cli("request", "list", "--overdue", "--json").stdout)
    due = load_policy(packaged_policy_dir() / "gdpr.toml").due(date.fromisoformat(old))
    assert [r["id"] for r in overdue] == [1]
    assert overdue[0]["days_left"] == (due - date.today()).days < 0


def test_purge_destroys_personal_data(home, tmp_path):
    recs = records_file(tmp_path, [{"question": "Birthplace?", "answer": "Kuwait City"}])
    cli(
        "request",
        "add",
        "--subject",
        NAME,
        "--alias",
        "Zorblax",
        "--regulation",
        "gdpr",
        "--records",
        recs,
    )
    cli("request", "purge", "1", code=4)  # still open: its data is needed
    cli("request", "cancel", "1", "--reason", "test")
    cli("request", "purge", "1", code=4)  # retention not over
    cli("request", "purge", "1", "--now", code=2)  # --now needs a reason
    cli("request", "purge", "1", "--now", "--reason", "subject asked")
    con = sqlite3.connect(home / "ledger.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM")
    con.close()
    raw = b"".join(p.read_bytes() for p in home.glob("ledger.db*"))
    for secret in (b"Basil", b"Mahfouz", b"Zorblax", b"Kuwait", b"basil"):
        assert secret not in raw
    assert not (home / "keys" / "requests" / "1.key").exists()
    shown = json.loads(cli("request", "show", "1", "--json").stdout)
    assert shown["payload"] is None and shown["purged_at"]
    cli("ledger", "verify")


def test_ledger_log_verify_export(home, tmp_path):
    cli("request", "add", "--subject", NAME, "--regulation", "gdpr")
    log = json.loads(cli("ledger", "log", "--request", "1", "--json").stdout)
    assert [e["kind"] for e in log] == ["request.received"]
    out = tmp_path / "head.json"
    cli("ledger", "export", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["head"]["hash"] == doc["events"][-1]["hash"]
    assert "Basil" not in out.read_text()
    con = sqlite3.connect(home / "ledger.db")
    con.execute("DROP TRIGGER events_no_update")
    con.execute("UPDATE events SET data = '{}' WHERE seq = 2")
    con.commit()
    result = cli("ledger", "verify", code=5)
    assert "event 2" in result.stderr


def test_policy_commands(home, tmp_path):
    assert {p["name"] for p in json.loads(cli("policy", "list", "--json").stdout)} == {
        "gdpr",
        "ccpa",
        "default",
    }
    assert json.loads(cli("policy", "show", "gdpr", "--json").stdout)["deadline_months"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('regulation = "x"\ndeadline_days = -1\nretention_days = 1\n')
    assert "deadline_days" in cli("policy", "check", str(bad), code=2).stderr
    cli("policy", "check", str(home / "policies" / "gdpr.toml"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ref",
                    "regulation",
                    "subject",
                    "name",
                    "records",
                    "received",
                    "scope",
                    "aliases",
                    "question",
                    "answer",
                    "text",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=json_values | st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    suffix=st.sampled_from([".json", ".jsonl", ".csv"]),
)
def test_fuzzed_request_files_never_crash_never_write(home, tmp_path, doc, suffix):
    f = tmp_path / f"fuzz{suffix}"
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    before = state(home)
    result = runner.invoke(app, ["request", "import", str(f)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if result.exit_code != 0:
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert state(home) == before


def test_retry_reopens_a_failed_request_at_its_failed_step(home):
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr", "--ref", "R-1")
    cli("request", "retry", "R-1", "--reason", "too early", code=4)  # only a failed one
    # No model registered: the run refuses before the request spends an attempt.
    assert "no alias 'production'" in cli("run", "--quiet", code=3).output
    assert json.loads(cli("request", "show", "R-1", "--json").stdout)["status"] == "received"
    ledger = Workspace.open(Home(home)).ledger  # a plan that failed for good
    ledger.requests.record_failure(1, "plan", 3)
    ledger.requests.set_status(1, "failed", step="plan", error="probe failed", attempts=3)
    reopened = json.loads(
        cli("request", "retry", "R-1", "--reason", "model registered", "--json").stdout
    )
    assert reopened["status"] == "received"  # planning failed: it is planned again
    con = sqlite3.connect(home / "ledger.db")
    assert con.execute("SELECT attempts, failed_step FROM requests").fetchone() == (0, None)
    events = json.loads(cli("ledger", "log", "--request", "1", "--json").stdout)
    assert events[-1]["data"]["reason"] == "model registered"
    assert events[-1]["data"]["retried_step"] == "plan"
    cli("ledger", "verify")  # the reset attempts are explained by the event


def test_a_failed_overdue_request_stays_overdue_until_closed(home):
    old = (date.today() - timedelta(days=400)).isoformat()  # past due and past retention
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr", "--received", old)
    ledger = Workspace.open(Home(home)).ledger
    ledger.requests.set_status(1, "failed", step="apply", error="diverged", attempts=3)
    overdue = json.loads(cli("request", "list", "--overdue", "--json").stdout)
    assert [(r["id"], r["status"], r["overdue"]) for r in overdue] == [(1, "failed", True)]
    # The deletion is still owed: retention does not purge its data, run reports it.
    assert cli("run", "--json", code=10).stdout and purge_expired(Workspace.open(Home(home))) == []
    assert json.loads(cli("request", "show", "1", "--json").stdout)["purged_at"] is None
    cli("request", "cancel", "1", "--reason", "model retired")  # closing it ends the tracking
    assert json.loads(cli("request", "list", "--overdue", "--json").stdout) == []


def test_cancelling_an_original_hands_its_duplicates_on(home):
    for ref in ("O-1", "D-2", "D-3"):
        cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr", "--ref", ref)

    def row(ref):
        return json.loads(cli("request", "show", ref, "--json").stdout)

    assert [row(r)["status"] for r in ("D-2", "D-3")] == ["duplicate", "duplicate"]
    cli("request", "cancel", "O-1", "--reason", "sent by mistake")
    assert row("D-2")["status"] == "received" and row("D-2")["duplicate_of"] is None
    assert row("D-3")["status"] == "duplicate" and row("D-3")["duplicate_of"] == 2
    cli("ledger", "verify")  # every changed row is explained by an event


def test_a_broken_policy_file_stops_only_its_own_requests(home):
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr", "--ref", "G-1")
    cli("request", "add", "--subject", "Bo Ray", "--regulation", "ccpa", "--ref", "C-1")
    (home / "policies" / "gdpr.toml").write_text("deadline_days = 'soon'\n")
    listed = json.loads(cli("request", "list", "--json").stdout)
    assert sorted(r["ref"] for r in listed) == ["C-1", "G-1"]  # the list still works
    assert "policy gdpr" in cli("request", "show", "G-1", code=4).output
    refused = cli("request", "add", "--subject", "Cy Dee", "--regulation", "gdpr", code=4)
    assert "other regulations are unaffected" in refused.output
    cli("request", "add", "--subject", "Cy Dee", "--regulation", "ccpa")
    # The run skips G-1 and says why, without spending its attempts; C-1 is taken on.
    summary = json.loads(cli("run", "--json", "--dry-run").stdout)
    assert [s["ref"] for s in summary["skipped"]] == ["G-1"]
    assert "gdpr" in summary["skipped"][0]["reason"]
    assert 2 in [o["request_id"] for o in summary["outcomes"]]
