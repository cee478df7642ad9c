"""SIGKILL during lateint.index.add / lateint.index.delete / lateint.index.compact, then a rerun: the INDEX equals an
uninterrupted run's, and the rerun resumed (its log says what it found done) instead of
starting over.

Kills of add and compact land at an observed point (a journal entry on disk) plus an offset
from a seeded generator; a kill that came after the operation finished is retried on a fresh
copy. The delete's window is milliseconds wide, so that binary is held at a named kill point
(lateint.kill_points) and killed there.
"""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
from live_index_helpers import (
    build_index,
    search_all,
    stage_arrays,
    start_binary,
    store_arrays,
    write_subset,
)

from lateint.index.add import add_images
from lateint.index.compact import compact_index
from lateint.index.delete import delete_images
from lateint.index.manifest import read_ids, read_manifest

ATTEMPTS = 12


@pytest.fixture(scope="module")
def base(tiny_workdir, scenes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    write_subset(scenes_dir, np.arange(0, 120), str(root / "a"))
    write_subset(scenes_dir, np.arange(120, 200), str(root / "b"))
    return str(root), build_index(tiny_workdir, str(root / "a"), str(root / "base"))


def _assert_same_index(got: str, expected: str) -> None:
    assert read_manifest(got)["generation"] == read_manifest(expected)["generation"]
    assert read_ids(got, read_manifest(got)) == read_ids(expected, read_manifest(expected))
    for role, array in store_arrays(expected).items():
        np.testing.assert_array_equal(store_arrays(got)[role], array, err_msg=role)
    got_stages = stage_arrays(got)
    for name, arrays in stage_arrays(expected).items():
        for key, array in arrays.items():
            np.testing.assert_array_equal(got_stages[name][key], array, err_msg=f"{name} {key}")
    got_results = search_all(got)
    for name, (ids, scores) in search_all(expected).items():
        np.testing.assert_array_equal(got_results[name][0], ids, err_msg=name)
        np.testing.assert_array_equal(got_results[name][1], scores, err_msg=name)


def _kill_mid_way(
    copy_from: str, index_dir: str, arguments, observed, seed: int, latest: float = 0.3, landed=None
) -> None:
    """Runs the binary on fresh copies of `copy_from` until a kill, `observed(index_dir)` then
    a seeded 0-`latest` s later, leaves the INDEX in the state `landed(index_dir)` asks for
    (default: the operation unpublished)."""
    rng = np.random.default_rng(seed)
    generation = read_manifest(copy_from)["generation"]
    landed = landed or (lambda index_dir: read_manifest(index_dir)["generation"] == generation)
    for _ in range(ATTEMPTS):
        shutil.rmtree(index_dir, ignore_errors=True)
        shutil.copytree(copy_from, index_dir)
        process = start_binary(*arguments)
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline and not observed(index_dir):
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, latest))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if landed(index_dir):
            return
    pytest.fail(f"{arguments[0]}: none of {ATTEMPTS} kills landed where the test needs it")


def _journal(index_dir: str, name: str) -> dict:
    try:
        with open(os.path.join(index_dir, name), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _rerun(*arguments) -> str:
    process = start_binary(*arguments)
    _, log = process.communicate(timeout=300)
    assert process.returncode == 0, log[-3000:]
    return log


def test_killed_add_resumes_to_the_same_index(tiny_workdir, base, tmp_path):
    root, base_dir = base
    reference = str(tmp_path / "reference")
    shutil.copytree(base_dir, reference)
    add_images(tiny_workdir, f"{root}/b", "test", reference, batch_size=8)
    killed = str(tmp_path / "killed")
    arguments = (
        "lateint.index.add",
        f"--workdir={tiny_workdir}",
        f"--index={killed}",
        f"--data={root}/b",
        "--split=test",
        "--batch_size=8",
    )

    def journaled_a_new_unit(index_dir):
        with open(os.path.join(index_dir, "progress.json"), encoding="utf-8") as handle:
            try:
                return any(stop > 120 for _, stop in json.load(handle)["completed"])
            except ValueError:
                return False

    _kill_mid_way(base_dir, killed, arguments, journaled_a_new_unit, seed=11)
    log = _rerun(*arguments)
    assert "resuming the add of 80 images" in log, log[-2000:]
    done = int(log.split(" already journaled")[0].rsplit(" ", 1)[1])
    encoded = int(log.split("lateint.index.add: encoded ")[1].split(" ")[0])
    assert done > 0 and done + encoded == 80, log[-2000:]
    _assert_same_index(killed, reference)


def test_killed_delete_resumes_to_the_same_index(base, tmp_path):
    _, base_dir = base
    ids = read_ids(base_dir, read_manifest(base_dir))
    deleted = [ids[row] for row in (0, 5, 77, 119)]
    id_file = tmp_path / "deleted.txt"
    id_file.write_text("".join(f"{image_id}\n" for image_id in deleted))
    reference = str(tmp_path / "reference")
    shutil.copytree(base_dir, reference)
    delete_images(reference, deleted)
    killed = str(tmp_path / "killed")
    tombstone_json = "first_stage/tombstones/tombstones.json"
    published = _journal(base_dir, tombstone_json)

    def written_not_published(index_dir):
        return (
            _journal(index_dir, tombstone_json) != published
            and read_manifest(index_dir)["generation"] == read_manifest(base_dir)["generation"]
        )

    # The window between the set's commit and the manifest's is milliseconds wide: the binary
    # is held at the kill point "publish" (lateint.kill_points) and killed there.
    arguments = ("lateint.index.delete", f"--index={killed}", f"--ids={id_file}")
    shutil.copytree(base_dir, killed)
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    (hold_dir / "publish.hold").touch()
    process = start_binary(
        *arguments, environment={"LATEINT_HOLD_AT": "publish", "LATEINT_HOLD_DIR": str(hold_dir)}
    )
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if (hold_dir / "publish.reached").exists():
            break
        time.sleep(0.01)
    assert (hold_dir / "publish.reached").exists(), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert written_not_published(killed)
    log = _rerun("lateint.index.delete", f"--index={killed}", f"--ids={id_file}")
    assert "resuming: tombstone set" in log, log[-2000:]
    _assert_same_index(killed, reference)


def test_killed_compact_resumes_to_the_same_index(tiny_workdir, base, tmp_path):
    root, base_dir = base
    changed = str(tmp_path / "changed")
    shutil.copytree(base_dir, changed)
    add_images(tiny_workdir, f"{root}/b", "test", changed, batch_size=16)
    ids = read_ids(changed, read_manifest(changed))
    delete_images(changed, [ids[row] for row in range(0, 200, 9)])
    reference = str(tmp_path / "reference")
    shutil.copytree(changed, reference)
    compact_index(reference)
    killed = str(tmp_path / "killed")

    def copied_rows(index_dir):
        return _journal(index_dir, "compact.json").get("rows_copied", 0) > 0

    _kill_mid_way(
        changed, killed, ("lateint.index.compact", f"--index={killed}"), copied_rows, seed=13
    )
    journal = _journal(killed, "compact.json")
    log = _rerun("lateint.index.compact", f"--index={killed}")
    assert (
        f"resuming on generation {journal['from_generation']}" in log
        and f"{journal['rows_copied']} rows copied" in log
    ), log[-2000:]
    _assert_same_index(killed, reference)
