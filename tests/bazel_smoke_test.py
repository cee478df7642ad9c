"""The test environment is the project virtualenv, under pytest and under `bazel test`."""

# bazel: tags=smoke

import os
import sys

import numpy as np

import lateint

_REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _venv_dir() -> str:
    return os.path.realpath(os.environ.get("LATEINT_VENV") or os.path.join(_REPO, ".venv"))


def test_interpreter_is_the_project_virtualenv():
    assert sys.prefix != sys.base_prefix, f"not running in a virtualenv: {sys.executable}"
    assert os.path.realpath(sys.prefix) == _venv_dir(), (sys.prefix, _venv_dir())
    assert sys.version_info[:2] >= (3, 10)


def test_numpy_comes_from_the_virtualenv_and_computes():
    site = os.path.realpath(np.__file__)
    assert site.startswith(_venv_dir() + os.sep), site
    matrix = np.array([[3.0, 1.0], [1.0, 2.0]])
    solution = np.linalg.solve(matrix, np.array([9.0, 8.0]))
    np.testing.assert_allclose(solution, [2.0, 3.0])
    np.testing.assert_allclose(np.linalg.eigvalsh(matrix), [(5 - 5**0.5) / 2, (5 + 5**0.5) / 2])


def test_project_package_is_this_checkout():
    assert os.path.realpath(lateint.__file__) == os.path.join(_REPO, "lateint", "__init__.py")
    if "TEST_SRCDIR" in os.environ:  # under Bazel: imported from the runfiles tree
        assert os.path.join(os.environ["TEST_SRCDIR"], "") in os.path.abspath(lateint.__file__)


def test_bazel_runner_maps_the_test_environment_to_pytest_arguments():
    from bazel_pytest_main import pytest_args  # tests/ is on sys.path under pytest and Bazel

    environ = {"XML_OUTPUT_FILE": "/o/test.xml", "TEST_TMPDIR": "/t", "TESTBRIDGE_TEST_ONLY": "x"}
    assert pytest_args(["tests/test_a.py", "-x"], environ) == [
        "-p",
        "no:cacheprovider",
        "--junitxml=/o/test.xml",
        "--basetemp=/t/pytest",
        "-k",
        "x",
        "tests/test_a.py",
        "-x",
    ]
    assert pytest_args(["tests/test_a.py"], {}) == ["-p", "no:cacheprovider", "tests/test_a.py"]


def test_role_packages_come_from_the_tree_lateint_came_from():
    """lateint.train etc. are the folders next to this lateint/ (lateint/__init__.py's finder):
    under Bazel the runfiles tree, not the source checkout the editable install points at."""
    import importlib

    tree = os.path.dirname(os.path.dirname(os.path.abspath(lateint.__file__)))
    for role in ("lateint.train", "lateint.index", "lateint.serve", "lateint.evaluation"):
        package = importlib.import_module(role)
        folder = os.path.join(tree, role.split(".")[1])
        assert os.path.abspath(package.__file__) == os.path.join(folder, "__init__.py"), role
