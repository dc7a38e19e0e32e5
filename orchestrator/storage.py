"""The job's storage (``storage.path``): a local folder, ``file://``, ``s3://`` or ``gs://``, through ``pyarrow.fs``.

Ray Tune and Train keep their state on the same URI through ``pyarrow.fs`` too. Everything a worker on another
node must read (job state, pruned weights, the teacher-output cache, a fallback teacher) goes through the few
functions here, never through a driver-local path; ``sr/`` keeps working on local files, so the Ray layer stages
files between a local temp folder and the store (``upload`` / ``download`` / ``local_copy``).

A location is a plain string, so it crosses the Ray boundary unchanged: a local path (made absolute) or a URI,
whose query (``?endpoint_override=127.0.0.1:9000&scheme=http``) names the S3 endpoint and stays on every
location joined from it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from search_spaces._values import is_uri

_FS: dict[str, pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()
_LOCAL = pafs.LocalFileSystem()


def normalize(location: str | os.PathLike[str]) -> str:
    """A URI as it is (``file://`` too), a local path made absolute."""
    text = os.fspath(location)
    return text if is_uri(text) else os.path.abspath(os.path.expanduser(text))


def is_local(location: str | os.PathLike[str]) -> bool:
    text = os.fspath(location)
    return not is_uri(text) or text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The local file behind a location (a path or ``file://``), None for a remote store."""
    text = os.fspath(location)
    if not is_uri(text):
        return Path(normalize(text))
    if text.startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return None


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base/part/...``; a URI keeps its query at the end (``s3://b/p/x?endpoint_override=...``)."""
    base = normalize(base)
    tail = "/".join(p.strip("/") for p in parts if p)
    if not tail:
        return base
    if not is_uri(base):
        return os.path.join(base, tail)
    head, sep, query = base.partition("?")
    return f"{head.rstrip('/')}/{tail}{sep}{query}"


def _fs(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it; one filesystem object per scheme, host and query (S3 clients are
    costly to make)."""
    location = normalize(location)
    if not is_uri(location):
        return _LOCAL, location
    parts = urlsplit(location)
    if parts.scheme == "file":
        return _LOCAL, unquote(parts.path)
    key = f"{parts.scheme}://{parts.netloc}?{parts.query}"
    with _FS_LOCK:
        fs = _FS.get(key)
        if fs is None:
            fs, _ = pafs.FileSystem.from_uri(location)
            _FS[key] = fs
    return fs, f"{parts.netloc}{unquote(parts.path)}".rstrip("/")


def exists(location: str) -> bool:
    fs, path = _fs(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    fs, path = _fs(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file so that readers see the old or the new content, never a part: a local file is written
    beside and renamed over; one object store PUT is atomic by itself."""
    fs, path = _fs(location)
    parent = path.rsplit("/", 1)[0]
    if fs is _LOCAL:
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def listdir(location: str) -> list[str]:
    """Names directly under a folder (empty when it does not exist)."""
    fs, path = _fs(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def delete(location: str) -> None:
    """Remove a file or a folder (with its content); nothing when it is absent."""
    fs, path = _fs(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def upload(local: str | os.PathLike[str], location: str) -> str:
    """Copy a local file or folder (recursively) to ``location``; returns ``location``."""
    local = Path(local)
    fs, path = _fs(location)
    if local.is_dir():
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(local), path, source_filesystem=_LOCAL, destination_filesystem=fs)
    else:
        write_bytes(location, local.read_bytes())
    return location


def download(location: str, local: str | os.PathLike[str]) -> Path:
    """Copy a file or folder (recursively) from ``location`` to the local path ``local``; returns it."""
    local = Path(local)
    fs, path = _fs(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=_LOCAL)
    else:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(read_bytes(location))
        os.replace(tmp, local)
    return local


@contextlib.contextmanager
def staged_dir(location: str) -> Iterator[Path]:
    """A local folder whose content ends up at ``location``: that folder itself when the store is local, else a
    temporary one uploaded when the block ends without an error (``sr/`` functions write local files)."""
    here = local_path(location)
    if here is not None:
        here.mkdir(parents=True, exist_ok=True)
        yield here
        return
    with tempfile.TemporaryDirectory(prefix="srcompress-stage-") as tmp:
        yield Path(tmp)
        upload(tmp, location)


def local_copy(location: str | None) -> str | None:
    """A local path for ``location``: itself when local; else a copy downloaded once per process into a temp
    folder that lives as long as the process (weights, the teacher cache: files a job writes once and never
    changes), so workers on any node read the same bytes."""
    if location is None:
        return None
    here = local_path(location)
    if here is not None:
        return str(here)
    with _COPY_LOCK:
        copy = _COPIES.get(location)
        if copy is None:
            global _COPY_ROOT
            if _COPY_ROOT is None:
                _COPY_ROOT = tempfile.TemporaryDirectory(prefix="srcompress-store-")
            name = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1] or "data"
            copy = str(download(location, Path(_COPY_ROOT.name) / str(len(_COPIES)) / name))
            _COPIES[location] = copy
    return copy


_COPIES: dict[str, str] = {}
_COPY_LOCK = threading.Lock()
_COPY_ROOT: tempfile.TemporaryDirectory | None = None


__all__ = [
    "delete",
    "download",
    "exists",
    "is_file",
    "is_local",
    "join",
    "listdir",
    "local_copy",
    "local_path",
    "normalize",
    "read_bytes",
    "read_text",
    "staged_dir",
    "upload",
    "write_bytes",
    "write_text",
]
