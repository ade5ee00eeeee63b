"""The package's shape: no import circle (lazy imports included), and the training loop and the
server's app factory short enough to read on one screen."""

import ast
import inspect
from pathlib import Path

import gentune

SRC = Path(gentune.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module -> the gentune modules it imports, at the top or inside functions."""
    graph = {}
    for file in SRC.glob("*.py"):
        name = file.stem
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import x
                    found |= {a.name for a in node.names if (SRC / f"{a.name}.py").exists()}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gentune."):
                found.add(node.module.split(".")[1])
        graph[name] = found - {name, "__init__"}
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _imports()
    assert graph["train"] and graph["serve"]  # the parser sees imports at all

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


def test_the_circle_check_finds_a_circle(monkeypatch, tmp_path):
    """The check above can fail: a planted a -> b -> a is found."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    graph = _imports()
    assert graph == {"a": {"b"}, "b": {"a"}}


def _lines(func) -> int:
    return len(inspect.getsource(func).splitlines())


def test_the_training_loop_and_the_app_factory_fit_on_a_screen():
    from gentune.serve import create_app
    from gentune.train import loop

    assert _lines(loop) < 100, _lines(loop)
    assert _lines(create_app) < 100, _lines(create_app)
