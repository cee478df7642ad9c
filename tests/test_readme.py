"""README's quick start runs as written, on the tiny fixtures: its Python block and its HTTP
block, with only the workdir, INDEX and port substituted."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from launcher import REPOSITORY, free_port

README = os.path.join(REPOSITORY, "README.md")
SECTION = "## Quick start"


def _blocks(language: str) -> list[str]:
    """The fenced `language` blocks of README's quick-start section."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _substituted(block: str, workdir: str, index_dir: str) -> str:
    for placeholder in ("runs/scenes/model", "runs/scenes/index"):
        assert placeholder in block, f"README's snippet no longer names {placeholder}"
    return block.replace("runs/scenes/model", workdir).replace("runs/scenes/index", index_dir)


def _environment(tmp_path) -> dict:
    """The test's Python first on PATH (the snippets say `python`); a private XLA cache."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    )


def test_the_python_quick_start_prints_ranked_ids_and_scores(
    tiny_workdir, concepts_index, tmp_path
):
    (block,) = _blocks("python")
    code = _substituted(block, tiny_workdir, concepts_index)
    finished = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=900,
        env=_environment(tmp_path),
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    lines = finished.stdout.split("\n")[:-1]
    assert len(lines) == 5, finished.stdout
    ids = [line.strip() for line in open(os.path.join(concepts_index, "ids.txt"))]
    scores = []
    for rank, line in enumerate(lines, start=1):
        got_rank, image_id, score = line.split()
        assert int(got_rank) == rank and image_id in ids
        scores.append(float(score))
    assert scores == sorted(scores, reverse=True)


def test_the_http_quick_start_answers_ranked_json(tiny_workdir, concepts_index, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the README snippet uses it)")
    (block,) = _blocks("bash")
    port = free_port()
    script = _substituted(block, tiny_workdir, concepts_index).replace("8080", str(port))
    finished = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=900,
        env=_environment(tmp_path),
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    answer = json.loads(finished.stdout)
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["query"] == "two horses to the left of a dog"
