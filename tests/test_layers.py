"""The package layers, enforced from the code's own imports (imports inside functions count too).

    tympan (core)   what everything shares; imports nothing above it
    tympan.runtime  serving a bundle: core only (no torch for an ONNX bundle)
    tympan.evaluate scoring a runner over a manifest: core + runtime
    training.model  the speech LLM as modules (and training.recipe, its schema): core + runtime
    training        the procedures: everything below, never export or the daemon
    export          checkpoint -> bundle: core, runtime, training
    daemon          serving: core and runtime only
    tympan.cli      composes the commands: may import anything

No import cycle between modules, lazy imports included. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tympan": "tympan", "training": "tympan.training", "export": "tympan.export", "daemon": "tympan.daemon"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    top, *rest = rel.parts
    parts = [FOLDERS[top], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """Every tympan module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("tympan") and target != name:
                out.add(target)
    return out


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> str:
    if name in ("tympan.cli", "tympan.__main__"):
        return "cli"
    if name == "tympan.evaluate":
        return "evaluate"
    for prefix, which in (
        ("tympan.runtime", "runtime"),
        ("tympan.training.model", "model"),
        ("tympan.training.recipe", "model"),
        ("tympan.training", "training"),
        ("tympan.export", "export"),
        ("tympan.daemon", "daemon"),
    ):
        if name == prefix or name.startswith(prefix + "."):
            return which
    return "core"


ALLOWED = {
    "core": {"core"},
    "runtime": {"core", "runtime"},
    "evaluate": {"core", "runtime"},
    "model": {"core", "runtime", "model"},
    "training": {"core", "runtime", "evaluate", "model", "training"},
    "export": {"core", "runtime", "model", "training", "export"},
    "daemon": {"core", "runtime", "daemon"},
    "cli": {"core", "runtime", "evaluate", "model", "training", "export", "daemon", "cli"},
}


def test_the_graph_is_read_from_the_code() -> None:
    # The checks below mean something only if the parser sees imports, lazy ones included.
    assert "tympan.runtime.bundle" in GRAPH["tympan.runtime.speech_model"]
    assert "tympan.training.model.runner" in GRAPH["tympan.cli"]  # imported inside a function
    assert layer("tympan.training.model.speech_llm") == "model" and layer("tympan.config") == "core"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_upward_import(name: str) -> None:
    bad = sorted(t for t in GRAPH[name] if layer(t) not in ALLOWED[layer(name)])
    assert not bad, f"{name} ({layer(name)}) imports {', '.join(f'{t} ({layer(t)})' for t in bad)}"


def test_runtime_imports_no_torch_at_module_level() -> None:
    # A daemon serving an ONNX bundle must not pay torch's import; only the torch LLM imports it, lazily.
    for name, path in MODULES.items():
        if layer(name) != "runtime":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("torch", "transformers", "peft") for n in names), (
                f"{name} imports {names} at module level")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    # A package's __init__ importing its own modules is not a cycle of meaning; none of ours does.
    assert cycles(GRAPH) == []
