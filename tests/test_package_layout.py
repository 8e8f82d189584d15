"""The package shows its flow: stage folders, each importing only from the folders below it, no import cycles,
no module over 600 lines, and the applications (detect, heatmap) built on the model layer alone."""
from __future__ import annotations

import ast
from pathlib import Path

import fc2conv_onnx

PACKAGE = Path(fc2conv_onnx.__file__).parent
#: Bottom to top. The root holds the base (errors, version) and the top (options, report, api, cli).
LAYERS = ["base", "model", "read", "plan", "rewrite", "prove", "apps", "top"]
BASE = {"errors", "version"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def _layer(module: str) -> str:
    first = module.split(".")[0]
    if first == "commands":  # the command line's modules, one per command: the top, with cli.py
        return "top"
    if "." in module or first in LAYERS[1:-1]:
        return first
    return "base" if first in BASE else "top"


def _imports(path: Path):
    """(imported module, line) for every relative import of the module at `path` (function-level ones too)."""
    package = _module_name(path).split(".")[:-1] if path.name != "__init__.py" else _module_name(path).split(".")
    if path.parent == PACKAGE:
        package = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                yield ".".join(base + node.module.split(".")), node.lineno
            else:
                for alias in node.names:
                    yield ".".join(base + [alias.name]), node.lineno


def _modules():
    return {(_module_name(p) if p.parent == PACKAGE else _module_name(p)): p for p in PACKAGE.rglob("*.py")}


def test_no_folder_imports_from_a_folder_above_it():
    upward = []
    for name, path in _modules().items():
        for target, line in _imports(path):
            if target == "__version__":
                continue
            if LAYERS.index(_layer(target)) > LAYERS.index(_layer(name)):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} ({_layer(name)}) imports {target} "
                              f"({_layer(target)})")
    assert not upward, "\n".join(upward)


def test_no_module_level_import_cycles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        graph[name] = {t for t, line in _imports(path) if any(n.lineno == line for n in top) and t in modules}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for target in graph.get(node, ()):
            visit(target)
        stack.pop()
        seen.add(node)

    for name in graph:
        visit(name)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_the_apps_stand_on_the_model_layer_alone():
    """detect and heatmap run a converted model: they need the model layer (its files, onnxruntime, the geometry,
    detections and scores), never the converter's stages, and nothing below the apps imports them."""
    outside = [f"{path.relative_to(PACKAGE)}:{line} imports {target}" for name, path in _modules().items()
               if _layer(name) == "apps" for target, line in _imports(path)
               if _layer(target) not in ("base", "model", "apps")]
    assert not outside, "\n".join(outside)
