"""A content-keyed on-disk cache for the expensive session fixtures (scenes corpus, tiny model,
INDEX), shared by the pytest-xdist workers of one run and by later runs with the same inputs.

    path = cached_directory("tiny_model", {"steps": 6}, ("lateint", "train"), build)

- The key is the SHA-256 of the entry's name and `inputs` (JSON), the bytes of every file under
  the repository folders `sources`, tests/conftest.py and this file, the installed distributions
  (name==version), the Python version and the JAX/XLA environment variables: changing any of
  them makes a new entry, so nothing is reused from stale inputs.
- `build(folder)` writes into `<entry>.partial-<pid>`, a sibling of the entry (relative paths
  stored inside, e.g. an INDEX's path to its corpus, stay valid), which is renamed into place
  when complete. An exclusive `fcntl.flock` on `<entry>.lock` makes the other processes wait
  for it instead of building it again; a crashed build leaves only a partial folder, removed by
  the next builder.
- Entries are read-only by contract (a test that changes one copies it first). The digest of
  every file's path and bytes is written when an entry is built and compared when a process
  first uses it and again at the end of its session (`modified_entries`), so a test that writes
  into a shared entry fails the run instead of poisoning the tests after it.

Location: $LATEINT_TEST_CACHE, else $TEST_TMPDIR/fixture-cache under Bazel (each test target is
its own process), else <repository>/.cache/test-fixtures (ignored by git and Bazel). Only the
newest KEEP entries of each name stay; `rm -rf .cache/test-fixtures` starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = 2  # entries kept per name (the newest by last use); older ones are deleted
_ENVIRONMENT = ("JAX_PLATFORMS", "JAX_ENABLE_X64", "XLA_FLAGS")
_used: dict[str, str] = {}  # entry path -> its recorded digest, for this process


def cache_root() -> str:
    if os.environ.get("LATEINT_TEST_CACHE"):
        return os.path.abspath(os.environ["LATEINT_TEST_CACHE"])
    if os.environ.get("TEST_TMPDIR"):
        return os.path.join(os.environ["TEST_TMPDIR"], "fixture-cache")
    return os.path.join(REPOSITORY, ".cache", "test-fixtures")


def _files(root: str) -> Iterator[tuple[str, str]]:
    """(path relative to root, absolute path) of every file under root, in a fixed order;
    caches of the interpreter are left out."""
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(name for name in folders if name != "__pycache__")
        for name in sorted(names):
            if not name.endswith(".pyc"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, root), path


def tree_digest(root: str) -> str:
    """SHA-256 over every file's relative path and bytes under root."""
    digest = hashlib.sha256()
    for relative, path in _files(root):
        digest.update(relative.encode() + b"\0")
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def entry_key(name: str, inputs: dict, sources: tuple[str, ...]) -> str:
    """The hex key of an entry: what its contents depend on (see the module docstring)."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(json.dumps([name, inputs], sort_keys=True).encode())
    for source in sources:
        folder = os.path.join(REPOSITORY, source)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"fixture cache: source folder {folder!r} does not exist")
        digest.update(f"{source}:{tree_digest(folder)}".encode())
    for own in ("conftest.py", os.path.basename(__file__)):
        with open(os.path.join(here, own), "rb") as file:
            digest.update(hashlib.sha256(file.read()).digest())
    distributions = sorted(
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
    )
    digest.update("\n".join([sys.version, *distributions]).encode())
    digest.update(json.dumps({k: os.environ.get(k) for k in _ENVIRONMENT}).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """Holds an exclusive flock on `path` (created if missing); yields False when `blocking`
    is off and another process holds it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


def _check(entry: str) -> None:
    """Records the entry's digest for this process, failing when its files were changed."""
    if entry in _used:
        return
    recorded = _read(entry + ".sha256")
    if tree_digest(entry) != recorded:
        raise RuntimeError(
            f"fixture cache entry {entry} was changed after it was built (a test "
            f"wrote into a shared fixture instead of copying it): delete it "
            f"(rm -rf {entry} {entry}.sha256) and find that test"
        )
    _used[entry] = recorded
    os.utime(entry + ".sha256")  # last use, for pruning


def _prune(root: str, name: str) -> None:
    """Deletes all but the KEEP most recently used entries called `name` (skipping any that is
    being built)."""
    digests = sorted(glob.glob(os.path.join(root, f"{name}-*.sha256")), key=os.path.getmtime)
    for digest_file in digests[:-KEEP]:
        entry = digest_file[: -len(".sha256")]
        with _locked(entry + ".lock", blocking=False) as acquired:
            if acquired:
                shutil.rmtree(entry, ignore_errors=True)
                os.remove(digest_file)
        if acquired:
            os.remove(entry + ".lock")


def cached_directory(
    name: str, inputs: dict, sources: tuple[str, ...], build: Callable[[str], None]
) -> str:
    """The path of the cache entry `name` for these inputs, built by `build(folder)` (which
    fills the empty `folder`) by the first process that needs it. Never write into it."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    entry = os.path.join(root, f"{name}-{entry_key(name, inputs, sources)[:20]}")
    if not os.path.isdir(entry):
        with _locked(entry + ".lock"):
            if not os.path.isdir(entry):  # nobody built it while this process waited
                for stale in glob.glob(glob.escape(entry) + ".partial-*"):
                    shutil.rmtree(stale)
                partial = f"{entry}.partial-{os.getpid()}"
                os.makedirs(partial)
                build(partial)
                with open(entry + ".sha256", "w") as file:
                    file.write(tree_digest(partial) + "\n")
                os.rename(partial, entry)
        _prune(root, name)
    _check(entry)
    return entry


def modified_entries() -> list[str]:
    """The entries this process used whose files have changed since they were built."""
    return [entry for entry, recorded in _used.items() if tree_digest(entry) != recorded]
