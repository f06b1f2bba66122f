"""The real default model through the CLI, as a new user meets it: pull, init, ask."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forgetctl.cli.app import app
from forgetctl.core.errors import ModelMissing

runner = CliRunner()


@pytest.mark.slow
def test_pull_init_ask_on_smollm2(forgetctl_home, skip_unpullable):
    pulled = runner.invoke(app, ["model", "pull", "smollm2-135m", "--json"])
    if pulled.exit_code == ModelMissing.exit_code:
        skip_unpullable(pulled.stderr)
    assert pulled.exit_code == 0, pulled.output
    info = json.loads(pulled.stdout)
    assert len(info["weights_sha256"]) == 64
    again = runner.invoke(app, ["model", "pull", "smollm2-135m"])  # cached: no second download
    assert again.exit_code == 0, again.output

    init = runner.invoke(app, ["init", "--model", "smollm2-135m", "--json"])
    assert init.exit_code == 0, init.output
    assert json.loads(init.stdout)["production"] == 0

    answer = runner.invoke(app, ["model", "ask", "What is the capital of France?"])
    assert answer.exit_code == 0, answer.output
    assert "paris" in answer.stdout.lower()
    assert runner.invoke(app, ["ledger", "verify"]).exit_code == 0
