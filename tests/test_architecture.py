"""The package tree is the architecture: a module imports only from its own layer or lower ones."""

import ast
from pathlib import Path

import cotprune

PACKAGE = Path(cotprune.__file__).parent
# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = ["errors", "console", "version", "data", "core", "scoring", "pruning", "training", "rl",
          "report", "cli"]
GROUND = {"errors": 0, "console": 0, "version": 0, "faults": 0}


def _rank(module: str) -> int:
    """The layer of `cotprune.X...`; the package root (`cotprune`, `__main__`) sits above all."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return len(LAYERS)
    return GROUND.get(parts[1], LAYERS.index(parts[1]) if parts[1] in LAYERS else len(LAYERS))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST) -> list[str]:
    """Every cotprune module a file imports, at its top or inside functions."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cotprune"):
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("cotprune")]
    return names


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        for target in _imported(ast.parse(path.read_text())):
            if _rank(target) > _rank(me):
                found.append(f"{me} imports {target}")
    return found


def test_imports_only_go_downwards():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import():
    """The rank order itself: scoring sits below pruning, so scoring -> pruning is upward."""
    assert _rank("cotprune.scoring.score") < _rank("cotprune.pruning.prune")
    assert _rank("cotprune.core.deletion") < _rank("cotprune.scoring.score")
    assert _rank("cotprune.errors") < _rank("cotprune.data.files") < _rank("cotprune")
