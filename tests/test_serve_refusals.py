"""lateint.serve.main on an INDEX it must refuse: one line naming the file and the field, exit status 2,
no traceback, nothing served. (An unfinished INDEX: tests/test_server.py.)"""

import os
import shutil
import subprocess
import sys

import pytest

from lateint.index.manifest import EXIT_REFUSED, read_manifest, write_manifest
from launcher import REPOSITORY


def _edited_copy(index_dir, tmp_path, **fields):
    """A copy of INDEX whose manifest has `fields` replaced."""
    copy = str(tmp_path / "index")
    shutil.copytree(index_dir, copy)
    manifest = read_manifest(copy)
    manifest.update(fields)
    write_manifest(copy, manifest)
    return copy


def _serve(workdir, index_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lateint.serve.main",
            f"--workdir={workdir}",
            f"--index={index_dir}",
            "--port=1",
            *extra,
        ],  # never bound: it must not serve
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case", ["another_model", "split_layer", "no_index"])
def test_serve_main_refuses_with_one_line_and_exit_status_2(
    tiny_workdir, concepts_index, tmp_path, case
):
    ours = read_manifest(concepts_index)
    if case == "another_model":
        index_dir = _edited_copy(concepts_index, tmp_path, model_fingerprint="0123456789abcdef")
        expected = [
            f"{index_dir}/manifest.json: ",
            "'0123456789abcdef'",
            repr(ours["model_fingerprint"]),
        ]
    elif case == "split_layer":
        # The fingerprint matches; the manifest says the activations stop at another layer.
        index_dir = _edited_copy(concepts_index, tmp_path, split_layer=ours["split_layer"] + 1)
        expected = [
            f"{index_dir}/manifest.json: field 'split_layer' is "
            f"{ours['split_layer'] + 1}, the model's config has {ours['split_layer']}"
        ]
    else:
        index_dir = str(tmp_path / "missing")
        expected = [os.path.join(index_dir, "manifest.json")]
    completed = _serve(tiny_workdir, index_dir)
    assert completed.returncode == EXIT_REFUSED, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    refusal = [line for line in completed.stderr.splitlines() if "refused INDEX" in line]
    assert len(refusal) == 1, completed.stderr[-3000:]
    assert refusal[0].startswith("lateint.serve.main: refused INDEX: ")
    for text in expected:
        assert text in refusal[0], refusal[0]
    assert "serving on" not in completed.stderr


@pytest.mark.parametrize(
    "value, message",
    [
        ("9", "--index_shards=9: JAX sees 1 devices"),
        ("two", "--index_shards: expected a number or 'all', got 'two'"),
    ],
)
def test_serve_main_refuses_more_shards_than_devices(tiny_workdir, concepts_index, value, message):
    completed = _serve(tiny_workdir, concepts_index, f"--index_shards={value}")
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert message in completed.stderr and "Traceback" not in completed.stderr
