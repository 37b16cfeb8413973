"""The package's shape: imports flow one way, and the function side imports nothing client-side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dask_lambda.function

FUNCTION = Path(dask_lambda.function.__file__).parent


def test_function_subpackage_imports_nothing_client_side():
    """Every module of dask_lambda.function, loaded on its own, loads no other dask_lambda module
    (but the package's lazy __init__) and none of the client's libraries."""
    modules = sorted(f"dask_lambda.function.{p.stem}" for p in FUNCTION.glob("*.py")
                     if p.stem != "__init__")  # fmt: skip
    assert _loaded_by(modules, "m.split('.')[0] in ('distributed', 'click', 'matplotlib', 'moto',"
                      " 'flask', 'tqdm') or (m.startswith('dask_lambda.')"
                      " and not m.startswith('dask_lambda.function'))") == []  # fmt: skip


def _loaded_by(modules: list[str], condition: str) -> list[str]:
    """The modules a fresh interpreter has loaded after importing ``modules`` that meet
    ``condition`` (an expression of ``m``, the module's name)."""
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if {condition}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)


def test_function_subpackage_names_nothing_outside_itself():
    """Statically too: no import in dask_lambda.function reaches the rest of the package."""
    for path in FUNCTION.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = {alias.name for alias in node.names}
                assert not target.startswith("dask_lambda"), (path.name, target)
                assert node.level <= 1 or (target == ".." and names == {"__version__"}), (
                    path.name, target, names)  # fmt: skip
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("dask_lambda") for a in node.names), path.name


def test_the_package_import_graph_has_no_cycle():
    """Every import inside dask_lambda (lazy ones too, not TYPE_CHECKING ones) flows one way."""
    package = FUNCTION.parent
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        edges = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import x" may name a module
                candidate = f"{target}.{alias.name}"
                edges.add(candidate if (package.parent / candidate.replace(".", "/")).with_suffix(
                    ".py").exists() else target)  # fmt: skip
    edges_of = {k: {t for t in v if t in graph and t != k and not k.startswith(t + ".")}
                for k, v in graph.items()}  # fmt: skip
    visiting, done = [], set()

    def visit(node):
        assert node not in visiting, " -> ".join([*visiting[visiting.index(node) :], node])
        if node in done:
            return
        visiting.append(node)
        for target in sorted(edges_of[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)
    # The subpackages are layers: scheduling runs on remote; neither reaches deploy or back up.
    forbidden = {
        "scheduling": ("deploy", "cluster", "executor"),
        "remote": ("scheduling", "deploy", "cluster", "executor"),
        "deploy": ("scheduling", "remote", "cluster", "executor"),
    }
    for module, targets in edges_of.items():
        layer = module.split(".")[1] if module.count(".") >= 2 else None
        for target in targets:
            inner = target.removeprefix("dask_lambda.")
            assert not inner.startswith(forbidden.get(layer, ())), (module, target)
    assert edges_of["dask_lambda.attempts"] <= {"dask_lambda.exceptions",
                                                "dask_lambda.function.protocol"}  # fmt: skip
    assert "dask_lambda.scheduling.compute" not in str(edges_of["dask_lambda.backend"])
    assert "dask_lambda.cluster" not in edges_of["dask_lambda.scheduling.compute"]


def test_the_policy_modules_do_no_io():
    """The planner, the attempt policy, graph preparation, the in-flight table and the settings
    are pure: importing them loads neither boto3 nor the invoker, the transport or the cluster,
    so their unit tests need no Lambda."""
    pure = ["dask_lambda.attempts", "dask_lambda.scheduling.planner", "dask_lambda.limits",
            "dask_lambda.scheduling.graph", "dask_lambda.scheduling.inflight",
            "dask_lambda.settings"]  # fmt: skip
    assert _loaded_by(pure, "m.split('.')[0] in ('boto3', 'botocore') or m.startswith(("
                      "'dask_lambda.remote', 'dask_lambda.deploy', 'dask_lambda.emulator'))"
                      " or m in ('dask_lambda.cluster', 'dask_lambda.scheduling.compute',"
                      " 'dask_lambda.executor')") == []  # fmt: skip


def test_every_public_name_resolves():
    """``from dask_lambda import *`` and each name of ``__all__`` (the lazy ones too)."""
    import dask_lambda

    for name in dask_lambda.__all__:
        assert getattr(dask_lambda, name) is not None, name
    namespace: dict = {}
    exec("from dask_lambda import *", namespace)
    assert set(dask_lambda.__all__) <= set(namespace)
