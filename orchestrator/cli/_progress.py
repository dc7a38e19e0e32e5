"""Progress display and interruption of the in-process training commands (``srcompress prune/distill/compress``).

:class:`Progress` keeps the last step reached (for the interrupt message) and shows a rich bar on a terminal, or
one line per log step otherwise; :func:`interruptible` turns SIGTERM into Ctrl-C and exits 130 with a note of the
newest checkpoint. Plain presentation: no torch, no training.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from sr.errors import UserError

__all__ = ["Progress", "check_fresh", "interruptible", "note", "step_of"]


def check_fresh(ckpt_dir: Path, step: int | None, *, resume: bool) -> None:
    """Refuse to start over a previous run's checkpoints unless ``--resume`` says to continue them."""
    if step is not None and not resume:
        raise UserError(
            f"{ckpt_dir} holds checkpoints of an earlier run (up to step {step}); pass --resume to continue it, "
            f"or another --out (or delete {ckpt_dir}) to start over"
        )


def step_of(path: Path | None) -> int | None:
    return None if path is None else int(path.name.split("_")[-1])


def note(msg: str, *, quiet: bool) -> None:
    if not quiet:
        print(f"[srcompress] {msg}", file=sys.stderr, flush=True)


class Progress:
    """Last step reached (for the interrupt message) plus, when asked, a rich bar or plain log lines on stderr."""

    def __init__(self, label: str, *, total: int, start: int, quiet: bool) -> None:
        self.label, self.total, self.step = label, total, start
        self._first: tuple[int, float] | None = None
        self._bar: Any = None
        self._task: Any = None
        self.lines = not quiet and not sys.stderr.isatty()
        self.show_bar = not quiet and sys.stderr.isatty()

    def __enter__(self) -> Progress:
        if self.show_bar:
            # deferred: rich is only needed when a bar is shown on a terminal
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.step, loss="-", rate="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, loss: float | None) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (self.step, now)
        self.step = step
        if self._bar is not None:
            s0, t0 = self._first
            rate = (step - s0) / (now - t0) if now > t0 else 0.0
            shown = "-" if loss is None else f"{loss:.4g}"
            self._bar.update(self._task, completed=step, loss=shown, rate=f"{rate:.2f}")

    def line(self, text: str) -> None:
        if self.lines:
            print(f"[srcompress] {self.label} {text}", file=sys.stderr, flush=True)


@contextmanager
def interruptible(progress: Progress, latest: Callable[[], Path | None]) -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt; on either, say where the run stopped and exit 130."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM) if main_thread else None

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if main_thread:
        signal.signal(signal.SIGTERM, _on_term)
    try:
        yield
    except KeyboardInterrupt:
        last = latest()
        kept = f"checkpoint step {step_of(last)} kept in {last.parent}" if last is not None else "no checkpoint yet"
        print(
            f"srcompress: interrupted at step {progress.step} ({kept}); rerun with --resume to continue",
            file=sys.stderr,
            flush=True,
        )
        raise typer.Exit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
