"""The job driver's log, kept in storage: everything ``srcompress run`` prints (its own lines, Ray's and Tune's
messages, warnings, the final table) is also appended to ``<storage>/<job>/driver.log``, and that file is logged
as an artifact of the search's parent run when the job ends. A resumed job appends to the same file, under a
header line, so the file tells the job's whole story.

Python-level: ``sys.stdout`` and ``sys.stderr`` are wrapped while the job runs (and logging handlers made in that
time write through them). Output written straight to file descriptor 1/2 by native code bypasses it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

DRIVER_LOG = "driver.log"


class _Sink:
    """The log file, opened once the job folder is the job's (``ready()``): until then lines wait in memory, so a
    job refused before it starts (a bad spec, a budget nothing meets) leaves no folder behind just for its log."""

    def __init__(self, path: Path, header: str, ready: Callable[[], bool]) -> None:
        self.path = path
        self.ready = ready
        self.lock = threading.Lock()
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        self._pending = [f"==== {stamp} {header}\n"]
        self._file: IO[str] | None = None
        self.closed = False

    def write(self, text: str) -> None:
        with self.lock:
            if self.closed:
                return
            if self._file is None and self.ready():
                self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in close)
                self._file.write("".join(self._pending))
                self._pending.clear()
            if self._file is None:
                self._pending.append(text)
            else:
                self._file.write(text)

    def flush(self) -> None:
        with self.lock:
            if self._file is not None and not self.closed:
                self._file.flush()

    def close(self) -> bool:
        """Close the file; returns whether one was written."""
        self.write("")  # the folder may have become the job's since the last line
        with self.lock:
            self.closed = True
            if self._file is None:
                return False
            self._file.close()
            return True


class _Tee:
    """A text stream that writes to the console stream and to the log (thread-safe: Ray's log monitor and Tune's
    callbacks print from other threads)."""

    def __init__(self, console: Any, sink: _Sink) -> None:
        self._console = console
        self._sink = sink

    def write(self, text: str) -> int:
        n = self._console.write(text)
        self._sink.write(text)
        return n

    def flush(self) -> None:
        self._console.flush()
        self._sink.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding ... of the console
        return getattr(self._console, name)


def driver_log_path(out: str | Path) -> Path:
    """``<job folder>/driver.log``."""
    return Path(out) / DRIVER_LOG


@contextlib.contextmanager
def tee_to(path: str | Path, *, header: str, ready: Callable[[], bool] | None = None) -> Iterator[Path]:
    """While inside, everything printed to stdout/stderr is also appended to ``path`` (after ``header``), from
    the moment ``ready()`` is true (default: the folder of ``path`` exists); earlier lines wait in memory."""
    path = Path(path)
    sink = _Sink(path, header, ready or path.parent.is_dir)
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old_out, sink), _Tee(old_err, sink)  # type: ignore[assignment]
    try:
        yield path
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        sink.close()


__all__ = ["DRIVER_LOG", "driver_log_path", "tee_to"]
