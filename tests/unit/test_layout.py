"""The shape issue 14 promised: imports have no side effect; the worker keeps no module-level mutable state."""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("geo", "anonymizers", "schemas", "streams")


def test_importing_every_module_creates_no_file(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    code = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(ROOT)!r})
names = []
for package in {PACKAGES!r}:
    module = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps(names))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSPATHS_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    names = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"streams.worker", "streams.stages.ingest", "streams.tools.broker", "geo.crossings.detector"} <= set(names)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["cwd", "home"]


def _mutable_module_level(path: pathlib.Path) -> list[str]:
    """Module-level names bound to a dict, list or set (literal, comprehension or constructor call)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        targets, value = ([node.target], node.value) if isinstance(node, ast.AnnAssign) else \
            (node.targets, node.value) if isinstance(node, ast.Assign) else ([], None)
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", None) in {"dict", "list", "set", "defaultdict"})
        found += [f"{path.name}:{t.id}" for t in targets if mutable and isinstance(t, ast.Name)]
    return found


def test_the_worker_keeps_its_state_in_objects_not_module_level_containers():
    files = [*(ROOT / "streams" / "stages").glob("*.py"), *(ROOT / "streams" / "plumbing").glob("*.py"),
             ROOT / "streams" / "app.py", ROOT / "streams" / "web.py", ROOT / "streams" / "worker.py"]
    assert len(files) > 10
    assert [name for path in files for name in _mutable_module_level(path)] == []
