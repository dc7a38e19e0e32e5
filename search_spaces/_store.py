"""The one way a store is named, by the spec (``tracking.uri``) and by every command (``--store``): a folder, a
``.db`` file or a URI, resolved by :func:`store_uri`."""

from __future__ import annotations

import os
from pathlib import Path

from search_spaces._values import expand_env, is_uri
from sr.errors import ConfigError

# MLflow tracking-store schemes (a "+driver" suffix allowed: postgresql+psycopg2://); file:// is taken as a path.
_STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "postgres", "mysql", "mssql", "databricks", "databricks-uc")
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
STORE_DB = "mlflow.db"  # the sqlite file of a store named by its folder


class StoreError(ConfigError, ValueError):
    """Not a store. A ``ValueError`` so pydantic reports it on its key, a ``UserError`` so the CLI prints it."""


def store_uri(value: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None, what: str = "store") -> str:
    """The MLflow tracking URI of a store named the one way every command and spec names it.

    - a URI: ``sqlite:///...``, ``http(s)://...`` or another MLflow database URI, as it is;
    - a ``.db`` (``.sqlite``, ``.sqlite3``) file: ``sqlite:///<absolute path>``;
    - a folder (existing or not; ``file://`` too): its ``mlflow.db``, ``sqlite:///<folder>/mlflow.db``.
    Relative paths resolve against ``base`` (a spec's folder) or the current directory; ``~`` and ``${VAR}`` expand.

    Raises:
        StoreError: an existing file that is not a ``.db`` file, or a URI scheme MLflow has no store for (one line
            naming ``what``, e.g. ``--store``).
    """
    text = expand_env(os.fspath(value)).strip()
    how = "pass a folder, a .db file, sqlite:///PATH.db or http://HOST:PORT"
    if not text:
        raise StoreError(f"{what} is empty; {how}")
    if is_uri(text):
        scheme = text.split("://", 1)[0].lower()
        if scheme != "file":
            if scheme.split("+", 1)[0] not in _STORE_SCHEMES:
                raise StoreError(f"{what} {text}: MLflow has no tracking store for {scheme}://; {how}")
            return text
        text = text[len("file://") :]
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    path = Path(os.path.normpath(path))
    if path.suffix.lower() in _DB_SUFFIXES and not path.is_dir():
        return f"sqlite:///{path}"
    if path.exists() and not path.is_dir():
        raise StoreError(f"{what} {path} is a file but not a .db sqlite file; {how}")
    return f"sqlite:///{path / STORE_DB}"


__all__ = ["STORE_DB", "StoreError", "store_uri"]
