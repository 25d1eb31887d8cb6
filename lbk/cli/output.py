"""The only writer to stdout and stderr.

Human output goes to stdout; progress (rich, only on a TTY and without ``--quiet``) and
warnings to stderr. With ``--json`` stdout carries JSON only: one document for commands
that return a result, JSON Lines (each with ``message_type``) for long-running ones, and
a fatal error is ``{"message_type": "error", "code": N, "message": ...}`` on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

from lbk.events import ByteProgress, Event, FileError, Progress, Verbose, Warning_
from lbk.units import human_size  # the commands import it from here too


def fmt_time(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _default(o):
    if isinstance(o, bytes):
        return os.fsdecode(o)
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def dumps(obj) -> str:
    return json.dumps(obj, default=_default)


class Output:
    def __init__(self, json_mode: bool = False, quiet: bool = False, verbose: int = 0):
        self.json = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self._progress = None
        self._task = None

    # -- results -------------------------------------------------------------
    def print(self, text: str = "") -> None:
        """Human text on stdout (suppressed under --json)."""
        if not self.json:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def doc(self, obj) -> None:
        """One JSON document on stdout (only under --json)."""
        if self.json:
            sys.stdout.write(dumps(obj) + "\n")
            sys.stdout.flush()

    def line(self, obj: dict) -> None:
        """One JSON Lines record on stdout (only under --json)."""
        self.doc(obj)

    def info(self, text: str) -> None:
        """A human note on stderr (suppressed by --quiet and --json)."""
        if not self.quiet and not self.json:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def warn(self, text: str) -> None:
        if self.json:
            sys.stderr.write(dumps({"message_type": "warning", "message": text}) + "\n")
        else:
            sys.stderr.write(f"warning: {text}\n")
        sys.stderr.flush()

    def fatal(self, code: int, message: str) -> None:
        self.stop_progress()
        if self.json:
            sys.stderr.write(dumps({"message_type": "error", "code": code, "message": message}) + "\n")
        else:
            sys.stderr.write(f"lbk: {message}\n")
        sys.stderr.flush()

    # -- events from ops -------------------------------------------------------
    def event(self, ev: Event) -> None:
        if isinstance(ev, Progress):
            if self.json:
                if not self.quiet:
                    self.line(ev.to_json())
            else:
                self._show_progress(ev)
        elif isinstance(ev, FileError):
            if self.json:
                self.line(ev.to_json())
            else:
                sys.stderr.write(f"error: {os.fsdecode(ev.path)}: {ev.message}\n")
        elif isinstance(ev, Warning_):
            if self.json:
                self.line(ev.to_json())
            else:
                where = f"{os.fsdecode(ev.path)}: " if ev.path else ""
                sys.stderr.write(f"warning: {where}{ev.message}\n")
        elif isinstance(ev, Verbose):
            if self.verbose:
                if self.json:
                    self.line(ev.to_json())
                else:
                    sys.stdout.write(f"{ev.action:<9} {os.fsdecode(ev.path)}\n")
        else:
            if self.json:
                self.line(ev.to_json())

    # -- progress --------------------------------------------------------------
    def progress_enabled(self) -> bool:
        return not self.quiet and not self.json and sys.stderr.isatty()

    def _show_progress(self, ev: Progress) -> None:
        if not self.progress_enabled():
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("")
        desc = f"{ev.action}: {ev.files_done} files, {human_size(ev.bytes_done)}"
        if isinstance(ev, ByteProgress):
            pct = f" ({100 * ev.bytes_done / ev.bytes_total:.0f}%)" if ev.bytes_total else ""
            desc = f"{ev.action}: {human_size(ev.bytes_done)} of {human_size(ev.bytes_total or 0)}{pct}, {human_size(ev.bytes_per_second)}/s"
        if ev.current:
            cur = ev.current if len(ev.current) < 60 else "…" + ev.current[-59:]
            desc += f"  {cur}"
        self._progress.update(self._task, description=desc)

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
