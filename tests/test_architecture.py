"""The module map of docs/architecture.md holds: every import (inside functions too) goes down the layers, there
is no import cycle, and only the commands that train import the training package."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lldyn"

# Bottom to top (docs/architecture.md). A module may import its own layer and the ones below it.
LAYERS = (
    ("lldyn", "errors", "io", "config"),
    ("data", "losses", "models", "checkpoint", "scoring", "endpoint", "testing", "degeneration", "reference_answer",
     "rewards"),
    ("rundir", "runs", "distributed"),
    ("generation", "probes", "rephrase", "tracking", "serve", "policy_samples"),
    ("decompose", "squeeze", "preferences", "judge", "summary"),
    ("train", "predict"),
    ("integrations", "report"),
    ("experiments",),
    ("commands", "cli"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The lldyn modules ``name`` imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # import lldyn.x.y where y is a name: the module is lldyn.x
                target = target.rpartition(".")[0]
            if target.startswith("lldyn") and target != name:
                out.add(target)
    return out


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else name
    assert top in LAYER, f"{name} is in no layer of the module map (add it to LAYERS and docs/architecture.md)"
    return LAYER[top]


def test_the_walker_sees_imports_inside_functions():
    assert "lldyn.experiments.demo" in GRAPH["lldyn.commands.demo"]  # imported inside run()
    assert "lldyn.train.config" in GRAPH["lldyn.train.loop"]


def test_every_import_goes_down_the_layers():
    upward = [(a, b) for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_no_import_cycle():
    """Tarjan's strongly connected components over the import graph: every component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_cycle_check_can_fail():
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "lldyn.scoring": saved["lldyn.scoring"] | {"lldyn.train.loop"}}
    try:
        try:
            test_no_import_cycle()
        except AssertionError:
            return
        raise AssertionError("a cycle through lldyn.scoring and the loop was not found")
    finally:
        GRAPH = saved


def test_only_the_commands_that_train_import_the_training_package():
    training = {name for name in GRAPH if name.startswith("lldyn.commands.")
                and any(t == "lldyn.train" or t.startswith("lldyn.train.") for t in GRAPH[name])}
    assert training <= {"lldyn.commands.train", "lldyn.commands.demo", "lldyn.commands.reproduce"}, training


def test_tests_never_skip_on_lldyn_imports():
    """A broken lldyn import must fail the tests, not skip them."""
    pattern = re.compile(r"importorskip\(\s*[\"']lldyn")
    offenders = [p.name for p in (ROOT / "tests").glob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
