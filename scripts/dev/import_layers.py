"""The structure drawn from the imports of ``supermask_cli``: each module's layer, every import that
runs back up a layer, and every import cycle among modules. Exit 1 when there is either.

    python scripts/dev/import_layers.py          # summary and problems
    python scripts/dev/import_layers.py --edges  # every module -> module edge

Layers, top to bottom: the CLI (``cli*``, ``__main__``), the launchers (``launch/``), the steps
(``steps/``), the core (everything else). An import may go down or sideways, never up; lazy
imports inside functions count too.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "supermask_cli"
LAYERS = ("core", "steps", "launch", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and (parts[1].startswith("cli") or parts[1] == "__main__"):
        return 3
    if len(parts) > 1 and parts[1] == "launch":
        return 2
    if len(parts) > 1 and parts[1] == "steps":
        return 1
    return 0


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports (``from x import y`` counts ``x.y`` when it is a module)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edges", action="store_true")
    args = parser.parse_args()
    paths = {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
    known = set(paths)
    # a package's __init__ re-exporting its submodules is the package's face, not an edge up
    graph = {m: {d for d in imports(p, m, known) if not (p.name == "__init__.py" and d.startswith(m + "."))}
             for m, p in paths.items()}
    up = [(m, d) for m, deps in graph.items() for d in sorted(deps) if layer(d) > layer(m)]
    loops = cycles(graph)
    if args.edges:
        for m in sorted(graph):
            for d in sorted(graph[m]):
                print(f"{LAYERS[layer(m)]:6} {m} -> {d}")
    counts = {name: sum(1 for m in graph if layer(m) == i) for i, name in enumerate(LAYERS)}
    print(f"modules per layer: {counts}; edges: {sum(len(d) for d in graph.values())}")
    print(f"imports running back up: {len(up)}")
    for m, d in up:
        print(f"  {m} ({LAYERS[layer(m)]}) -> {d} ({LAYERS[layer(d)]})")
    print(f"cycles: {len(loops)}")
    for comp in loops:
        print("  " + " <-> ".join(comp))
    sys.exit(1 if up or loops else 0)


if __name__ == "__main__":
    main()
