"""One Rich live display on stderr for a command's long work (``core.progress`` reports):
messages become lines above it, and work with a length a bar (answers generated, training
and attack steps), replaced when the next kind of work starts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from forgetctl.cli import common
from forgetctl.core.progress import Progress as Report


def say_on_stderr(message: str) -> None:
    common.err.print(message, markup=False, highlight=False)


class _Display:
    def __init__(self, bars: Progress | None, say: Callable[[str], None]) -> None:
        self.bars, self.say = bars, say
        self.task, self.label = None, None

    def __call__(
        self, label: str, done: int | None = None, total: int | None = None, /, **figures: float
    ) -> None:
        if done is None:
            self.say(label)
            return
        if self.bars is None:
            return
        if label != self.label:
            if self.task is not None:
                self.bars.remove_task(self.task)
            self.task, self.label = self.bars.add_task(label, total=total, figures=""), label
        text = " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in figures.items())  # fmt: skip
        self.bars.update(self.task, completed=done, total=total, figures=text)


@contextmanager
def live(quiet: bool = False, say: Callable[[str], None] | None = None) -> Iterator[Report]:
    """The progress callback for the work inside the block. ``say`` takes the messages
    (default: lines on stderr; a logger's ``info`` whose handler writes to ``common.err``
    prints them above the bars too). ``quiet``: no bars, and messages only to a ``say``."""
    if quiet:
        yield _Display(None, say or (lambda _message: None))
        return
    say = say or say_on_stderr
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[figures]}"),
    )
    with Progress(*columns, console=common.err, transient=True) as bars:
        yield _Display(bars, say)
