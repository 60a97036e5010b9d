"""The packages of stream/ import each other in one direction only.

    errors, system  <-  core  <-  wire  <-  io  <-  app  <-  cli, bench
                        core  <-  settings  <-  io
                        core  <-  offline   <-  cli, bench

(``a <- b``: b may import a, never the other way.)

Read from the source with ``ast`` (imports inside functions count too), so a
lazy import cannot hide an upward one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stream

ROOT = Path(stream.__file__).parent

# package -> what its modules must not import (stream packages and libraries)
FORBIDDEN = {
    "core": {"stream.app", "stream.io", "stream.wire", "stream.offline", "stream.bench",
             "stream.cli", "stream.settings", "kafka", "aiokafka", "faust", "mode", "rocksdict"},
    "offline": {"stream.app", "stream.io", "stream.wire", "stream.bench", "stream.cli", "kafka", "aiokafka",
                "faust", "mode", "rocksdict"},
    "wire": {"stream.app", "stream.io", "stream.offline", "stream.bench", "stream.cli",
             "stream.settings", "faust", "mode", "rocksdict"},
    "io": {"stream.app", "stream.bench", "stream.cli", "faust", "mode"},
    "system": {"stream.core", "stream.app", "stream.io", "stream.wire", "stream.offline",
               "stream.settings"},
}  # fmt: skip


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module named by an import in ``path`` (a module of ``package``),
    relative imports resolved, at any depth of the tree, ``importlib.import_module``
    and ``__import__`` of a literal name included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            # `from stream import app` names the package stream.app
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def _violations(package: str, names: set[str]) -> set[str]:
    bad = FORBIDDEN[package]
    return {n for n in names if any(n == b or n.startswith(b + ".") for b in bad)}


def test_every_layered_package_exists_and_has_modules():
    # guards the scan below against silently scanning nothing
    for package in FORBIDDEN:
        assert len(list((ROOT / package).glob("*.py"))) >= 2, package


def test_no_package_imports_upward():
    offenders = {}
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _violations(package, imported_modules(path, f"stream.{package}"))
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_the_scan_sees_lazy_relative_and_package_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy\n"
        "from stream.core.items import unit_rows\n"
        "def f():\n"
        "    from stream.app.topics import Topics\n"
        "    from stream import io\n"
        "    from ..wire import clicks\n"
        "    import kafka.partitioner\n"
        "    __import__('rocksdict')\n"
        "    importlib.import_module('faust.app')\n"
    )
    names = imported_modules(sample, "stream.core")
    assert _violations("core", names) == {
        "stream.app.topics", "stream.app.topics.Topics", "stream.io", "stream.wire",
        "stream.wire.clicks", "kafka.partitioner", "rocksdict", "faust.app",
    }  # fmt: skip
    assert _violations("io", names) == {
        "stream.app.topics",
        "stream.app.topics.Topics",
        "faust.app",
    }
