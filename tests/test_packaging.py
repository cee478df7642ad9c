"""One installed namespace: the wheel holds only `lateint` (train/, index/, serve/, evaluation/
inside it), its console scripts answer --help from a fresh virtualenv, and from a checkout every
module loads under its lateint.* name only."""

# bazel: size=medium

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import tomllib

from launcher import REPOSITORY

with open(os.path.join(REPOSITORY, "pyproject.toml"), "rb") as _file:
    _PYPROJECT = tomllib.load(_file)
_SETUPTOOLS = _PYPROJECT["tool"]["setuptools"]
_SCRIPTS = _PYPROJECT["project"]["scripts"]
ROLE_FOLDERS = sorted(
    folder for name, folder in _SETUPTOOLS["package-dir"].items() if name != folder
)
# Every console script and the binary it runs (lateint/cli.py).
SCRIPT_MODULES = {
    "lateint-scenes": "lateint.data.scenes",
    "lateint-train": "lateint.train.main",
    "lateint-precompute": "lateint.index.precompute",
    "lateint-build": "lateint.index.build",
    "lateint-serve": "lateint.serve.main",
    "lateint-evaluate": "lateint.evaluation.main",
    "lateint-add": "lateint.index.add",
    "lateint-delete": "lateint.index.delete",
    "lateint-compact": "lateint.index.compact",
}


def _first_docstring_line(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return ast.get_docstring(ast.parse(file.read())).splitlines()[0]


def _run(command, cwd, timeout=120, **kwargs):
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project's wheel, built offline from a copy of the packaged sources (so no build/ or
    egg-info lands in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "BUILD")
    for folder in ["lateint", *ROLE_FOLDERS]:
        shutil.copytree(os.path.join(REPOSITORY, folder), source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPOSITORY, name), source / name)
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        cwd=root,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (root / "dist").glob("lateint-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package_with_the_role_folders_inside(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"lateint"}
    for folder in ROLE_FOLDERS:
        assert f"lateint/{folder}/__init__.py" in names
    assert "lateint/train/configs/tiny.py" in names
    assert "lateint/serve/static/index.html" in names  # the demo page (package data)
    assert not [name for name in names if name.endswith("/BUILD") or "__pycache__" in name]


def test_the_installed_wheel_answers_every_console_script_from_a_fresh_virtualenv(wheel, tmp_path):
    assert _SCRIPTS.keys() == SCRIPT_MODULES.keys()
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    python = str(venv / "bin" / "python")
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The dependencies come from the project virtualenv's site-packages, added as a plain path:
    # its .pth files (the editable install's finder of this checkout) are not run from there.
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    )
    fresh_site = site.stdout.strip()
    with open(os.path.join(fresh_site, "project_dependencies.pth"), "w") as file:
        file.write(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    probe = _run(
        [
            python,
            "-c",
            "import json, sys, lateint.serve.app, lateint.evaluation.harness\n"
            "bare = {}\n"
            f"for name in {ROLE_FOLDERS!r}:\n"
            "    try:\n"
            "        __import__(name)\n"
            "        bare[name] = 'imported'\n"
            "    except ModuleNotFoundError:\n"
            "        bare[name] = 'missing'\n"
            "print(json.dumps({'app': lateint.serve.app.__file__, 'bare': bare}))",
        ],
        cwd=elsewhere,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["app"].startswith(fresh_site + os.sep), found
    assert found["bare"] == dict.fromkeys(ROLE_FOLDERS, "missing")

    helps = {
        script: subprocess.Popen(
            [str(venv / "bin" / script), "--help"],
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for script in _SCRIPTS
    }
    for script, process in helps.items():
        output, _ = process.communicate(timeout=120)
        source = os.path.join(fresh_site, *SCRIPT_MODULES[script].split(".")) + ".py"
        # absl prints the binary's docstring and its flags, then exits 1 (its --help convention)
        assert process.returncode == 1, (script, output)
        assert "Traceback" not in output, (script, output)
        assert output.lstrip().startswith(_first_docstring_line(source)), (script, output)
        assert "Try --helpfull" in output, (script, output)


_ONE_NAME_PROBE = r"""
import importlib, json, os, sys
from absl.flags import DuplicateFlagError

repo, roles = sys.argv[1], sys.argv[2].split(",")
refused = {}
for role in roles:
    try:
        importlib.import_module(role)
        refused[role] = None
    except ImportError as error:
        refused[role] = str(error)
names = []
for top in ["lateint", *roles]:
    for folder, dirs, files in os.walk(os.path.join(repo, top)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        if "__init__.py" not in files:
            continue
        package = os.path.relpath(folder, repo).replace(os.sep, ".")
        package = package if top == "lateint" else "lateint." + package
        names += [package] + [f"{package}.{f[:-3]}" for f in sorted(files)
                              if f.endswith(".py") and f != "__init__.py"]
for name in names:
    try:
        importlib.import_module(name)
    except DuplicateFlagError:
        pass  # two binaries in one process define the same flag; their imports have run
by_file = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    relative = os.path.relpath(os.path.abspath(path), repo) if path else ".."
    if relative.split(os.sep)[0] in ["lateint", *roles]:  # not .venv/...
        by_file.setdefault(relative, []).append(name)
print(json.dumps({"refused": refused, "imported": len(names), "by_file": by_file}))
"""


def test_from_the_checkout_every_module_loads_under_its_lateint_name_only():
    """From the repository root (on sys.path, as under `python -m`), importing every module of
    the tree loads each file once, as lateint.*; `import serve` and the like are refused."""
    probe = _run(
        [sys.executable, "-c", _ONE_NAME_PROBE, REPOSITORY, ",".join(ROLE_FOLDERS)],
        cwd=REPOSITORY,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.splitlines()[-1])
    for role, error in found["refused"].items():
        assert error is not None and f"lateint.{role}" in error, (role, error)
    assert found["imported"] > 100
    twice = {path: names for path, names in found["by_file"].items() if len(names) > 1}
    assert not twice
    outside = {
        names[0] for names in found["by_file"].values() if not names[0].startswith("lateint")
    }
    assert not outside
    for folder in ROLE_FOLDERS:  # every role folder's modules were loaded, from this checkout
        assert any(path.startswith(folder + os.sep) for path in found["by_file"])


# Which role packages each may import (DESIGN.md: lateint <- train, index <- serve <- evaluation).
ALLOWED_IMPORTS = {
    "lateint": set(),
    "train": set(),
    "index": set(),
    "serve": {"index"},
    "evaluation": {"index", "serve"},
}


def _role_imports(path: str) -> set:
    """The role packages (train, index, ...) a module imports, as lateint.<role>."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "lateint" and len(parts) > 1 and parts[1] in ALLOWED_IMPORTS:
                found.add(parts[1])
    return found


def test_imports_flow_one_way_between_the_folders():
    wrong = {}
    for top, allowed in ALLOWED_IMPORTS.items():
        for folder, dirs, files in os.walk(os.path.join(REPOSITORY, top)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    extra = _role_imports(path) - allowed - {top}
                    if extra:
                        wrong[os.path.relpath(path, REPOSITORY)] = sorted(extra)
    assert not wrong
    # the check sees imports at all: evaluation's harness imports serve and index
    assert _role_imports(os.path.join(REPOSITORY, "evaluation", "harness.py")) >= {"serve", "index"}
