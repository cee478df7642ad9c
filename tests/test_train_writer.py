"""lateint.train.writer after a resume (no repeated steps in metrics.jsonl) and lateint.train.main's clean-up of
a workdir it created for a run that failed before its first checkpoint."""

import json
import os
import subprocess
import sys

from lateint.train.writer import METRICS_FILE, MetricWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(workdir):
    with open(os.path.join(workdir, METRICS_FILE)) as handle:
        return [json.loads(line)["step"] for line in handle]


def test_a_resumed_writer_drops_the_steps_after_the_checkpoint(tmp_path):
    workdir = str(tmp_path)
    writer = MetricWriter(workdir)
    for step in range(1, 11):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    with open(os.path.join(workdir, METRICS_FILE), "a") as handle:
        handle.write('{"step": 11, "loss')  # torn by a kill mid-write
    writer = MetricWriter(workdir, resume_step=6)  # the checkpoint the run resumes from
    for step in range(7, 9):
        writer.write(step, {"loss": 0.5})
    writer.close()
    assert _steps(workdir) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert sorted(os.listdir(workdir)) == [METRICS_FILE, "tensorboard"]  # no temporary left


def _train(workdir, data):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lateint.train.main",
            "--config=train/configs/tiny.py",
            f"--workdir={workdir}",
            f"--config.data.path={data}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_failed_run_leaves_no_workdir_it_created(tmp_path):
    workdir = str(tmp_path / "model")
    failed = _train(workdir, str(tmp_path / "no_such_corpus"))
    assert failed.returncode != 0
    assert "no_such_corpus" in failed.stderr
    assert not os.path.exists(workdir), os.listdir(workdir)
    # A workdir that existed before the run is the user's: left alone.
    os.makedirs(workdir)
    with open(os.path.join(workdir, "notes.txt"), "w") as handle:
        handle.write("mine")
    assert _train(workdir, str(tmp_path / "no_such_corpus")).returncode != 0
    assert os.listdir(workdir) == ["notes.txt"]
