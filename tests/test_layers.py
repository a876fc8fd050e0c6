"""The package's layers, checked from the import statements themselves (docs/design.md, "Layers").

    commands, cli -> apps -> {train, preprocess, metrics, losses} -> {model, data} ->
    {camera, codes, media, assets, face} -> ops -> {_ext, errors, fileio, threads}

A module may import from its own layer or any layer below, never above; no import cycles; every `dgnerf`
import sits at module level (function-level imports would hide the graph), except the extension's own loader.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "dgnerf"
LAYERS = [
    ("dgnerf._version", "dgnerf._ext", "dgnerf.errors", "dgnerf.fileio", "dgnerf.threads", "dgnerf._C"),
    ("dgnerf", "dgnerf.ops"),
    ("dgnerf.camera", "dgnerf.codes", "dgnerf.media", "dgnerf.assets", "dgnerf.face"),
    ("dgnerf.model", "dgnerf.data"),
    ("dgnerf.train", "dgnerf.preprocess", "dgnerf.metrics", "dgnerf.losses"),
    ("dgnerf.apps",),
    ("dgnerf.commands", "dgnerf.cli", "dgnerf.__main__"),
]
# _ext imports the compiled module, which may be missing (then every op falls back to its twin).
LAZY_ALLOWED = {("dgnerf._ext", "dgnerf._C")}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def layer_of(name: str) -> int:
    best, rank = -1, None
    for r, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (name == pre or name.startswith(pre + ".")) and len(pre) > best:
                best, rank = len(pre), r
    if rank is None:
        raise AssertionError(f"module {name} is in no layer: add it to LAYERS")
    return rank


def edges():
    mods = modules()

    def resolve(target: str) -> str:
        if target == "dgnerf._C":  # the compiled extension
            return target
        while target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    found = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())

        def visit(node, in_function):
            for ch in ast.iter_child_nodes(node):
                inner = in_function or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
                targets = []
                if isinstance(ch, ast.Import):
                    targets = [a.name for a in ch.names]
                elif isinstance(ch, ast.ImportFrom) and ch.module and ch.level == 0:
                    targets = [f"{ch.module}.{a.name}" for a in ch.names]
                for t in targets:
                    if t == "dgnerf" or t.startswith("dgnerf."):
                        found.append((name, resolve(t), in_function, ch.lineno))
                visit(ch, inner)

        visit(tree, False)
    return found


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_upward():
    bad = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)}) at line {line}"
           for a, b, _, line in edges() if layer_of(b) > layer_of(a)]
    assert not bad, "\n".join(bad)


def test_no_function_level_dgnerf_imports():
    bad = [f"{a} imports {b} inside a function at line {line}"
           for a, b, lazy, line in edges() if lazy and (a, b) not in LAZY_ALLOWED]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for a, b, lazy, _ in edges():
        if a != b and (a, b) not in LAZY_ALLOWED and not b.startswith(a + "."):
            # a package's __init__ re-exporting its own submodules is not a cycle of the layers
            graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycle = stack[stack.index(v):] + [v]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if not state.get(v):
                dfs(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            dfs(u)
