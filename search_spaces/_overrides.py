"""Overrides of a job spec at load time: overlay YAML files and ``KEY=VALUE`` dotted keys (``--override``/``--set``).

They change the raw YAML mapping before validation, so an overridden spec is checked by the same schema as a
written one: a wrong key or value is the usual one-line ``SpecError``, pointing at the override that set it.
Overlays merge first (mappings key by key, anything else replaced), then ``--set`` items in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search_spaces._errors import SpecError, spec_error


@dataclass(frozen=True)
class Overrides:
    """What ``srcompress run/plan/submit --override FILE --set KEY=VALUE`` change in a spec.

    Attributes:
        files: overlay YAML files, each a partial spec (e.g. ``search_spaces/overrides/cpu_smoke.yaml``).
        sets: ``dotted.key=VALUE`` items; VALUE is read as YAML (``20``, ``false``, ``null``, ``[1, 2]``).
    """

    files: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.files or self.sets)

    def cli_args(self) -> list[str]:
        """The same overrides as ``srcompress run`` options."""
        return [a for f in self.files for a in ("--override", f)] + [a for s in self.sets for a in ("--set", s)]


def split_key(key: str) -> list[str | int]:
    """``a.b[0].c`` -> ``["a", "b", 0, "c"]``."""
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return over


def _keys(data: Any, prefix: str, out: list[str]) -> None:
    for k, v in data.items() if isinstance(data, dict) else ():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.append(key)
        _keys(v, key, out)


def _read_overlay(path: str, loader: type[yaml.SafeLoader]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise spec_error(path, None, "", f"cannot read the overlay ({exc.strerror}); check --override") from None
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - the project's SafeLoader subclass
    except yaml.YAMLError as exc:
        raise spec_error(path, None, "", f"YAML error in the overlay: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise spec_error(path, None, "", "an overlay must be a mapping of spec sections; write key: value lines")
    return data


def _set_item(data: dict[str, Any], item: str, parts: list[str | int], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise spec_error(f"--set {item}", None, "", f"no list item [{part}] there; use an existing index")
        elif not isinstance(node, dict):
            raise spec_error(f"--set {item}", None, "", f"{part!r} is below a value, not a section; fix the key")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), dict | list):
                node[part] = {}  # a new section: the schema then names an unknown key
            node = node[part]


def apply_overrides(
    data: dict[str, Any], overrides: Overrides, *, loader: type[yaml.SafeLoader]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with the overrides applied, and where each overridden dotted key came from (for errors)."""
    origin: dict[str, str] = {}
    for path in overrides.files:
        over = _read_overlay(path, loader)
        data = _merge(data, over)
        keys: list[str] = []
        _keys(over, "", keys)
        origin.update(dict.fromkeys(keys, path))
    for item in overrides.sets:
        key, sep, text = item.partition("=")
        parts = split_key(key.strip())
        if not sep or not parts:
            raise SpecError(f"--set {item!r} is not KEY=VALUE; write e.g. --set training.steps=20")
        try:
            value = yaml.load(text, Loader=loader) if text.strip() else None  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            value = text
        _set_item(data, item, parts, value)
        origin[key.strip()] = f"--set {item}"
    return data, origin


def blame_override(exc: SpecError, origin: dict[str, str]) -> SpecError:
    """``exc`` re-pointed at the override that set its key (or a key above it), else ``exc`` unchanged."""
    key = exc.key
    while key:
        if key in origin:
            cause = str(exc).split(f"{exc.key}: ", 1)[-1]
            return spec_error(origin[key], None, exc.key, cause)
        # the enclosing key: a.b[0].c -> a.b[0] -> a.b -> a -> ""
        up = re.sub(r"(^|\.)[^.\[]*$|\[\d+\]$", "", key)
        key = up if up != key else ""
    return exc
