"""Imports point one way: core <- engines <- serving (and the Triton models) <- client <- frontends
<- benchmarks <- loadtest <- tests. Every .py file is parsed (function-level imports included) and each import of a project
package ranked above the file's own layer fails, as does a server-only library in the core."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("scheduler_backend", "engines", "serving", "client", "frontends", "benchmarks", "loadtest", "tests")
RANK = {name: rank for rank, name in enumerate(LAYERS)}
# Libraries the core must run without: the core is plain Python that any engine can drive.
CORE_FORBIDDEN = {"tritonclient", "triton_python_backend_utils", "vllm", "torch", "transformers"}


def layer_of(relative: Path) -> str | None:
    """The layer of a file by its top folder; the Triton models are part of serving."""
    top = relative.parts[0]
    if top == "model_repository":
        return "serving"
    return top if top in RANK else None


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in the module, however deeply nested."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(relative: Path, source: str) -> list[str]:
    """Each upward import of the file, as 'path:line: layer imports name'."""
    layer = layer_of(relative)
    if layer is None:
        return []
    bad = []
    for line, name in imported(ast.parse(source, str(relative))):
        upward = name in RANK and RANK[name] > RANK[layer]
        if upward or (layer == "scheduler_backend" and name in CORE_FORBIDDEN):
            bad.append(f"{relative}:{line}: {layer} imports {name}")
    return bad


def test_no_module_imports_a_layer_above_its_own() -> None:
    files = [p for p in ROOT.rglob("*.py") if not {".venv", "build", ".git"} & set(p.relative_to(ROOT).parts)]
    assert len(files) > 50
    bad = [v for p in files for v in violations(p.relative_to(ROOT), p.read_text())]
    assert bad == []


def test_an_upward_import_anywhere_in_a_file_is_caught() -> None:
    assert violations(Path("scheduler_backend/traces.py"), "def main():\n    from client.batch import load_records\n") == [
        "scheduler_backend/traces.py:2: scheduler_backend imports client"]
    assert violations(Path("scheduler_backend/x.py"), "import vllm.v1\n") == ["scheduler_backend/x.py:1: scheduler_backend imports vllm"]
    assert violations(Path("model_repository/dynasor/1/model.py"), "from client import policy_engine\n") == [
        "model_repository/dynasor/1/model.py:1: serving imports client"]
    assert violations(Path("engines/x.py"), "if True:\n    import serving.launcher\n") == ["engines/x.py:2: engines imports serving"]


def test_imports_down_or_within_a_layer_pass() -> None:
    assert violations(Path("engines/x.py"), "from scheduler_backend.engine import Engine\nimport vllm\nfrom . import y\n") == []
    assert violations(Path("client/cli.py"), "from serving.launcher import start_server\nfrom engines import grpc_stream\n") == []
    assert violations(Path("model_repository/policy/1/model.py"), "from sampling_request import parse_request\n") == []
