"""Entry point of every Bazel py_test (third_party/bazel/defs.bzl: pytest_test).

Usage: bazel_pytest_main.py TEST_FILE [PYTEST_ARGS...]. Runs pytest on TEST_FILE and exits with
pytest's exit code (a file that collects no test fails, unless --test_filter deselected them all).
Under Bazel it also writes JUnit XML where Bazel asks ($XML_OUTPUT_FILE),
keeps pytest's temporary directories inside $TEST_TMPDIR, maps --test_filter to `-k`, and keeps
pytest's cache out of the runfiles. The name does not match test_*.py / *_test.py, so plain
pytest never collects this file.
"""

from __future__ import annotations

import os
import sys


def _drop_own_folder_from_path() -> None:
    """Python put this file's real folder (the source tree's tests/) first on sys.path.

    Under Bazel every import must come from the runfiles, where only declared files exist;
    the source folder would hide a missing dependency.
    """
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == here:
        del sys.path[0]


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Builds pytest's argument list from this runner's argv and Bazel's test environment."""
    if not argv:
        raise SystemExit("usage: bazel_pytest_main.py TEST_FILE [PYTEST_ARGS...]")
    args = ["-p", "no:cacheprovider"]
    if environ.get("XML_OUTPUT_FILE"):
        args.append(f"--junitxml={environ['XML_OUTPUT_FILE']}")
    if environ.get("TEST_TMPDIR"):
        args.append(f"--basetemp={os.path.join(environ['TEST_TMPDIR'], 'pytest')}")
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
    return args + list(argv)


def main(argv: list[str]) -> int:
    _drop_own_folder_from_path()
    import pytest  # from the virtualenv

    code = int(pytest.main(pytest_args(argv[1:], dict(os.environ))))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED and os.environ.get("TESTBRIDGE_TEST_ONLY"):
        # `bazel test --test_filter=EXPR //...`: a file with no test matching EXPR passes.
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
