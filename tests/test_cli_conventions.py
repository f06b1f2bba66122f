"""The command line's conventions (issue 21): --version, -h, an example in every command's
help, --json on every command that changes state, refs wherever a request is named,
full-width output when piped, and a rollback that asks first."""

from __future__ import annotations

import json

import pytest
from clirun import cli
from typer.main import get_command

from forgetctl import __version__
from forgetctl.cli.app import app


def _leaves(group=None, path=()):  # type: ignore[no-untyped-def]
    group = group or get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


LEAVES = dict(_leaves())
READ_ONLY_WITHOUT_JSON = {("report",)}  # its --format json is the JSON document


def test_version_and_short_help():
    assert cli("--version").stdout.strip() == f"forgetctl {__version__}"
    assert "request cancel [OPTIONS] {REQUEST}" in cli("request", "cancel", "-h").stdout


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_command_has_an_example_and_json(path):
    text = cli(*path, "--help").stdout
    assert "Example: forgetctl " in text, f"forgetctl {' '.join(path)} --help shows no example"
    assert "<bool>" not in text  # a flag takes no value
    names = {opt for p in LEAVES[path].params for opt in p.opts}
    assert "--json" in names or path in READ_ONLY_WITHOUT_JSON


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETCTL_HOME", str(tmp_path / "home"))
    cli("init")
    return tmp_path / "home"


def test_requests_are_named_by_ref_and_changes_answer_in_json(home):
    ref = "DSR-2026-ABCDEFGHIJKLMNOPQRSTUVWXYZ-long-ref"
    cli("request", "add", "--subject", "Ada Quill", "--regulation", "gdpr", "--ref", ref)
    listed = cli("request", "list").stdout  # piped: the ref is not cut to fit 80 columns
    assert ref in listed
    assert json.loads(cli("request", "show", ref, "--json").stdout)["id"] == 1
    extended = cli("request", "extend", ref, "--days", "10", "--reason", "complex",
                   "--notified", "2026-12-01", "--json")  # fmt: skip
    assert json.loads(extended.stdout)["ref"] == ref
    cancelled = json.loads(cli("request", "cancel", ref, "--reason", "withdrawn", "--json").stdout)
    assert cancelled["status"] == "cancelled"
    missing = cli("request", "show", "DSR-nope", code=3).output
    assert "no request with id or ref 'DSR-nope'" in missing


def test_rollback_asks_first(tmp_path, monkeypatch, tiny_lm_dir):
    monkeypatch.setenv("FORGETCTL_HOME", str(tmp_path / "home"))
    cli("init", "--model", str(tiny_lm_dir))
    # Without --yes and with no one to say yes: nothing is tried, nothing is written.
    before = cli("ledger", "log", "--json").stdout
    result = cli("rollback", code=1)
    assert "Roll production back" in result.output and "aborted" in result.output
    assert cli("ledger", "log", "--json").stdout == before


def test_plan_show_is_a_real_sub_command(home):
    """`plan show --help` is show's help, `plan REQUEST` is `plan make REQUEST`, and a
    request is named by id or ref in both."""
    assert "plan show [OPTIONS] {REQUEST}" in cli("plan", "show", "--help").stdout
    assert "plan make [OPTIONS] [REQUEST]..." in cli("plan", "make", "-h").stdout
    cli("request", "add", "--subject", "Ann Lee", "--regulation", "gdpr", "--ref", "R-1")
    assert "request 1 has no plan" in cli("plan", "show", "R-1", code=4).output
    assert "no request with id or ref 'R-9'" in cli("plan", "R-9", code=3).output
    # `plan` alone plans every received request: here R-1, which needs a registered model.
    assert "no alias 'production'" in cli("plan", "--json", code=3).output
