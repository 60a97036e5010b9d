"""stream/core is pure numerics: importing all of it loads no Kafka, faust or
RocksDB library, not even through another library (the source's own imports
are read by tests/unit/test_layering.py)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import stream.core

FORBIDDEN = {"faust", "kafka", "aiokafka", "rocksdict", "mode"}
CORE_DIR = Path(stream.core.__file__).parent
CORE_MODULES = sorted(f"stream.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]))


def test_the_core_has_the_expected_modules():
    # Guards the import below against silently importing nothing.
    for name in ("items", "vectors", "centres", "assign", "cf", "merge", "recompute", "pipeline"):
        assert f"stream.core.{name}" in CORE_MODULES


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
