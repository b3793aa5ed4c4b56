"""Imports point only down (docs/architecture.md): pipeline/ <- receiver/, sandbox/ <- jobs/ <- bench/, tests/.

Read from the source with `ast`, so an import inside a function counts as much as one at the top, and so does
`importlib.import_module("...")` with a literal name. A module path handed to uvicorn as a string is not an
import; `jobs/commands/serve.py` starts the server and is the one module of jobs/ that may import receiver/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("pipeline", "receiver", "sandbox", "jobs", "bench", "tests")  # our top-level packages
CHECKED = ("pipeline", "receiver", "sandbox", "jobs")
MAY_IMPORT = {  # besides itself, the standard library and third-party packages
    "pipeline": (),
    "receiver": ("pipeline",),
    "sandbox": ("pipeline",),
    "jobs": ("pipeline", "sandbox"),
}
EXCEPTIONS = {("jobs/commands/serve.py", "receiver")}  # starts the server


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(path: str, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `path`."""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, name] if name else base)


def _literal_import(call: ast.Call) -> str | None:
    """The name in importlib.import_module("x") / import_module("x") / __import__("x"), when it is a literal."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(source: str, path: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import anywhere in the module, nested ones included."""
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, _resolve(path, node.level, node.module) if node.level else node.module or ""
        elif isinstance(node, ast.Call):
            name = _literal_import(node)
            if name is not None:
                level = len(name) - len(name.lstrip("."))
                yield node.lineno, _resolve(path, level, name[level:]) if level else name


def upward_arrows(source: str, path: str) -> list[str]:
    """One line per import of `path` (relative to the repository) that points to a layer it may not import."""
    layer = path.split("/")[0]
    allowed = {layer, *MAY_IMPORT[layer]}
    arrows = []
    for line, name in imports_of(source, path):
        target = name.split(".")[0]
        if target in PROJECT and target not in allowed and (path, target) not in EXCEPTIONS:
            may = ", ".join(MAY_IMPORT[layer]) or "nothing of ours"
            arrows.append(f"{path}:{line}: {layer} imports {name} ({layer} may import {may})")
    return arrows


def checked_files() -> list[str]:
    return sorted(path.relative_to(ROOT).as_posix() for layer in CHECKED for path in (ROOT / layer).rglob("*.py"))


def test_imports_point_only_down():
    files = checked_files()
    assert len(files) > 50 and "receiver/portal.py" in files and "jobs/commands/serve.py" in files
    arrows = [arrow for path in files for arrow in upward_arrows((ROOT / path).read_text(encoding="utf-8"), path)]
    assert not arrows, "upward imports:\n" + "\n".join(arrows)


def test_an_import_inside_a_function_is_caught():
    source = "def status(engine):\n    from jobs.poll import run_poll\n\n    return run_poll(engine)\n"
    assert upward_arrows(source, "receiver/portal.py") == [
        "receiver/portal.py:2: receiver imports jobs.poll (receiver may import pipeline)"
    ]


@pytest.mark.parametrize(
    "path,source,target",
    [
        ("pipeline/x.py", "import importlib\n\ndef f():\n    importlib.import_module('jobs.cli')\n", "jobs.cli"),
        ("pipeline/x.py", "from importlib import import_module\nimport_module('receiver.app')\n", "receiver.app"),
        ("sandbox/x.py", "import jobs.demo\n", "jobs.demo"),
        ("sandbox/x.py", "from receiver import app\n", "receiver"),
        ("receiver/x.py", "from sandbox.testing import running_sandbox\n", "sandbox.testing"),
        ("jobs/fold.py", "def f():\n    from receiver.app import create_app\n", "receiver.app"),
        ("jobs/x.py", "from tests.builders import append\n", "tests.builders"),
        ("pipeline/store/x.py", "from bench import fold\n", "bench"),
    ],
)
def test_every_kind_of_upward_import_is_caught(path, source, target):
    [arrow] = upward_arrows(source, path)
    assert f" imports {target} " in arrow


def test_what_is_not_an_upward_import():
    serve = (
        "import uvicorn\n\ndef serve():\n    from receiver.app import create_app\n    uvicorn.run('receiver.app:app')\n"
    )
    assert upward_arrows(serve, "jobs/commands/serve.py") == []  # the one module that starts the server
    assert upward_arrows("import uvicorn\nuvicorn.run('receiver.app:app_factory')\n", "jobs/commands/x.py") == []
    assert upward_arrows("from . import events\nfrom .. import fold\n", "pipeline/store/x.py") == []
    assert upward_arrows("import pipeline.config\nimport sqlalchemy\n", "sandbox/x.py") == []
    assert upward_arrows("from sandbox.testing import free_port\n", "jobs/demo.py") == []
