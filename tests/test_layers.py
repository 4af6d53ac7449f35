"""The package's layers: a module imports only from its own layer or the layers below it.

From the ground up: geometry (boxes, coders, priors, post-processing, the distributed
helpers, the trace recorder) < assigners < losses < models < engine. ``data`` knows no
model and no engine; ``viz`` and the command-line modules sit on top.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import detutils

PACKAGE = Path(detutils.__file__).parent

# A module's layer is found from its dotted name (longest prefix wins); each layer may
# import the layers listed for it, and itself.
LAYER_OF = {
    "detutils": "geometry",  # the package __init__: names and constants only
    "detutils.boxes": "geometry",
    "detutils.coders": "geometry",
    "detutils.priors": "geometry",
    "detutils.postprocess": "geometry",
    "detutils.distributed": "geometry",
    "detutils.trace": "geometry",
    "detutils.assigners": "assigners",
    "detutils.losses": "losses",
    "detutils.models": "models",
    "detutils.data": "data",
    "detutils.engine": "engine",
    "detutils.viz": "top",
    "detutils.positives": "top",  # a teaching helper: reads every detector's assignment
    "detutils.course": "top",
    "detutils.train": "top",
    "detutils.evaluate": "top",
    "detutils.predict": "top",
}
ALLOWED = {
    "geometry": {"geometry"},
    "assigners": {"geometry", "assigners"},
    "losses": {"geometry", "assigners", "losses"},
    "models": {"geometry", "assigners", "losses", "models"},
    "data": {"geometry", "data"},
    "engine": {"geometry", "assigners", "losses", "models", "data", "engine", "top"},
    "top": set(LAYER_OF.values()),
}


def layer(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in LAYER_OF:
            return LAYER_OF[name]
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[str]:
    """Every ``detutils`` module that ``path`` imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [name for name in names if name.split(".")[0] == "detutils"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: module_name(path))
def test_a_module_imports_only_its_layer_and_those_below(path):
    here = layer(module_name(path))
    for imported in imported_modules(path):
        assert layer(imported) in ALLOWED[here], (
            f"{module_name(path)} ({here}) imports {imported} ({layer(imported)})"
        )


def test_the_engine_is_the_only_layer_that_may_import_the_engine():
    # An engine import from a model once pulled in the trainer, DDP, pycocotools and pandas.
    offenders = [
        f"{module_name(path)} imports {imported}"
        for path in SOURCES
        if layer(module_name(path)) in {"geometry", "assigners", "losses", "models", "data"}
        for imported in imported_modules(path)
        if layer(imported) == "engine"
    ]
    assert offenders == []


def test_importing_the_models_loads_no_engine_pandas_or_pycocotools():
    # In a fresh interpreter: what this test process imported already does not count.
    code = (
        "import sys, detutils.models\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'pycocotools')"
        " or m.startswith('detutils.engine'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"detutils.models loaded: {result.stdout.strip()}"


def test_every_module_has_a_layer():
    for path in SOURCES:
        assert layer(module_name(path)) in ALLOWED  # KeyError: a module outside the table
