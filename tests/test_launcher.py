"""launcher.ServerProcess: one child per ServerProcess, ended on leaving `with`."""

import pytest

from launcher import ServerProcess

# bazel: size=medium


def test_a_second_start_is_refused_and_with_after_start_starts_one_child(tmp_path):
    # No model there: the child exits by itself soon; what matters is how many were started.
    server = ServerProcess(
        str(tmp_path / "no_workdir"),
        str(tmp_path / "no_index"),
        log_path=str(tmp_path / "server.log"),
    )
    with server.start() as entered:
        assert entered is server
        child = server.process
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        assert server.process is child
    assert child.poll() is not None  # ended (or reaped) on leaving the block
