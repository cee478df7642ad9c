"""Runs `python -m lateint.serve.main` as a child process on loopback (for tests and bench/serve.py).

with ServerProcess(workdir, index_dir, flags=["--max_batch=16"]) as server:
    server.wait_ready()
    httpx.post(server.url + "/search", json={"query": "two horses", "k": 5})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServerProcess:
    """One server child process; its stdout and stderr go to a log file (see `log_tail`)."""

    def __init__(
        self,
        workdir: str,
        index_dir: str,
        flags=(),
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | None = None,
        env: dict | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="serve-", suffix=".log")
            os.close(handle)
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "lateint.serve.main",
            f"--workdir={workdir}",
            f"--index={index_dir}",
            f"--host={host}",
            f"--port={self.port}",
            *flags,
        ]
        self.env = None if env is None else {**os.environ, **env}  # added to the environment
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        """Starts the child; refuses a second start (the first child would be left running)."""
        if self.process is not None:
            raise RuntimeError(f"server on port {self.port} was already started")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def log_tail(self, characters: int = 4000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-characters:]

    def wait_ready(self, timeout: float = 300.0, compiled: bool = True) -> dict:
        """Polls GET /healthz until it answers 200; returns its JSON. compiled: also wait until
        the background compile has finished, so every request runs on its own bucket (what
        benchmarks and exact comparisons want). Raises RuntimeError with the log's tail if the
        process exits or the timeout passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode} before it "
                    f"was ready:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(self.url + "/healthz", timeout=2.0)
                if response.status_code == 200 and not (
                    compiled and response.json()["compile"]["background"]
                ):
                    return response.json()
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then waits for the exit; returns the exit code (kills after timeout)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        # `with ServerProcess(...).start() as server:` must not start a second process on the
        # same port (it would fail to bind and exit while the first one answers).
        return self if self.process is not None else self.start()

    def __exit__(self, *exception) -> None:
        self.terminate()
