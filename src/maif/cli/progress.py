"""Progress bars for the commands that move many bytes (`maif pack`, `append`, `unpack`, `verify`).

A bar (bytes done and total, rate, time left) is drawn on stderr only when stderr is a terminal and the
command was not given ``--quiet``: in a pipe, a file or CI nothing at all is written, and stdout (where
``--json`` puts its one document) is never touched. Rich redirects what the command prints to stdout
above the bar only when stdout is that terminal too, so output redirected to a file stays in the file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def _nothing(size: int) -> None:
    return None


class TransferProgress:
    """Byte progress of one command: :meth:`task` returns an ``advance(bytes)`` function per phase."""

    def __init__(self, *, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        if enabled:
            # Imported here: a bar is drawn only on a terminal, and `maif` should start fast elsewhere.
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            console = console or Console(stderr=True)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
                redirect_stdout=sys.stdout.isatty(),
                redirect_stderr=True,
            )

    @classmethod
    def for_terminal(cls, *, quiet: bool) -> TransferProgress:
        """Enabled only when stderr is a terminal and ``--quiet`` was not given."""
        return cls(enabled=not quiet and sys.stderr.isatty())

    def task(self, description: str, total_bytes: int | None) -> Callable[[int], None]:
        """A new bar; call the returned function with each number of bytes done."""
        progress = self._progress
        if progress is None:
            return _nothing
        task_id: TaskID = progress.add_task(description, total=total_bytes)

        def advance(size: int) -> None:
            progress.advance(task_id, size)

        return advance

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["TransferProgress"]
