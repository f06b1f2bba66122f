"""The forgetctl command line, run in-process for tests."""

from __future__ import annotations

from typer.testing import CliRunner

from forgetctl.cli.app import app

runner = CliRunner()


def cli(*args: str, code: int | None = 0):
    """Run ``forgetctl ARGS``; assert its exit code is ``code`` (any code when None)."""
    result = runner.invoke(app, list(args))
    if code is not None:
        assert result.exit_code == code, (args, result.output, result.exception)
    return result
