"""Errors of a job spec: the one-line :class:`SpecError` and the per-key error validators raise."""

from __future__ import annotations

from sr.errors import ConfigError


class SpecError(ConfigError):
    """A problem in a job spec, as one line: ``file:line: dotted.key: cause; fix``.

    Attributes:
        source: the spec file (or ``<string>``).
        line: 1-based line of the offending key (None when there is no line, e.g. a missing file).
        key: dotted key (``training.steps``, ``objectives[0].metric``), empty for whole-file problems.
    """

    def __init__(self, message: str, *, source: str = "", line: int | None = None, key: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key


class KeyedError(ValueError):
    """A validator's error about one key, relative to the model that raises it (``key`` is dotted)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def spec_error(source: str, line: int | None, key: str, message: str) -> SpecError:
    where = f"{source}:{line}" if line is not None else source
    text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
    return SpecError(" ".join(text.split()), source=source, line=line, key=key)
