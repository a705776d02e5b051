"""The shape of the code: no import cycles, no arrow from a lower layer to a higher one, and
modules small enough to read."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "models")
# lowest first; a module may import its own package and anything in a lower layer
LAYERS = [
    {"pipeline", "pipeline.core", "pipeline.configs"},
    {"models"},
    {"pipeline.wsi", "pipeline.ihc"},
    {"pipeline.tiles", "pipeline.synth"},
    {"pipeline.training"},
    {"pipeline.prediction"},
    {"pipeline.evaluation", "pipeline.viewer"},
    {"pipeline.demo"},
    {"pipeline.cli_args"},
    {"pipeline.cli"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (lazy imports in functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the layer entry the module belongs to): the longest matching prefix."""
    best = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (i, entry)
    assert best is not None, f"{module} is in no layer of this test; add it"
    return best


def test_no_import_cycles():
    tuple(graphlib.TopologicalSorter(_graph()).static_order())  # CycleError names the cycle


def test_no_import_runs_up_the_layers():
    wrong = []
    for module, imported in _graph().items():
        level, own = _layer(module)
        for target in imported:
            t_level, t_own = _layer(target)
            if t_own != own and t_level >= level and t_own != "pipeline":
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_checker_sees_cycles_and_upward_arrows():
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    assert _layer("pipeline.wsi.slide") < _layer("pipeline.prediction.predict")
    assert "pipeline.core.errors" in _graph()["models.checkpoint"]


@pytest.mark.parametrize("path", sorted(_modules().values()), ids=lambda p: p.name)
def test_modules_stay_small(path):
    limit = 300 if path.name == "cli.py" else 400
    assert len(path.read_text().splitlines()) <= limit
