"""Console output: rich progress bars on a terminal, plain timestamped lines otherwise.

CI logs and redirected output stay free of control characters; ``quiet``
silences progress but keeps errors and the final summary.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console as RichConsole
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def printable(text: str) -> str:
    """Text safe for any UTF-8 stream: undecodable file-name bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Console:
    """Where fastvip commands print. ``is_tty`` decides rich vs plain output."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._rich = RichConsole(file=self.stream, highlight=False,
                                 force_terminal=self.is_tty, no_color=not self.is_tty,
                                 soft_wrap=True)

    def log(self, message: str) -> None:
        """An informational line (suppressed by ``quiet``)."""
        if not self.quiet:
            self.print(message)

    def print(self, message: str = "") -> None:
        """A line that is always shown (summaries, results)."""
        message = printable(message)
        if self.is_tty:
            self._rich.print(message, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    def table(self, title: str, rows: list[tuple[str, str]]) -> None:
        """A two-column summary table (plain ``key: value`` lines off a terminal)."""
        if self.is_tty:
            from rich.table import Table
            t = Table(title=title, show_header=False)
            for k, v in rows:
                t.add_row(printable(k), printable(v))
            self._rich.print(t)
        else:
            print(title, file=self.stream)
            for k, v in rows:
                print(printable(f"  {k}: {v}"), file=self.stream)
            self.stream.flush()

    @contextmanager
    def progress(self, description: str, total: int, unit: str = "img") -> Iterator["Bar"]:
        """A progress bar with rate and ETA; plain lines every few seconds off a terminal."""
        bar = Bar(self, description, total, unit)
        try:
            yield bar
        finally:
            bar.close()


class Bar:
    PLAIN_EVERY_S = 10.0

    def __init__(self, console: Console, description: str, total: int, unit: str):
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.done = 0
        self.fields: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self._last_plain = self.t0
        self._progress = None
        if console.is_tty and not console.quiet:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console._rich, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, rate="", extra="")

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self.console.quiet:
            return
        extra = " ".join(f"{k} {v}" for k, v in self.fields.items())
        if self._progress is not None:
            self._progress.update(self._task, advance=n, rate=f"{self.rate:,.0f} {self.unit}/s",
                                  extra=extra)
            return
        now = time.perf_counter()
        if now - self._last_plain >= self.PLAIN_EVERY_S:
            self._last_plain = now
            self.console.print(f"{self.description}: {self.done}/{self.total} "
                               f"{self.rate:,.0f} {self.unit}/s {extra}".rstrip())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
