"""YAML loading of a job spec: the line of every key, and pydantic's errors as one ``file:line: key: cause`` line."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, Tag, ValidationError

from search_spaces._errors import KeyedError, SpecError, spec_error
from search_spaces._overrides import Overrides, apply_overrides, blame_override, split_key
from search_spaces._schema import JobSpec


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; users write both)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _line_map(node: yaml.Node, prefix: list[str | int], out: dict[str, int], source: str) -> None:
    """Record the 1-based line of every key (``a.b``) and list item (``a[0]``); reject duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = [*prefix, key_node.value]
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise SpecError(
                    f"{source}:{line}: {_dotted(key)}: duplicate key; keep one",
                    source=source,
                    line=line,
                    key=_dotted(key),
                )
            seen.add(key_node.value)
            out[_dotted(key)] = line
            _line_map(value_node, key, out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = [*prefix, i]
            out[_dotted(key)] = item.start_mark.line + 1
            _line_map(item, key, out, source)


def line_of(lines: dict[str, int], parts: list[str | int]) -> int:
    for n in range(len(parts), 0, -1):
        line = lines.get(_dotted(parts[:n]))
        if line is not None:
            return line
    return 1


def _clean_loc(loc: tuple[str | int, ...], data: Any, err_type: str) -> list[str | int]:
    """Drop pydantic's union/tag markers from ``loc`` by walking the raw data along it."""
    out: list[str | int] = []
    cur = data
    for i, el in enumerate(loc):
        in_dict = isinstance(cur, dict) and el in cur
        in_list = isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)
        if in_dict or in_list:
            out.append(el)
            cur = cur[el]
        elif i == len(loc) - 1 and err_type in ("missing", "extra_forbidden"):
            out.append(el)
            cur = None
    return out


def _strip_type(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The section model at pydantic ``loc`` (tags included), to list its valid keys."""
    tp: Any = JobSpec
    for el in loc:
        tp = _strip_type(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next(
                (f for n, f in tp.model_fields.items() if el in (n, f.alias)),
                None,
            )
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            tagged = [
                a
                for a in typing.get_args(tp)
                if typing.get_origin(a) is Annotated and any(isinstance(m, Tag) and m.tag == el for m in a.__metadata__)
            ]
            if not tagged:
                return None
            tp = tagged[0]
        elif typing.get_origin(tp) is list and isinstance(el, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _strip_type(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Any, loc: tuple[str | int, ...]) -> tuple[str, str]:
    """(relative key suffix, 'cause; fix') of one pydantic error dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, KeyedError):
        return cause.key, str(cause)
    if kind == "extra_forbidden":
        bad = str(loc[-1])
        model = _model_at(loc[:-1])
        valid = [f.alias or n for n, f in model.model_fields.items()] if model is not None else []
        close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.6)
        hint = f", did you mean {close[0]!r}?" if close else ""
        listing = f" (valid: {', '.join(valid)})" if valid else ""
        return "", f"unknown key{hint}{listing}; fix the key name"
    if kind == "missing":
        return "", "required key is missing; add it"
    if kind in ("value_error", "assertion_error") and cause is not None:
        return "", str(cause)
    if kind == "model_type":
        got = type(err.get("input")).__name__
        return "", f"expected a mapping of keys, got {got} {_short(err.get('input'))}; write key: value lines"
    msg = err["msg"]
    msg = msg[:1].lower() + msg[1:]
    return "", f"{msg} (got {_short(err.get('input'))}); fix the value"


def _from_validation_error(exc: ValidationError, data: Any, lines: dict[str, int], source: str) -> SpecError:
    problems: list[tuple[str, str]] = []
    # An unknown key first: a misspelt key also shows up as the missing one it was meant to be.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        parts = _clean_loc(err["loc"], data, err["type"])
        rel, message = _describe(err, err["loc"])
        parts += split_key(rel) if rel else []
        key = _dotted(parts)
        if key not in (k for k, _ in problems):
            problems.append((key, message))
    key, message = problems[0]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s): {', '.join(k or '<top>' for k, _ in problems[1:])})"
    return spec_error(source, line_of(lines, split_key(key)), key or "<top>", message)


def parse_job_spec(
    text: str, *, source: str = "<string>", base_dir: str | Path | None = None, overrides: Overrides | None = None
) -> JobSpec:
    """Validate job-spec YAML ``text`` into a :class:`JobSpec`.

    Args:
        text: the YAML document.
        source: file name used in error messages.
        base_dir: folder that relative paths (inputs, ``storage.path``, a ``tracking.uri`` folder or ``.db``)
            resolve against (default: the current directory), overridden ones included.
        overrides: overlay files and ``KEY=VALUE`` items applied before validation; an error in a key they set
            names the override instead of a line of ``text``.

    Raises:
        SpecError: YAML syntax, a non-mapping top level, or any invalid key or value (one line with its line).
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise spec_error(source, line, "", f"YAML syntax error: {what}; fix the YAML there") from None
    except yaml.YAMLError as exc:
        raise spec_error(source, None, "", f"YAML error: {exc}; fix the YAML") from None
    finally:
        loader.dispose()
    if node is None or data is None:
        raise spec_error(source, 1, "", "the file is empty; write a job spec (see search_spaces/demo.yaml)")
    if not isinstance(data, dict):
        raise spec_error(
            source,
            node.start_mark.line + 1,
            "",
            f"the top level must be a mapping of sections (name:, teacher:, student:, ...), got a "
            f"{type(data).__name__}; write key: value lines",
        )
    lines: dict[str, int] = {}
    _line_map(node, [], lines, source)
    origin: dict[str, str] = {}
    if overrides:
        data, origin = apply_overrides(data, overrides, loader=_Loader)
    context = {"base_dir": str(base_dir) if base_dir is not None else None}
    try:
        spec = JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise blame_override(_from_validation_error(exc, data, lines, source), origin) from None
    spec._source = source
    spec._lines = lines
    return spec


def load_job_spec(path: str | Path, overrides: Overrides | None = None) -> JobSpec:
    """Read and validate the job spec at ``path`` (relative input paths resolve against its folder), with
    ``overrides`` (``--override``/``--set``) applied.

    Raises:
        SpecError: a missing or unreadable file, or any problem :func:`parse_job_spec` reports.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise spec_error(str(p), None, "", "job spec not found; check the path") from None
    except IsADirectoryError:
        raise spec_error(str(p), None, "", "is a folder, not a job spec; pass the .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise spec_error(str(p), None, "", f"cannot read the job spec ({reason}); check the file") from None
    return parse_job_spec(text, source=str(p), base_dir=p.resolve().parent, overrides=overrides)
