"""One shape of progress report for every long step (planning, training, verification).

A step calls ``progress(message)`` when it starts something worth a line in the log, and
``progress(label, done, total, **figures)`` as work with a length advances (answers
generated, training steps, attack steps). The command line draws the first as log lines
and the second as bars; a library caller may pass anything of this shape, or nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(
        self, label: str, done: int | None = None, total: int | None = None, /, **figures: float
    ) -> None: ...


def silent(
    label: str, done: int | None = None, total: int | None = None, /, **figures: float
) -> None:
    """The progress of a caller that wants none."""
