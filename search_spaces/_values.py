"""Value parsing of a job spec: sizes (``100k``), ``${VAR}`` expansion, path resolution and pydantic value types."""

from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from sr.errors import ConfigError

# Digits may be grouped with "_" (60_000) and carry an exponent (1e5); the suffix is a decimal multiplier.
_SIZE_RE = re.compile(r"^\s*((?:\d+(?:_\d+)*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([kmgt]?)\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE_HOW = "write an integer or a number with k, M, G or T (e.g. 100k, 1.2M, 20G)"


class SizeError(ConfigError, ValueError):
    """Not a size. A ``ValueError`` so pydantic reports it on its key, a ``UserError`` so the CLI prints it."""


def parse_size(value: int | float | str) -> int:
    """Parse a positive count written as ``100000``, ``"100k"``, ``"1.2M"``, ``"20G"`` or ``"60_000"`` into an int.

    The one size parser of the project: job-spec budgets and the ``--max-params``/``--max-macs`` options. Multipliers
    are decimal (k = 1e3, M = 1e6, G = 1e9, T = 1e12) and case-insensitive; the result must be a whole number.

    Raises:
        SizeError: not a size, not whole, or not positive (the message says how to write one).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SizeError(f"size {value!r} is not a number; {_SIZE_HOW}")
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise SizeError(f"size {value!r} is not a number; {_SIZE_HOW}")
        try:
            exact = Decimal(m.group(1).replace("_", "")) * _SIZE_MULT[m.group(2).lower()]
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise SizeError(f"size {value!r} is not a number; {_SIZE_HOW}") from None
    elif isinstance(value, float) and not value.is_integer():  # also inf and nan
        raise SizeError(f"size {value!r} is not a whole number; {_SIZE_HOW}")
    else:
        exact = Decimal(int(value))
    if exact != exact.to_integral_value():
        raise SizeError(f"size {value!r} is not a whole number; {_SIZE_HOW}")
    if exact <= 0:
        raise SizeError(f"size {value!r} must be positive; {_SIZE_HOW}")
    return int(exact)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """``${VAR}`` -> its value (error when unset); ``${VAR:-default}`` -> default when VAR is unset or empty."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set; export it or write ${{{name}:-default}} in the spec")

    return _ENV_RE.sub(sub, value)


def is_uri(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _resolve(value: str, base: Path | str | None) -> str:
    value = os.path.expanduser(expand_env(value))
    if is_uri(value):
        return value
    if not os.path.isabs(value):
        value = os.path.join(base or os.getcwd(), value)
    return os.path.normpath(value)


def input_path(value: str, info: ValidationInfo) -> str:
    # Inputs live next to the spec (context base_dir, set by parse_job_spec); else the current directory.
    return _resolve(value, (info.context or {}).get("base_dir"))


def env_only(value: str | None) -> str | None:
    if value is None:
        return None
    out = expand_env(value)
    return out or None  # "${MLFLOW_TRACKING_URI:-}" with the variable unset means "not given"


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}; write e.g. 8 or 1.0e-4")
    return value


def _positive_size(value: Any) -> Any:
    return None if value is None else parse_size(value)


InputPath = Annotated[str, AfterValidator(input_path)]
Number = Annotated[int | float, BeforeValidator(_number)]
Size = Annotated[int | None, BeforeValidator(_positive_size)]
Scalar = bool | int | float | str
