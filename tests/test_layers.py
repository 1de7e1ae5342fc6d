"""The package's layering, read from its source (docs/architecture.md): every import, lazy ones included, goes to a
lower floor or stays inside its own package, and nothing forms a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qasr_live"

# Lowest first. A module may import from a lower floor, or from its own package (audio.capture -> audio.source);
# never from a sibling package on its own floor or from above.
FLOORS: list[set[str]] = [
    {"errors"},
    {"schema"},
    {"config", "events", "runtime", "desktop", "service", "itn", "notifications", "heap"},
    {"config_file"},
    {"audio"},
    {"engine"},
    {"streaming", "offline", "export", "model_store"},
    {"dictation", "bus", "api"},
    {"outputs", "control"},
    {"daemon", "doctor"},
    {"cli"},
    {"__main__"},
]
DEV_ONLY = {"devkit", "tests", "bench", "training"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("qasr_live", *parts))] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def _room(module: str) -> str:
    """``qasr_live.audio.vad`` -> ``audio``; ``qasr_live`` (the package face) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _floor(room: str) -> int:
    for i, rooms in enumerate(FLOORS):
        if room in rooms:
            return i
    raise AssertionError(f"qasr_live/{room} has no floor: add it to FLOORS here and to docs/architecture.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules} for name, path in modules.items()}


def test_every_import_goes_down_or_stays_in_its_package():
    wrong = []
    for name, targets in _graph().items():
        room = _room(name)
        if not room:
            continue
        for target in targets:
            other = _room(target)
            if not other or other == room:  # the package face (__version__) or the own package
                continue
            if _floor(other) >= _floor(room):
                wrong.append(f"{name} -> {target} (floor {_floor(room)} -> {_floor(other)})")
    assert not wrong, "imports that go sideways or up:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    circles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if target == node or target == node.rpartition(".")[0]:
                continue  # a module's own package face
            if state.get(target) == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_runtime_package_never_imports_dev_code():
    wrong = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        for target in _imports(name, path)
        if target.split(".")[0] in DEV_ONLY
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_a_violation(tmp_path):
    """The walker must find lazy and relative imports, or the tests above would pass on anything."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..daemon import serve\n    import qasr_live.cli\n")
    assert {"qasr_live.daemon", "qasr_live.daemon.serve", "qasr_live.cli"} <= _imports("qasr_live.audio.probe", probe)
