"""The packages' structure: modules import one another without circles (module-level imports
and the lazy ones inside functions alike: a lazy import only hides a circle), ``core/``
imports no framework, and no class grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_gradcam", "detectron2_hooks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules that module ``name`` (file ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    # A package's __init__ is imported with any of its modules; leave those edges out, as
    # the package itself is not a dependency of its own parts.
    return {t for t in found if not name.startswith(t + ".")}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package):
    inside = lambda name: name == package or name.startswith(package + ".")  # noqa: E731
    graph = {k: {m for m in v if inside(m)} for k, v in import_graph().items() if inside(k)}
    assert len(graph) > 5
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_core_imports_no_framework():
    # core/ is framework-free: no Lightning, detectron2, timm or transformers at module level.
    # The detection kernel takes no detector library either (core/faithfulness.py uses
    # torchvision's gaussian_blur, an image op).
    banned = ("lightning", "pytorch_lightning", "detectron2", "timm", "transformers")
    for path in (ROOT / "lightning_gradcam" / "core").rglob("*.py"):
        ban = (*banned, "torchvision", "ultralytics") if path.parent.name == "detect" else banned
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in ban], (path.name, names)


def test_no_class_over_400_lines():
    long = [
        f"{path.relative_to(ROOT)}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 400
    ]
    assert not long, long


def _kernel_functions() -> set[str]:
    """Every function defined in the detection kernel (``core/detect``), with the names the
    sides' removed copies had."""
    names = {"row_gradients", "head_gradients", "pooler_pullback", "round_gradients"}
    for path in (ROOT / "lightning_gradcam" / "core" / "detect").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names | {"_" + n.lstrip("_") for n in names}


def test_detection_sides_define_none_of_the_kernels_functions():
    kernel = _kernel_functions()
    assert {"own_gradients", "level_gradients", "attach_maps", "InputRecorder"} <= kernel
    sides = [ROOT / "lightning_gradcam" / "detection", ROOT / "lightning_gradcam" / "yolo"]
    sides.append(ROOT / "detectron2_hooks")
    copies = [
        f"{path.relative_to(ROOT)}::{node.name}"
        for side in sides
        for path in side.rglob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in kernel
    ]
    assert not copies, copies


# The callback's plumbing may import the task protocol, the registry and the task-neutral
# option checks; never a concrete task or its samples.
_PROTOCOL = {
    "lightning_gradcam.tasks",
    "lightning_gradcam.tasks.base",
    "lightning_gradcam.tasks.options",
    "lightning_gradcam.tasks.population",
}
_PROTOCOL_NAMES = {
    "CAMTask",
    "PassReport",
    "ReportItem",
    "TaskOptions",
    "TaskSamples",
    "register_task",
    "registered_tasks",
    "task_named",
    "unregister_task",
    "probe_output",
    "TARGET_POLICIES",
    "check_target",
    "check_auto_target",
    "PopulationMeasure",
    "measure_for",
    "MEASURED_FIELDS",
    "MAX_CLASSES",
}


def _task_imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for each name ``path`` imports from ``lightning_gradcam.tasks``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative to lightning_gradcam/<package>/
                module = "lightning_gradcam." + module if node.level == 2 else module
            if module.startswith("lightning_gradcam.tasks"):
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name, "") for a in node.names if a.name.startswith("lightning_gradcam.tasks")
            ]
    return found


def test_the_lightning_plumbing_imports_no_task():
    plumbing = sorted((ROOT / "lightning_gradcam" / "lightning").glob("*.py"))
    assert len(plumbing) > 5
    seen = [(p.name, m, n) for p in plumbing for m, n in _task_imports(p)]
    assert any(n == "CAMTask" for _, _, n in seen)  # the finder reads the relative imports
    wrong = [(f, m, n) for f, m, n in seen if m not in _PROTOCOL or n not in _PROTOCOL_NAMES]
    assert not wrong, wrong
