"""The Python API (``forgetctl.Forgetctl``) on the tiny model: the same operations as the
command line, the same ledger, the same errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tinylm
from test_pipeline import records_for, write_policy

import forgetctl
from forgetctl.core.errors import InvalidState, NotFound


def test_the_api_takes_a_request_through_the_steps(tmp_path, tiny_lm_dir, progress_log):
    home = tmp_path / "home"
    fc = forgetctl.Forgetctl.init(
        home, model=str(tiny_lm_dir),
        retain_corpus=tinylm.write_tofu_jsonl(tmp_path / "corpus.jsonl"),
        control_corpus=tinylm.write_controls_jsonl(tmp_path / "controls.jsonl"),
    )  # fmt: skip
    tinylm.write_general_jsonl(home / "general.jsonl")
    write_policy(home)
    subject = tinylm.TINY_SUBJECTS[0]
    lines = Path(records_for(subject, tmp_path)).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    rid = fc.add_request({"ref": "API-1", "regulation": "gdpr",
                          "subject": {"name": subject}, "records": records})  # fmt: skip
    # A known ref is the existing request, as `request add` answers.
    assert fc.add_request({"ref": "API-1", "regulation": "gdpr",
                           "subject": {"name": subject}}) == rid  # fmt: skip
    assert [r["ref"] for r in fc.requests()] == ["API-1"]
    # A second handle on the same home sees the same ledger (refs resolve, like the CLI's).
    fc = forgetctl.Forgetctl.open(home)
    assert fc.request_id("API-1") == rid
    assert fc.run(dry_run=True).outcomes[0].steps[0] == "plan"

    assert fc.plan("API-1", progress=progress_log)["status"] == "planned"
    assert any("probing the model" in m for m in progress_log.messages)
    version = fc.apply(rid, progress=progress_log)
    assert {b[0] for b in progress_log.bars} >= {"unlearning"}
    status, results = fc.verify(version, skip=("int4", "relearn"), reason="api test")
    assert [r.name for r in results] == ["forget", "retain", "utility", "regression",
                                         "membership", "tell"]  # fmt: skip
    assert status in ("candidate", "rejected")
    doc = fc.report("API-1")
    assert doc["requests"][0]["ref"] == "API-1" and doc["version"]["id"] == version
    assert "# forgetctl audit report" in fc.report(rid, fmt="md")
    assert fc.verify_ledger().ok

    # The CLI's refusals, as its typed errors with their exit codes.
    with pytest.raises(NotFound) as missing:
        fc.cancel("NOPE-9", "typo")
    assert missing.value.exit_code == 3
    with pytest.raises(InvalidState):
        fc.retry(rid, "not failed")
    fc.cancel(rid, "withdrawn")
    assert fc.requests(status="cancelled")[0]["id"] == rid
