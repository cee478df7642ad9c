"""tests/fixture_cache.py: one build per key across processes, new inputs make a new entry, a
changed entry is refused, old entries are pruned."""

# bazel: size=medium
# bazel: tags=smoke

import os
import subprocess
import sys
import textwrap

import fixture_cache
import pytest

_BUILDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import fixture_cache

    def build(folder):
        with open({log!r}, "a") as log:
            log.write(f"{{os.getpid()}}\\n")
        time.sleep(1.0)  # the other process arrives while this one builds
        os.makedirs(os.path.join(folder, "sub"))
        with open(os.path.join(folder, "sub", "data.txt"), "w") as file:
            file.write("built")

    print(fixture_cache.cached_directory("corpus", {{"n": 3}}, ("lateint",), build))
""")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATEINT_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fixture_cache, "_used", {})
    return tmp_path / "cache"


def _write(text):
    """A build function that writes `text` into file.txt."""

    def build(folder):
        with open(os.path.join(folder, "file.txt"), "w") as file:
            file.write(text)

    return build


def test_two_processes_build_an_entry_once_and_share_it(cache, tmp_path):
    log = tmp_path / "builds.log"
    script = _BUILDER.format(tests=os.path.dirname(os.path.abspath(__file__)), log=str(log))
    environment = dict(os.environ, LATEINT_TEST_CACHE=str(cache))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=environment
        )
        for _ in range(2)
    ]
    paths = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert paths[0] == paths[1] and os.path.basename(paths[0]).startswith("corpus-")
    assert len(log.read_text().split()) == 1  # built by one of them only
    with open(os.path.join(paths[0], "sub", "data.txt")) as file:
        assert file.read() == "built"
    assert sorted(os.listdir(cache)) == sorted(
        os.path.basename(paths[0]) + suffix for suffix in ("", ".lock", ".sha256")
    )


def _contents(path):
    with open(os.path.join(path, "file.txt")) as file:
        return file.read()


def test_other_inputs_or_sources_make_another_entry(cache):
    first = fixture_cache.cached_directory("entry", {"n": 1}, ("lateint",), _write("one"))
    again = fixture_cache.cached_directory("entry", {"n": 1}, ("lateint",), _write("unused"))
    assert first == again and _contents(again) == "one"
    other_inputs = fixture_cache.cached_directory("entry", {"n": 2}, ("lateint",), _write("two"))
    assert other_inputs != first and _contents(other_inputs) == "two"
    other_sources = fixture_cache.cached_directory(
        "entry", {"n": 1}, ("lateint", "train"), _write("three")
    )
    assert other_sources not in (first, other_inputs) and _contents(other_sources) == "three"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        fixture_cache.cached_directory("entry", {}, ("no_such_folder",), _write("x"))


def test_a_changed_entry_is_reported_and_then_refused(cache, monkeypatch):
    path = fixture_cache.cached_directory("entry", {}, ("lateint",), _write("one"))
    assert fixture_cache.modified_entries() == []
    with open(os.path.join(path, "file.txt"), "a") as file:
        file.write(" and more")
    assert fixture_cache.modified_entries() == [path]
    monkeypatch.setattr(fixture_cache, "_used", {})  # as a new process sees it
    with pytest.raises(RuntimeError, match="changed after it was built"):
        fixture_cache.cached_directory("entry", {}, ("lateint",), _write("one"))


def test_a_failed_build_leaves_no_entry_and_the_next_one_succeeds(cache):
    def broken(folder):
        _write("half")(folder)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fixture_cache.cached_directory("entry", {}, ("lateint",), broken)
    assert not any(name.endswith(".sha256") for name in os.listdir(cache))
    path = fixture_cache.cached_directory("entry", {}, ("lateint",), _write("whole"))
    assert _contents(path) == "whole"
    assert not [name for name in os.listdir(cache) if ".partial-" in name]


def test_only_the_newest_entries_of_a_name_are_kept(cache):
    paths = []
    for n in range(fixture_cache.KEEP + 2):
        paths.append(
            fixture_cache.cached_directory("entry", {"n": n}, ("lateint",), _write(str(n)))
        )
        os.utime(paths[-1] + ".sha256", (1000 + n, 1000 + n))  # a clear order of last use
    kept = sorted(name[: -len(".sha256")] for name in os.listdir(cache) if name.endswith(".sha256"))
    assert kept == sorted(os.path.basename(path) for path in paths[-fixture_cache.KEEP :])
    assert not any(os.path.exists(path) for path in paths[: -fixture_cache.KEEP])
    assert len(os.listdir(cache)) == 3 * fixture_cache.KEEP  # entry, .lock, .sha256 each
