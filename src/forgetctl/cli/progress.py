"""Rich progress displays on stderr for the long steps (training, verification)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from forgetctl.cli import common


@contextmanager
def training_bar(label: str, quiet: bool = False) -> Iterator[Callable[[int, int, dict], None]]:
    """A bar with step and losses; yields the callback the unlearning loop calls."""
    if quiet:
        yield lambda step, total, losses: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=common.err, transient=True) as bar:
        task = bar.add_task(label, total=None, losses="")

        def update(step: int, total: int, losses: dict) -> None:
            text = " ".join(f"{k}={v:.3f}" for k, v in losses.items() if isinstance(v, float))
            bar.update(task, completed=step, total=total, losses=text)

        yield update


@contextmanager
def status(label: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner whose text follows the step's messages."""
    if quiet:
        yield lambda message: None
        return
    with common.err.status(label) as spinner:
        yield lambda message: spinner.update(f"{label}: {message}")
