"""The import graph of the project's Python modules, for gen_build.py's BUILD files.

discover() finds every .py file under ROOTS (with its import name, Bazel package, test-ness);
analyse() parses each with `ast` and fills in the project modules it needs: its imports (absolute
and relative, at any depth), its parent packages' `__init__`, a test's conftest.py files, and the
modules or folders its string constants name; it also marks the modules with a top-level
`if __name__ == "__main__":` (binaries) and reads a test's `# bazel: size=...` and
`# bazel: tags=...` lines.
strongly_connected() groups the modules that import each other in a cycle. Standard library only.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re

ROOTS = ("lateint", "train", "index", "serve", "evaluation", "tests", "bench")
# Folders installed under another dotted name (pyproject.toml's [tool.setuptools] package-dir,
# e.g. "lateint.train" = "train"); lateint/__init__.py maps them the same way in a source tree.
_PACKAGE_DIR = re.compile(r"^package-dir\s*=\s*\{(?P<body>[^}]*)\}", re.M)
_PAIR = re.compile(r'"(?P<name>[\w.]+)"\s*=\s*"(?P<folder>[\w./-]+)"')


def package_dirs(repo: str) -> dict[str, str]:
    """{top-level folder: dotted package name} for each folder pyproject.toml renames."""
    path = os.path.join(repo, "pyproject.toml")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        match = _PACKAGE_DIR.search(f.read())
    if match is None:
        return {}
    pairs = {m["folder"]: m["name"] for m in _PAIR.finditer(match["body"])}
    return {folder: name for folder, name in pairs.items() if folder != name}


TESTS_ROOT = "tests"
RUNNER = "tests/bazel_pytest_main.py"
SKIP_DIRS = {"__pycache__", "node_modules"}
SIZE_MARKER = re.compile(r"^#\s*bazel:\s*size\s*=\s*(small|medium|large|enormous)\s*$", re.M)
TAGS_MARKER = re.compile(
    r"^#\s*bazel:\s*tags\s*=\s*([a-z][a-z0-9_-]*(?:,[a-z][a-z0-9_-]*)*)\s*$", re.M
)
DEFAULT_TEST_SIZE = "large"


@dataclasses.dataclass
class Module:
    path: str  # repository-relative, '/'-separated
    name: str  # import name: dotted from the repository root, or bare in a non-package folder
    import_root: str  # "" (repository root) or the non-package folder it is importable from
    package: str  # Bazel package = the file's folder
    is_init: bool = False
    bare_imported: bool = False  # another module imports it by its bare name (import_root != "")
    is_test: bool = False
    is_binary: bool = False
    size: str = DEFAULT_TEST_SIZE
    tags: tuple = ()  # a test's `# bazel: tags=a,b` line, e.g. "smoke" (scripts/test.sh runs those)
    edges: set = dataclasses.field(default_factory=set)  # paths of modules it needs
    run_edges: set = dataclasses.field(default_factory=set)  # binaries: files loaded by path
    lib: str = ""  # library target name
    bin: str = ""  # binary target name

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def _is_test_file(path: str) -> bool:
    base = os.path.basename(path)
    in_tests = path.startswith(TESTS_ROOT + "/")
    return in_tests and (base.startswith("test_") or base.endswith("_test.py"))


def _import_root_and_name(repo: str, path: str, renamed: dict[str, str]) -> tuple[str, str]:
    """The folder a module is imported from and its import name there (`renamed`: see
    package_dirs; train/main.py is lateint.train.main)."""
    folder = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [] if stem == "__init__" else [stem]
    while folder and os.path.exists(os.path.join(repo, folder, "__init__.py")):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    if folder == "" and parts and parts[0] in renamed:
        parts[0] = renamed[parts[0]]
    return folder, ".".join(parts)


def discover(repo: str) -> dict[str, Module]:
    modules = {}
    renamed = package_dirs(repo)
    for root in ROOTS:
        if not os.path.isdir(os.path.join(repo, root)):
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(repo, root)):
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
            )
            for filename in sorted(filenames):
                if not filename.endswith(".py"):
                    continue
                path = os.path.relpath(os.path.join(dirpath, filename), repo).replace(os.sep, "/")
                if path == RUNNER:
                    continue
                import_root, name = _import_root_and_name(repo, path, renamed)
                modules[path] = Module(
                    path=path,
                    name=name,
                    import_root=import_root,
                    package=os.path.dirname(path),
                    is_init=filename == "__init__.py",
                    is_test=_is_test_file(path),
                )
    return modules


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and consts)


class Resolver:
    def __init__(self, modules: dict[str, Module]):
        self.modules = modules
        self.by_name = {(m.import_root, m.name): m for m in modules.values() if m.name}
        self.bare_imported: set = set()
        self.by_folder: dict[str, list[Module]] = {}
        for m in modules.values():
            self.by_folder.setdefault(m.folder, []).append(m)

    def lookup(self, importer: Module, name: str) -> Module | None:
        """The module `name` as `importer` would import it, or None if not a project module."""
        for root in dict.fromkeys([importer.import_root, ""]):
            found = self.by_name.get((root, name))
            if found is not None:
                if root:  # imported by a bare name: its folder must be on sys.path
                    self.bare_imported.add(found.path)
                return found
        return None

    def longest(self, importer: Module, dotted: str) -> Module | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            found = self.lookup(importer, ".".join(parts[:end]))
            if found is not None:
                return found
        return None

    def package_of(self, module: Module) -> str:
        """Dotted package a relative import in `module` starts from."""
        if module.is_init:
            return module.name
        return module.name.rpartition(".")[0]

    def imports(self, module: Module, tree: ast.AST) -> set:
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = self.longest(module, alias.name)
                    if target is not None:
                        found.add(target.path)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = self.package_of(module).split(".") if module.name else []
                    keep = len(package) - (node.level - 1)
                    if keep < 0:
                        continue
                    base = ".".join([p for p in package[:keep] if p] + ([base] if base else []))
                needs_base = False
                for alias in node.names:
                    target = self.lookup(module, f"{base}.{alias.name}" if base else alias.name)
                    if target is not None and alias.name != "*":
                        found.add(target.path)
                    else:
                        needs_base = True
                if needs_base and base:
                    target = self.longest(module, base)
                    if target is not None:
                        found.add(target.path)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.update(self.string_reference(module, node.value))
        return found

    def mentioned_folders(self, module: Module, tree: ast.AST) -> set:
        """Every module in a project folder that a string (docstrings too) names a file of.

        A binary documented as `--config=train/configs/tiny.py` then has all of train/configs/
        in its runfiles, so `bazel run //train:main -- --config=train/configs/X.py` finds X.
        """
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for token in re.findall(r"[\w./-]+", node.value):
                    token = token.strip("./")
                    folder = os.path.dirname(token) if token.endswith(".py") else token
                    if "/" in folder and folder != module.folder:
                        for m in self.by_folder.get(folder, []):
                            if not m.is_test:
                                found.add(m.path)
        return found

    def string_reference(self, module: Module, text: str) -> set:
        if not text or len(text) > 200 or any(c.isspace() for c in text):
            return set()
        if re.fullmatch(r"[A-Za-z_][\w.]*", text) and "." in text:
            target = self.by_name.get(("", text))
            return {target.path} if target is not None else set()
        normalized = text.strip("/")
        if normalized in self.modules:
            return {normalized}
        if "/" in normalized and normalized in self.by_folder:  # e.g. "train/configs"
            return {m.path for m in self.by_folder[normalized] if not m.is_test}
        return set()


def analyse(repo: str, modules: dict[str, Module]) -> None:
    resolver = Resolver(modules)
    for module in modules.values():
        with open(os.path.join(repo, module.path), encoding="utf-8") as f:
            source = f.read()
        try:
            tree = ast.parse(source, filename=module.path)
        except SyntaxError as error:
            raise SystemExit(f"gen_build: cannot parse {module.path}: {error}") from error
        module.edges = resolver.imports(module, tree)
        if not module.is_test:
            module.is_binary = any(_is_main_guard(node) for node in tree.body)
            if module.is_binary:
                module.run_edges = resolver.mentioned_folders(module, tree)
        else:
            marker = SIZE_MARKER.search(source)
            if marker:
                module.size = marker.group(1)
            tags = TAGS_MARKER.search(source)
            if tags:
                module.tags = tuple(sorted(set(tags.group(1).split(","))))
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parent = module.name.rpartition(".")[0]
        if parent:
            target = resolver.lookup(module, parent)
            if target is not None:
                module.edges.add(target.path)
        if module.is_test:
            folder = module.folder
            while folder == TESTS_ROOT or folder.startswith(TESTS_ROOT + "/"):
                conftest = f"{folder}/conftest.py"
                if conftest in modules:
                    module.edges.add(conftest)
                folder = os.path.dirname(folder)
        module.edges.discard(module.path)
        module.edges = {e for e in module.edges if not modules[e].is_test}
    for path in resolver.bare_imported:
        modules[path].bare_imported = True


def strongly_connected(modules: dict[str, Module]) -> list[list[str]]:
    """Tarjan's algorithm over library modules (iterative); components in discovery order."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = [0]
    nodes = sorted(p for p, m in modules.items() if not m.is_test)
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(modules[start].edges)))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(modules[child].edges))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result
