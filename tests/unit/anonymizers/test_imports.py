"""anonymizers/ is pure: no faust, kafka or aiokafka, statically or at import time."""

import ast
import json
import pathlib
import subprocess
import sys

FORBIDDEN = {"faust", "kafka", "aiokafka"}
PACKAGE = pathlib.Path(__file__).resolve().parents[3] / "anonymizers"


def _imported_roots(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
        }:
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value.split(".")[0]


def test_no_forbidden_import_statements():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        bad = FORBIDDEN & set(_imported_roots(path))
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_importing_every_module_loads_no_kafka():
    code = """
import importlib, json, pkgutil, sys
import anonymizers
names = [m.name for m in pkgutil.walk_packages(anonymizers.__path__, "anonymizers.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"faust", "kafka", "aiokafka"})
print(json.dumps({"modules": names, "loaded": loaded}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "anonymizers.kanon" in result["modules"]
    assert result["loaded"] == []
