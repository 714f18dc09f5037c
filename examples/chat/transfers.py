"""File transfers in progress, drawn as progress bars in pigeon-chat's bottom toolbar.

The SDK reports progress with a callback ``(bytes_done, total)``, possibly from another
thread; :meth:`Transfers.callback` hands each report to the event loop, which updates
a ``rich`` progress task and asks the prompt to redraw (at most every
``REDRAW_INTERVAL_S``). :meth:`Transfers.render` draws every transfer, one line each,
as ANSI text for prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["Transfer", "Transfers"]

REDRAW_INTERVAL_S: Final = 0.1
"""Redraws per second are bounded: a fast transfer reports thousands of chunks."""
Progress_ = Callable[[int, int], None]


@dataclass
class Transfer:
    label: str
    task: TaskID
    done: int = 0
    total: int = 0


class Transfers:
    """The transfers running now; *redraw* asks the terminal to draw them again."""

    def __init__(self, redraw: Callable[[], None]) -> None:
        self._redraw = redraw
        self._loop = asyncio.get_running_loop()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=None),
            TextColumn("{task.percentage:>3.0f}%"), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), auto_refresh=False, expand=True)
        self._running: list[Transfer] = []
        self._last_redraw = 0.0

    def __bool__(self) -> bool:
        return bool(self._running)

    def start(self, label: str, total: int = 0) -> Transfer:
        task = self._progress.add_task(label, total=total or None)
        transfer = Transfer(label=label, task=task, total=total)
        self._running.append(transfer)
        self._redraw()
        return transfer

    def callback(self, transfer: Transfer) -> Progress_:
        """The SDK's ``progress=`` argument for *transfer* (callable from any thread)."""
        def report(done: int, total: int) -> None:
            self._loop.call_soon_threadsafe(self._update, transfer, done, total)
        return report

    def _update(self, transfer: Transfer, done: int, total: int) -> None:
        transfer.done, transfer.total = done, total
        self._progress.update(transfer.task, completed=done, total=total or None)
        now = time.monotonic()
        if now - self._last_redraw >= REDRAW_INTERVAL_S or (total and done >= total):
            self._last_redraw = now
            self._redraw()

    def finish(self, transfer: Transfer) -> None:
        if transfer in self._running:
            self._running.remove(transfer)
            self._progress.remove_task(transfer.task)
            self._redraw()

    def render(self, width: int) -> str:
        """Every running transfer as one line of ANSI text *width* columns wide."""
        if not self._running:
            return ""
        console = Console(file=io.StringIO(), width=max(width, 40), force_terminal=True,
                          color_system="standard", legacy_windows=False)
        with console.capture() as captured:
            console.print(self._progress.get_renderable())
        return captured.get().rstrip("\n")
