"""A small S3-compatible server for tests, in memory, on 127.0.0.1 (moto and minio have no wheel here).

It speaks what ``pyarrow.fs.S3FileSystem`` (and so Ray Tune/Train storage) uses: ListBuckets, Create/Head/Delete
bucket, HEAD/GET (with Range)/PUT/DELETE object, CopyObject, ListObjectsV2 (and V1) with prefix, delimiter and
continuation, multipart upload (Create/UploadPart/Complete/Abort) and DeleteObjects. Signatures are not checked;
``aws-chunked`` bodies (streaming signatures, checksum trailers) are decoded.

Run it as ``python tests/_s3_server.py [--port 0]``: it prints ``PORT <n>`` once it listens. ``serve()`` in a test
starts that process and yields the endpoint (``127.0.0.1:<port>``); it is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree as ET

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, dict[str, tuple[bytes, float]]] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}


STORE = _Store()


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - S3's ETag is an MD5, not a security check


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _xml(root: str, children: list[tuple[str, object]]) -> bytes:
    el = ET.Element(root, xmlns=NS)
    _fill(el, children)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(el)


def _fill(el: ET.Element, children: list[tuple[str, object]]) -> None:
    for name, value in children:
        sub = ET.SubElement(el, name)
        if isinstance(value, list):
            _fill(sub, value)
        else:
            sub.text = str(value)


def _decode_aws_chunked(body: bytes) -> bytes:
    """``<hex size>[;chunk-signature=...]\\r\\n<data>\\r\\n ... 0\\r\\n<trailers>\\r\\n\\r\\n`` -> the data."""
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read their own output
        pass

    # ------------------------------------------------------------------------------------------ plumbing
    def _parse(self) -> tuple[str, str, dict[str, str]]:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, query

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            raw = bytes(data)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sha = self.headers.get("x-amz-content-sha256", "")
        if "aws-chunked" in self.headers.get("Content-Encoding", "") or sha.startswith("STREAMING-"):
            raw = _decode_aws_chunked(raw)
        return raw

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        hdrs = {"Content-Length": str(len(body)), "x-amz-request-id": uuid.uuid4().hex[:16], **(headers or {})}
        if body and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "application/xml"
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, s3_code: str, message: str = "") -> None:
        body = b"" if self.command == "HEAD" else _xml("Error", [("Code", s3_code), ("Message", message or s3_code)])
        self._send(code, body)

    def _bucket(self, name: str) -> dict[str, tuple[bytes, float]] | None:
        b = STORE.buckets.get(name)
        if b is None:
            self._error(404, "NoSuchBucket")
        return b

    # ------------------------------------------------------------------------------------------- verbs
    def do_HEAD(self) -> None:
        bucket, key, _ = self._parse()
        with STORE.lock:
            b = self._bucket(bucket)
            if b is None:
                return
            if not key:
                self._send(200)
                return
            obj = b.get(key)
        if obj is None:
            self._error(404, "NoSuchKey")
            return
        self._object_headers(200, obj, len(obj[0]))

    def _object_headers(self, code: int, obj: tuple[bytes, float], length: int, extra: dict | None = None) -> None:
        self.send_response(code)
        for k, v in {
            "Content-Length": str(length),
            "Content-Type": "application/octet-stream",
            "ETag": _etag(obj[0]),
            "Last-Modified": formatdate(obj[1], usegmt=True),
            "Accept-Ranges": "bytes",
            **(extra or {}),
        }.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self) -> None:
        bucket, key, query = self._parse()
        if not bucket:
            with STORE.lock:
                names = sorted(STORE.buckets)
            buckets = [("Bucket", [("Name", n), ("CreationDate", _iso(0))]) for n in names]
            self._send(200, _xml("ListAllMyBucketsResult", [("Owner", [("ID", "test")]), ("Buckets", buckets)]))
            return
        with STORE.lock:
            b = self._bucket(bucket)
            if b is None:
                return
            if not key:
                if "location" in query:
                    self._send(200, _xml("LocationConstraint", []))
                else:
                    self._send(200, self._list(bucket, b, query))
                return
            obj = b.get(key)
        if obj is None:
            self._error(404, "NoSuchKey")
            return
        data, rng = obj[0], self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first) if first else max(0, len(data) - int(last))
            stop = min(len(data) - 1, int(last)) if first and last else len(data) - 1
            if start >= len(data):
                self._error(416, "InvalidRange")
                return
            part = data[start : stop + 1]
            self._object_headers(206, obj, len(part), {"Content-Range": f"bytes {start}-{stop}/{len(data)}"})
            self.wfile.write(part)
            return
        self._object_headers(200, obj, len(data))
        self.wfile.write(data)

    def _list(self, bucket: str, b: dict[str, tuple[bytes, float]], q: dict[str, str]) -> bytes:
        prefix, delim = q.get("prefix", ""), q.get("delimiter", "")
        v2 = q.get("list-type") == "2"
        max_keys = int(q.get("max-keys", 1000))
        after = q.get("continuation-token") or q.get("start-after") or q.get("marker") or ""
        enc = q.get("encoding-type") == "url"
        show = (lambda k: quote(k, safe="/")) if enc else (lambda k: k)
        entries: list[tuple[str, bool]] = []  # (key or common prefix, is_prefix), in key order
        seen: set[str] = set()
        for k in sorted(b):
            if not k.startswith(prefix) or k <= after:
                continue
            rest = k[len(prefix) :]
            if delim and delim in rest:
                cp = prefix + rest.split(delim, 1)[0] + delim
                if cp not in seen and cp > after:
                    seen.add(cp)
                    entries.append((cp, True))
                continue
            entries.append((k, False))
        truncated = len(entries) > max_keys
        entries = entries[:max_keys]
        out: list[tuple[str, object]] = [("Name", bucket), ("Prefix", show(prefix)), ("MaxKeys", max_keys)]
        if delim:
            out.append(("Delimiter", show(delim)))
        if enc:
            out.append(("EncodingType", "url"))
        out.append(("IsTruncated", "true" if truncated else "false"))
        if v2:
            out.append(("KeyCount", len(entries)))
            if q.get("continuation-token"):
                out.append(("ContinuationToken", q["continuation-token"]))
            if truncated:
                out.append(("NextContinuationToken", entries[-1][0]))
        elif truncated:
            out.append(("NextMarker", show(entries[-1][0])))
        for k, is_prefix in entries:
            if is_prefix:
                out.append(("CommonPrefixes", [("Prefix", show(k))]))
            else:
                data, t = b[k]
                out.append(
                    (
                        "Contents",
                        [
                            ("Key", show(k)),
                            ("LastModified", _iso(t)),
                            ("ETag", _etag(data)),
                            ("Size", len(data)),
                            ("StorageClass", "STANDARD"),
                        ],
                    )
                )
        return _xml("ListBucketResult", out)

    def do_PUT(self) -> None:
        bucket, key, query = self._parse()
        body = self._body()
        with STORE.lock:
            if not key:
                STORE.buckets.setdefault(bucket, {})
                self._send(200, headers={"Location": f"/{bucket}"})
                return
            b = self._bucket(bucket)
            if b is None:
                return
            if "uploadId" in query:
                parts = STORE.uploads.get(query["uploadId"])
                if parts is None:
                    self._error(404, "NoSuchUpload")
                    return
                parts[int(query["partNumber"])] = body
                self._send(200, headers={"ETag": _etag(body)})
                return
            source = self.headers.get("x-amz-copy-source")
            if source:
                src_bucket, _, src_key = unquote(source).lstrip("/").partition("/")
                src = STORE.buckets.get(src_bucket, {}).get(src_key.split("?")[0])
                if src is None:
                    self._error(404, "NoSuchKey")
                    return
                b[key] = (src[0], time.time())
                self._send(
                    200, _xml("CopyObjectResult", [("LastModified", _iso(time.time())), ("ETag", _etag(src[0]))])
                )
                return
            b[key] = (body, time.time())
        self._send(200, headers={"ETag": _etag(body)})

    def do_POST(self) -> None:
        bucket, key, query = self._parse()
        body = self._body()
        with STORE.lock:
            b = self._bucket(bucket)
            if b is None:
                return
            if "delete" in query:
                keys = [el.text or "" for el in ET.fromstring(body).iter() if el.tag.endswith("Key")]
                for k in keys:
                    b.pop(k, None)
                self._send(200, _xml("DeleteResult", [("Deleted", [("Key", k)]) for k in keys]))
                return
            if "uploads" in query:
                upload_id = uuid.uuid4().hex
                STORE.uploads[upload_id] = {}
                res = [("Bucket", bucket), ("Key", key), ("UploadId", upload_id)]
                self._send(200, _xml("InitiateMultipartUploadResult", res))
                return
            if "uploadId" in query:
                parts = STORE.uploads.pop(query["uploadId"], None)
                if parts is None:
                    self._error(404, "NoSuchUpload")
                    return
                wanted = [int(el.text or 0) for el in ET.fromstring(body).iter() if el.tag.endswith("PartNumber")]
                data = b"".join(parts[n] for n in (wanted or sorted(parts)))
                b[key] = (data, time.time())
                res = [("Location", f"/{bucket}/{key}"), ("Bucket", bucket), ("Key", key), ("ETag", _etag(data))]
                self._send(200, _xml("CompleteMultipartUploadResult", res))
                return
        self._error(400, "InvalidRequest", f"unsupported POST {self.path}")

    def do_DELETE(self) -> None:
        bucket, key, query = self._parse()
        with STORE.lock:
            if not key:
                if STORE.buckets.get(bucket):
                    self._error(409, "BucketNotEmpty")
                    return
                STORE.buckets.pop(bucket, None)
                self._send(204)
                return
            if "uploadId" in query:
                STORE.uploads.pop(query["uploadId"], None)
                self._send(204)
                return
            b = self._bucket(bucket)
            if b is None:
                return
            b.pop(key, None)
        self._send(204)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """Start the server in its own process; yields ``127.0.0.1:<port>``; stops that process at the end."""
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the S3 test server did not start (said {line!r})")
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
