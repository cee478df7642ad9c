"""The console scripts (pyproject.toml [project.scripts]).

Each runs its binary module as `python -m` does (runpy, __main__ = the module), so absl's --help
shows that binary's docstring and flags, and a flag-defining module is imported once.
"""

import runpy


def _run(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def scenes() -> None:
    """`lateint-scenes`: python -m lateint.data.scenes."""
    _run("lateint.data.scenes")


def train() -> None:
    """`lateint-train`: python -m lateint.train.main."""
    _run("lateint.train.main")


def precompute() -> None:
    """`lateint-precompute`: python -m lateint.index.precompute."""
    _run("lateint.index.precompute")


def build() -> None:
    """`lateint-build`: python -m lateint.index.build."""
    _run("lateint.index.build")


def add() -> None:
    """`lateint-add`: python -m lateint.index.add."""
    _run("lateint.index.add")


def delete() -> None:
    """`lateint-delete`: python -m lateint.index.delete."""
    _run("lateint.index.delete")


def compact() -> None:
    """`lateint-compact`: python -m lateint.index.compact."""
    _run("lateint.index.compact")


def serve() -> None:
    """`lateint-serve`: python -m lateint.serve.main."""
    _run("lateint.serve.main")


def evaluate() -> None:
    """`lateint-evaluate`: python -m lateint.evaluation.main."""
    _run("lateint.evaluation.main")
