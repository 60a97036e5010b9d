"""stream/core is pure numerics: no Kafka, faust or RocksDB anywhere in it."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import stream.core

FORBIDDEN = {"faust", "kafka", "aiokafka", "rocksdict", "mode"}
CORE_DIR = Path(stream.core.__file__).parent
CORE_MODULES = sorted(f"stream.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # also imports inside functions and try blocks
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_the_core_has_the_expected_modules():
    # Guards the scans below against silently scanning nothing.
    for name in ("items", "vectors", "centres", "assign", "cf", "merge", "recompute", "pipeline"):
        assert f"stream.core.{name}" in CORE_MODULES


def test_no_core_source_imports_a_broker_or_store_library():
    offenders = {}
    for path in sorted(CORE_DIR.rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(CORE_DIR))] = sorted(bad)
    assert offenders == {}


def test_the_ast_scan_would_catch_an_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy\n"
        "def f():\n"
        "    from kafka import KafkaConsumer\n"
        "    import faust.app\n"
        "    __import__('rocksdict')\n"
    )
    assert _imported_top_levels(sample) & FORBIDDEN == {"kafka", "faust", "rocksdict"}


def test_importing_every_core_module_loads_none_of_them():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(proc.stdout))
    assert set(CORE_MODULES) <= loaded
    top_levels = {name.split(".")[0] for name in loaded}
    assert top_levels & FORBIDDEN == set()
