"""The package's shape: one sub-package per stage, imports only from a stage to a lower one (the
table below), no import circle (lazy imports included), and functions short enough to read on
one screen."""

import ast
from pathlib import Path

import gentune

SRC = Path(gentune.__file__).parent

# the stages, lowest first; the flat core is below every stage, the commands above them all
CORE = {"__init__", "config", "errors", "lock", "metrics", "tokenizer", "checkpoint", "rundir"}
TOP = {"cli", "demo", "__main__"}
# which stages each stage may import (itself included); anything else is an upward arrow
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "models": {"core", "data", "models"},
    "inference": {"core", "data", "models", "inference"},
    "training": {"core", "data", "models", "inference", "training"},
    "serving": {"core", "data", "models", "inference", "serving"},
    "distill": {"core", "data", "models", "inference", "training", "distill"},
    "trust": {"core", "data", "models", "inference", "trust"},
    "runs": {"core", "data", "models", "inference", "training", "runs"},
    "top": {
        "core",
        "data",
        "models",
        "inference",
        "training",
        "serving",
        "distill",
        "trust",
        "runs",
        "top",
    },
}
LONGEST = 80  # lines of any function, decorators and docstring included
LONGER = {"build_parser": 120}  # the CLI's table of flags


def _module(file: Path, root: Path) -> str:
    """'data.encode' for root/data/encode.py, 'cli' for root/cli.py."""
    parts = file.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(root: Path | None = None) -> dict[str, set[str]]:
    """module -> the gentune modules it imports, at the top or inside functions."""
    root = root or SRC
    modules = {_module(f, root) for f in root.rglob("*.py")}
    graph = {}
    for file in root.rglob("*.py"):
        name = _module(file, root)
        package = name if file.stem == "__init__" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, up level - 1
                    base = package.split(".") if package else []
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                elif (node.module or "").startswith("gentune"):
                    target = node.module.partition("gentune")[2].lstrip(".")
                else:
                    continue
                for alias in node.names:  # `from gentune.data import encode` names a module
                    sub = f"{target}.{alias.name}".strip(".")
                    found.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                found |= {
                    a.name[len("gentune.") :] for a in node.names if a.name.startswith("gentune.")
                }
        graph[name] = {m for m in found if m in modules} - {name, "__init__"}
    return graph


def _stage(module: str) -> str:
    first = module.split(".")[0]
    if module in CORE:
        return "core"
    if module in TOP:
        return "top"
    return first


def test_every_module_belongs_to_a_stage():
    stages = {_stage(m) for m in _imports()}
    assert stages <= set(ALLOWED), stages - set(ALLOWED)
    assert set(ALLOWED) - {"core", "top"} <= stages  # every stage has modules


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _imports()
    assert graph["training.train"] and graph["serving.app"]  # the parser sees imports at all

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert not circles, f"import circles through: {circles}"


def test_no_stage_imports_a_higher_one():
    upward = sorted(
        f"{m} -> {dep}"
        for m, deps in _imports().items()
        for dep in deps
        if _stage(dep) not in ALLOWED[_stage(m)]
    )
    assert not upward, f"imports from a stage to a higher one: {upward}"


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    """The checks above can fail: a planted data -> training -> data is found, both ways."""
    for pkg in ("data", "training"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "data" / "a.py").write_text("from gentune.training.b import x\n")
    (tmp_path / "training" / "b.py").write_text("def f():\n    from ..data.a import y\n")
    graph = _imports(tmp_path)
    assert graph["data.a"] == {"training.b"} and graph["training.b"] == {"data.a"}
    assert _stage("training.b") not in ALLOWED[_stage("data.a")]


def _functions(root: Path):
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                yield f"{_module(file, root)}.{node.name}", node.end_lineno - start + 1


def test_every_function_fits_on_a_screen():
    long = sorted(
        f"{name}: {n} lines"
        for name, n in _functions(SRC)
        if n > LONGER.get(name.rpartition(".")[2], LONGEST)
    )
    assert not long, long


def test_the_length_check_finds_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * LONGEST)
    assert dict(_functions(tmp_path)) == {"m.f": LONGEST + 1}
