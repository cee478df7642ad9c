"""lateint.kill_points: a held point announces itself and waits until released."""

import threading
import time

import pytest

from lateint import kill_points


def test_a_point_not_named_returns_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("LATEINT_HOLD_AT", "publish")
    monkeypatch.setenv("LATEINT_HOLD_DIR", str(tmp_path))
    (tmp_path / "other.hold").touch()
    kill_points.hold("other")
    assert not list(tmp_path.glob("*.reached"))


def test_the_named_point_waits_while_its_hold_file_exists(monkeypatch, tmp_path):
    monkeypatch.setenv("LATEINT_HOLD_AT", "publish")
    monkeypatch.setenv("LATEINT_HOLD_DIR", str(tmp_path))
    (tmp_path / "publish.hold").touch()
    thread = threading.Thread(target=kill_points.hold, args=("publish",))
    thread.start()
    deadline = time.time() + 10
    while not (tmp_path / "publish.reached").exists() and time.time() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "publish.reached").exists()
    time.sleep(0.1)
    assert thread.is_alive()  # still held
    (tmp_path / "publish.hold").unlink()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_missing_hold_dir_is_refused_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LATEINT_HOLD_AT", "publish")
    monkeypatch.setenv("LATEINT_HOLD_DIR", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="LATEINT_HOLD_DIR"):
        kill_points.hold("publish")
