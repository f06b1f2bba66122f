"""Promotion's rules on recorded verdicts (no model is loaded): a rejected version needs
--force --reason, no_signal is not a pass, and a policy with no mandatory check says so on
every promotion."""

from __future__ import annotations

import pytest
from clirun import cli
from pydantic import ValidationError

from forgetctl.app.home import resolve_home
from forgetctl.app.promote import promote, rollback
from forgetctl.app.workspace import Workspace
from forgetctl.core.errors import InvalidState, PromotionRefused
from forgetctl.core.policy import ALL_CHECKS, VerifyConfig
from forgetctl.store.ledger import open_ledger

POLICY = """regulation = "{name}"
title = "{name}"
deadline_days = 30
retention_days = 365

[verify]
{verify}
"""
POLICIES = {
    "partial": 'mandatory = ["forget", "retain"]',  # the other checks are optional
    "open": "mandatory = []\nallow_unverified = true",
}


@pytest.fixture
def home(tiny_lm_dir):
    """An initialised home with the policies above beside the packaged ones."""
    cli("init", "--model", str(tiny_lm_dir))
    home = resolve_home()
    for name, verify in POLICIES.items():
        (home.policies_dir / f"{name}.toml").write_text(POLICY.format(name=name, verify=verify))
    return home


def candidate(home, policy: str) -> int:
    """A request under ``policy`` and a candidate version on production for it (no weights:
    promotion reads only the ledger)."""
    ledger = open_ledger(home.ledger_path)
    rid = len(ledger.rows("SELECT id FROM requests")) + 1
    ledger.db["requests"].insert({"id": rid, "ref": f"R-{rid}", "policy": policy,
        "regulation": policy, "scope": "entity", "status": "applied", "received": "2026-11-01",
        "due": "2026-12-01", "subject_index": f"x{rid}", "created_at": "t",
        "updated_at": "t"})  # fmt: skip
    return ledger.versions.add(kind="adapter", parent=ledger.aliases.get(), status="candidate",
                               adapter_path=f"/nowhere/{rid}", adapter_sha256="0" * 64,
                               requests=[rid])  # fmt: skip


def record(home, vid: int, verdicts: dict[str, str]) -> None:
    ledger = open_ledger(home.ledger_path)
    for check, verdict in verdicts.items():
        ledger.verifications.add(vid, check, verdict, {}, [])
    if any(v != "pass" for v in verdicts.values()):  # what the verify step sets
        ledger.versions.set_status(vid, "rejected")


def test_rejected_version_needs_force_and_reason(home):
    vid = candidate(home, "partial")
    ws = Workspace.open(home)
    mandatory = ws.resolved(vid).mandatory
    optional = [c for c in ALL_CHECKS if c not in mandatory]
    # Every mandatory check passed; two optional ones did not (a failure, nothing to judge):
    # before, promote took this rejected version silently.
    record(home, vid, {**dict.fromkeys(mandatory, "pass"), optional[0]: "fail",
                       optional[1]: "no_signal"})  # fmt: skip
    with pytest.raises(PromotionRefused) as refused:
        promote(ws, vid)
    message = str(refused.value)
    assert "rejected" in message
    assert f"failed: {optional[0]}" in message and f"no signal: {optional[1]}" in message
    with pytest.raises(InvalidState, match="--reason"):
        promote(ws, vid, force=True)
    assert ws.ledger.aliases.get() == 0
    assert promote(ws, vid, force=True, reason="accepted by the DPO") == []
    assert ws.ledger.aliases.get() == vid
    [forced] = [e for e in ws.ledger.events() if e["kind"] == "version.forced_promotion"]
    assert forced["data"]["problems"] == [
        "rejected",
        f"failed: {optional[0]}",
        f"no signal: {optional[1]}",
    ]


def test_no_signal_on_a_mandatory_check_is_not_a_pass(home):
    vid = candidate(home, "gdpr")  # the packaged policy
    ws = Workspace.open(home)
    mandatory = sorted(ws.resolved(vid).mandatory, key=ALL_CHECKS.index)
    record(home, vid, {**dict.fromkeys(mandatory, "pass"), mandatory[0]: "no_signal"})
    with pytest.raises(PromotionRefused, match=f"no signal: {mandatory[0]}"):
        promote(ws, vid)
    refused = cli("promote", str(vid), code=PromotionRefused.exit_code)
    assert f"no signal: {mandatory[0]}" in refused.stderr
    assert ws.ledger.aliases.get() == 0


def test_an_empty_mandatory_list_must_allow_unverified():
    with pytest.raises(ValidationError, match="allow_unverified"):
        VerifyConfig(mandatory=[])
    assert VerifyConfig(mandatory=[], allow_unverified=True).allow_unverified


def test_unverified_promotion_warns_every_time_and_is_recorded(home):
    ledger = open_ledger(home.ledger_path)
    for attempt in range(2):  # promote, roll back, promote another: warned both times
        vid = candidate(home, "open")
        record(home, vid, {"forget": "pass"})
        done = cli("promote", str(vid))
        [warning] = [line for line in done.stderr.splitlines() if "warning" in line]
        assert "UNVERIFIED" in warning
        assert f"not run: {', '.join(c for c in ALL_CHECKS if c != 'forget')}" in warning
        moved = [e for e in ledger.events() if e["kind"] == "alias.moved"][-1]
        assert moved["version_id"] == vid and moved["data"]["unverified"] is True
        assert moved["data"]["not_run"] == [c for c in ALL_CHECKS if c != "forget"]
        if attempt == 0:
            rollback(ledger)


def test_every_check_passed_under_the_open_policy_is_no_warning(home):
    vid = candidate(home, "open")
    record(home, vid, dict.fromkeys(ALL_CHECKS, "pass"))
    done = cli("promote", str(vid))
    assert "warning" not in done.stderr
    moved = [e for e in open_ledger(home.ledger_path).events() if e["kind"] == "alias.moved"][-1]
    assert "unverified" not in moved["data"]
