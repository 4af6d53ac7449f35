"""Running the course: the set-up cell of every notebook, and the commands behind `make`.

A notebook is written as a jupytext ``py:percent`` file ``notebooks/NN_topic.py``,
paired with ``notebooks/NN_topic.ipynb`` that holds the stored outputs nbval checks.

    python -m detutils.course refresh [NOTEBOOK ...]   # .py -> .ipynb, executed in place
    python -m detutils.course exercises                # student versions in notebooks/exercises/
    python -m detutils.course run [--build build]      # data, then every notebook into build/

A cell tagged ``solution`` holds the answer to an exercise: it runs (and asserts) in
the course notebook, and the student version replaces its code with a stub.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

from detutils import current_schedule

__all__ = [
    "setup",
    "significant",
    "stored_schedule",
    "course_notebooks",
    "refresh_notebook",
    "make_exercise",
    "run_course",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+$")
SOLUTION_TAG = "solution"
EXERCISE_STUB = "# Your solution here.\n"
# Execution budget of one notebook (seconds); training notebooks on the full schedule
# may take much longer, so `run` uses no limit.
REFRESH_TIMEOUT = 1800


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True) -> dict:
    """The set-up cell of every notebook: seeds, threads, and what this machine is.

    Args:
        seed: seed for Python's, NumPy's and torch's random generators.
        threads: torch intra-op threads; default ``DETUTILS_NUM_THREADS`` or 1, which
            keeps small tensor work fast and results bit-identical run to run.
        verbose: print versions, device and schedule.

    Returns:
        dict with ``device`` (``torch.device``), ``schedule`` (``"ci"|"cpu"|"gpu"``)
        and ``versions`` (package name -> version string).
    """
    import matplotlib
    import pandas as pd
    import torch
    import torchvision

    if threads is None:
        threads = int(os.environ.get("DETUTILS_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the global generator, for code that uses it
    torch.manual_seed(seed)
    pd.set_option("display.precision", 4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "matplotlib": matplotlib.__version__,
    }
    schedule = current_schedule()
    if verbose:
        print(" ".join(f"{name} {version}" for name, version in versions.items()))
        print(f"device: {device.type}, schedule: {schedule}, torch threads: {threads}")
    return {"device": device, "schedule": schedule, "versions": versions}


def significant(table, digits: int = 4):
    """A copy of a DataFrame whose float columns keep ``digits`` significant digits.

    float32 arithmetic gives other last bits on other CPUs (other kernels sum in another
    order), so a table printed with every digit pandas shows would differ from machine
    to machine; three or four significant digits are what float32 carries honestly.
    Integer, text and other columns are left as they are.
    """

    def round_column(column):
        if column.dtype.kind != "f":
            return column
        return column.map(lambda value: float(f"{value:.{digits}g}"))

    return table.apply(round_column)


def course_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The course's notebook sources (``NN_topic.py``), in course order."""
    return sorted(p for p in notebook_dir.glob("*.py") if NOTEBOOK_PATTERN.match(p.stem))


def _execute(nb, cwd: Path, timeout: int | None, env: dict[str, str]) -> None:
    from nbconvert.preprocessors import ExecutePreprocessor

    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        executor = ExecutePreprocessor(timeout=timeout, kernel_name="python3", record_timing=False)
        executor.preprocess(nb, {"metadata": {"path": str(cwd)}})
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _stable_ids(nb) -> None:
    """Number the cells: jupytext draws random ids, which would churn every stored file."""
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:03d}"


def stored_schedule(source: Path) -> str:
    """The schedule whose outputs a notebook stores: ``cpu`` for training notebooks.

    A training notebook (``NN_<detector>_training``) shows a real CPU run to its
    readers, and marks the cells that depend on it ``# NBVAL_IGNORE_OUTPUT``, so that
    nbval can re-run it on the quick ``ci`` schedule; every other notebook stores ``ci``.
    """
    return "cpu" if Path(source).stem.endswith("_training") else "ci"


def refresh_notebook(
    source: Path, schedule: str | None = None, timeout: int | None = REFRESH_TIMEOUT
) -> Path:
    """Convert ``NN_topic.py`` to ``NN_topic.ipynb`` and execute it in place.

    The stored outputs are those nbval compares, so this runs with one torch thread,
    as ``make test`` does, and the schedule ``stored_schedule`` gives unless one is named.

    Returns:
        the path of the executed ``.ipynb``.
    """
    import jupytext

    source = Path(source)
    if source.suffix == ".ipynb":
        source = source.with_suffix(".py")
    if not source.is_file():
        raise FileNotFoundError(f"no notebook source {source}")
    nb = jupytext.read(source)
    schedule = schedule or stored_schedule(source)
    env = {"DETUTILS_SCHEDULE": schedule, "DETUTILS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    _execute(nb, source.parent, timeout, env)
    _stable_ids(nb)
    target = source.with_suffix(".ipynb")
    jupytext.write(nb, target, fmt="ipynb")
    return target


def make_exercise(nb):
    """The student version of a notebook: solution cells stubbed, outputs cleared."""
    import copy

    student = copy.deepcopy(nb)
    for cell in student.cells:
        if cell.cell_type != "code":
            continue
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.source = EXERCISE_STUB
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != SOLUTION_TAG]
        cell.outputs = []
        cell.execution_count = None
    _stable_ids(student)
    return student


def write_exercises(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Write ``notebooks/exercises/NN_topic.ipynb`` for every course notebook."""
    import jupytext

    out_dir = notebook_dir / "exercises"
    out_dir.mkdir(exist_ok=True)
    written = []
    for source in course_notebooks(notebook_dir):
        target = out_dir / f"{source.stem}.ipynb"
        jupytext.write(make_exercise(jupytext.read(source)), target, fmt="ipynb")
        written.append(target)
    return written


def run_course(build: Path, data_root: Path, schedule: str | None = None) -> Path:
    """Build the data, execute every notebook in order, write ``build/``.

    ``build/notebooks/`` gets the executed notebooks, ``build/html/`` their HTML
    rendering and ``build/results.csv`` one row per notebook (seconds, status).

    Returns:
        the path of ``results.csv``.
    """
    import jupytext
    import nbformat
    import pandas as pd
    from nbconvert import HTMLExporter

    from detutils.data.shapes import ensure_shapes

    schedule = schedule or current_schedule()
    build = Path(build)
    (build / "notebooks").mkdir(parents=True, exist_ok=True)
    (build / "html").mkdir(parents=True, exist_ok=True)
    print(f"data: {ensure_shapes(data_root)}", flush=True)
    rows = []
    for source in course_notebooks():
        nb = jupytext.read(source)
        start = time.perf_counter()
        status = "ok"
        try:
            _execute(nb, source.parent, None, {"DETUTILS_SCHEDULE": schedule})
        except Exception as error:  # record the failure, keep the rest of the course going
            status = f"failed: {type(error).__name__}"
        seconds = time.perf_counter() - start
        nbformat.write(nb, build / "notebooks" / f"{source.stem}.ipynb")
        html, _ = HTMLExporter().from_notebook_node(nb)
        (build / "html" / f"{source.stem}.html").write_text(html, encoding="utf-8")
        rows.append({"notebook": source.stem, "seconds": round(seconds, 1), "status": status})
        print(f"{source.stem:40s} {seconds:7.1f} s  {status}", flush=True)
    results = build / "results.csv"
    pd.DataFrame(rows).to_csv(results, index=False)
    failed = [r["notebook"] for r in rows if r["status"] != "ok"]
    print(f"\nExecuted notebooks: {build / 'notebooks'}\nHTML: {build / 'html'}")
    print(f"Results table: {results}")
    if failed:
        raise RuntimeError(f"notebooks failed: {', '.join(failed)} (see {build / 'notebooks'})")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detutils.course", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="execute notebooks and store their outputs")
    refresh.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    refresh.add_argument(
        "--schedule",
        choices=["ci", "cpu", "gpu"],
        help="default: cpu for training notebooks, else ci",
    )
    commands.add_parser("exercises", help="write the student versions")
    run = commands.add_parser("run", help="execute the whole course into a build folder")
    run.add_argument("--build", type=Path, default=REPO_ROOT / "build")
    run.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "shapes")
    run.add_argument("--schedule", choices=["ci", "cpu", "gpu"], default=None)
    args = parser.parse_args(argv)

    if args.command == "refresh":
        for source in args.notebooks or course_notebooks():
            start = time.perf_counter()
            timeout = None if stored_schedule(source) != "ci" else REFRESH_TIMEOUT
            target = refresh_notebook(source, schedule=args.schedule, timeout=timeout)
            print(f"{target} ({time.perf_counter() - start:.1f} s)", flush=True)
    elif args.command == "exercises":
        for target in write_exercises():
            print(target)
    else:
        try:
            run_course(args.build, args.data, args.schedule)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
