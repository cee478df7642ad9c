"""Paths of an INDEX: a local (or network file system) path, or a TensorStore kvstore URL.

    storage.write_text(storage.join("s3://bucket/index", "manifest.json"), text)
    storage.kvstore_spec("gs://bucket/index/activations")  # {"driver": "gcs", ...}

Every file of an INDEX (manifest, ids, journals, first-stage records, tombstones) and every
array goes through here, so `--index` may be `/data/index`, `file:///data/index`,
`gs://bucket/index` or `s3://bucket/index` (docs/scaling.md). Local paths keep the POSIX
guarantees: `write_text` is write-temp, fsync, rename; `publish_text` creates a file only if it
is absent (a hard link). On object storage a write is one PUT of the whole object (readers see
the old object or the new one, never a part: GCS, and S3 since 2020); nothing here relies on a
conditional create there (`publish_text` refuses: the callers let one writer create instead),
nor on an atomic rename or delete.

S3-compatible servers other than AWS (MinIO, a test server on 127.0.0.1) are reached through the
AWS SDKs' own environment variables: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, with AWS_REGION
(or AWS_DEFAULT_REGION) and the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil

import tensorstore as ts

from lateint import atomic

REMOTE_SCHEMES = ("gs", "s3")
_S3_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
_DRIVERS = {"gs": "gcs", "s3": "s3"}


class StorageError(OSError):
    """An object-storage operation failed; str() names the URL and TensorStore's error."""


def normalize(path: str) -> str:
    """'file:///x/y' -> '/x/y'; a remote URL loses its trailing '/'; a local path is unchanged."""
    path = str(path)
    if path.startswith("file://"):
        return path[len("file://") :] or "/"
    if is_remote(path):
        return path.rstrip("/")
    return path


def is_remote(path: str) -> bool:
    """True for gs://... and s3://... URLs."""
    scheme, separator, _ = str(path).partition("://")
    return bool(separator) and scheme in REMOTE_SCHEMES


def absolute(path: str) -> str:
    """os.path.abspath for local paths; a remote URL normalized."""
    path = normalize(path)
    return path if is_remote(path) else os.path.abspath(path)


def require_local(path: str, what: str) -> str:
    """`path` normalized, or ValueError naming `what` when it is an object-storage URL."""
    path = normalize(path)
    if is_remote(path):
        raise ValueError(
            f"{what}: {path!r} is on object storage; this needs a local or network file system "
            "(hard links and atomic renames; docs/scaling.md)"
        )
    return path


def join(path: str, *parts: str) -> str:
    """Joins with '/' for URLs, os.path.join for local paths."""
    path = normalize(path)
    if is_remote(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path: str) -> str:
    path = normalize(path)
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(os.path.abspath(path))


def _split(url: str) -> tuple[str, str, str]:
    """'s3://bucket/a/b' -> ('s3', 'bucket', 'a/b')."""
    scheme, _, rest = normalize(url).partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url!r}: expected {scheme}://BUCKET/PATH")
    return scheme, bucket, key


def _bucket_spec(scheme: str, bucket: str) -> dict:
    spec = {"driver": _DRIVERS[scheme], "bucket": bucket}
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if endpoint:
            spec["endpoint"] = endpoint
        if region:
            spec["aws_region"] = region
    return spec


def kvstore_spec(path: str) -> dict:
    """The TensorStore kvstore spec of a directory `path` (local: the file driver)."""
    path = normalize(path)
    if not is_remote(path):
        return {"driver": "file", "path": os.path.abspath(path)}
    scheme, bucket, key = _split(path)
    return dict(_bucket_spec(scheme, bucket), path=key.rstrip("/") + "/" if key else "")


@functools.cache
def _bucket(scheme: str, bucket: str, environment: tuple) -> ts.KvStore:
    del environment  # part of the cache key only: another endpoint is another store
    return ts.KvStore.open(_bucket_spec(scheme, bucket)).result()


def _remote(url: str) -> tuple[ts.KvStore, str]:
    scheme, bucket, key = _split(url)
    environment = tuple(os.environ.get(name, "") for name in _S3_VARIABLES)
    return _bucket(scheme, bucket, environment), key


def _call(url: str, what: str, operation):
    try:
        return operation()
    except Exception as error:  # TensorStore raises ValueError carrying a status string
        raise StorageError(f"{what} {url!r} failed: {error}") from error


def _prefix_range(key: str) -> ts.KvStore.KeyRange:
    prefix = key.rstrip("/") + "/" if key else ""
    return ts.KvStore.KeyRange(prefix, prefix[:-1] + "0" if prefix else "")


# ---- files --------------------------------------------------------------------------------


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError naming `path` when it is absent."""
    path = normalize(path)
    if not is_remote(path):
        with open(path, "rb") as handle:
            return handle.read()
    store, key = _remote(path)
    found = _call(path, "reading", lambda: store.read(key).result())
    if found.state != "value":
        raise FileNotFoundError(f"{path}: no such object")
    return bytes(found.value)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Local: lateint.atomic.write_text (temporary file, fsync, rename); remote: one PUT."""
    path = normalize(path)
    if not is_remote(path):
        atomic.write_text(path, text)
        return
    store, key = _remote(path)
    _call(path, "writing", lambda: store.write(key, text.encode("utf-8")).result())


def write_json(
    path: str, value, indent: int | None = None, sort_keys: bool = False, make_parents: bool = False
) -> None:
    """`value` as JSON and a final newline through `write_text` (a value that is not
    JSON-serializable raises TypeError before `path` is touched); make_parents: the parent
    directories first (local paths)."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n"
    if make_parents:
        makedirs(dirname(path))
    write_text(path, text)


def read_json(path: str):
    """json.loads of the file (FileNotFoundError when absent, json.JSONDecodeError if bad)."""
    return json.loads(read_text(path))


def publish_text(path: str, text: str) -> bool:
    """Creates `path` only if absent (lateint.atomic.publish_text); True if this call wrote it.
    Local paths only: object stores are not relied on for a conditional create."""
    return atomic.publish_text(require_local(path, "publish_text"), text)


def exists(path: str) -> bool:
    """A file, or (remote) an object or a non-empty prefix."""
    path = normalize(path)
    if not is_remote(path):
        return os.path.exists(path)
    store, key = _remote(path)
    found = _call(path, "reading", lambda: store.read(key).result())
    return found.state == "value" or isdir(path)


def isdir(path: str) -> bool:
    """A directory, or (remote) a prefix holding at least one object."""
    path = normalize(path)
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(listdir(path))


def _keys_under(path: str) -> list[str]:
    """Every key under the remote prefix `path`, relative to it."""
    store, key = _remote(path)
    prefix = key.rstrip("/") + "/" if key else ""
    keys = _call(path, "listing", lambda: store.list(_prefix_range(key)).result())
    return [bytes(found).decode("utf-8")[len(prefix) :] for found in keys]


def listdir(path: str) -> list[str]:
    """Names directly under `path`, sorted; remote: the first key component after the prefix
    (an empty list where nothing is stored, as object stores have no empty directories)."""
    path = normalize(path)
    if not is_remote(path):
        return sorted(os.listdir(path))
    return sorted({key.split("/", 1)[0] for key in _keys_under(path)})


def list_files(path: str) -> list[str]:
    """Every file under `path`, recursively, as sorted '/'-separated relative paths."""
    path = normalize(path)
    if not is_remote(path):
        found = []
        for root, _, names in os.walk(path):
            relative = os.path.relpath(root, path)
            for name in names:
                found.append(name if relative == "." else f"{relative.replace(os.sep, '/')}/{name}")
        return sorted(found)
    return sorted(_keys_under(path))


def makedirs(path: str) -> None:
    """os.makedirs(exist_ok=True) locally; nothing on object storage (no directories)."""
    path = normalize(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Deletes a file if present."""
    path = normalize(path)
    if not is_remote(path):
        if os.path.exists(path):
            os.remove(path)
        return
    store, key = _remote(path)
    _call(
        path, "deleting", lambda: store.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()
    )


def rmtree(path: str) -> None:
    """Deletes a directory (or prefix) and everything under it, if present."""
    path = normalize(path)
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    store, key = _remote(path)
    _call(path, "deleting", lambda: store.delete_range(_prefix_range(key)).result())
    remove(path)
