"""Running the course: the set-up cell of every notebook, and the commands behind `make`.

A notebook is written as a jupytext ``py:percent`` file ``notebooks/NN_topic.py``,
paired with ``notebooks/NN_topic.ipynb`` that holds the stored outputs nbval checks.

    python -m detutils.course refresh [NOTEBOOK ...]   # .py -> .ipynb, executed in place
    python -m detutils.course exercises                # student versions in notebooks/exercises/
    python -m detutils.course run [--build build]      # data, then every notebook into build/
    python -m detutils.course site [--out build/site]  # the web site of the stored notebooks

Exercises follow nbgrader's convention, so a teacher can grade them with nbgrader
(the README says how). In the source (``NN_topic.py``):

- a cell tagged ``solution`` holds the answer between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; lines before the markers (the names the check reads, set to
  ``None``) stay in the student version;
- a cell tagged ``check`` follows it: nbgrader's read-only autograder test cell, built
  from ``detutils.checks``; lines between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` run in the course notebook and are left out of the student
  version.

The stored course notebooks carry nbgrader's cell metadata (they are its *source*
version); ``exercises`` writes the *release*: every solution region replaced by
``# YOUR CODE HERE``, hidden tests removed, the outputs of solution and check cells
cleared, and every other output, the lesson's figures included, kept.
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
    "add_grading_metadata",
    "make_exercise",
    "exercise_network",
    "run_course",
    "notebook_title",
    "readme_course_map",
    "course_title",
    "course_index",
    "site_notebooks",
    "build_site",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+$")
SOLUTION_TAG = "solution"
CHECK_TAG = "check"
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE"
NBGRADER_SCHEMA_VERSION = 3
# Execution budget of one notebook (seconds); training notebooks on the full schedule
# may take much longer, so `run` uses no limit.
REFRESH_TIMEOUT = 1800
# Topics of notebooks that are not ``NN_<detector>_training`` but train detectors in the
# lesson, so that they store a ``cpu`` run too (see ``stored_schedule``).
TRAINS_IN_LESSON = ("assigners_side_by_side",)


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


def _execute(
    nb, cwd: Path, timeout: int | None, env: dict[str, str], allow_errors: bool = False
) -> None:
    """Execute ``nb`` in place in a kernel started in ``cwd`` with ``env`` added.

    With ``allow_errors`` a failing cell stores its error and the next cells still run.
    """
    from nbconvert.preprocessors import ExecutePreprocessor

    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        executor = ExecutePreprocessor(
            timeout=timeout, kernel_name="python3", record_timing=False, allow_errors=allow_errors
        )
        executor.preprocess(nb, {"metadata": {"path": str(cwd)}})
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _stable_ids(nb) -> None:
    """Number the cells: jupytext draws random ids, which would churn every stored file."""
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:03d}"


def _drop_widget_state(nb) -> None:
    """Keep a slider cell's text, not its widget: the state would churn every stored file.

    A widget lives only in a running kernel; its stored view would show nothing but a
    model id drawn anew on each run, so only its text rendering is kept.
    """
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
        cell.outputs = [o for o in cell.outputs if o.output_type != "display_data" or o.data]


def stored_schedule(source: Path) -> str:
    """The schedule whose outputs a notebook stores: ``cpu`` for training notebooks.

    A training notebook (``NN_<detector>_training``, ``NN_pretraining_...``, and the
    notebooks of ``TRAINS_IN_LESSON``, which train detectors along the way) shows a
    real CPU run to its readers, and marks the cells that depend on it
    ``# NBVAL_IGNORE_OUTPUT``, so that nbval can re-run it on the quick ``ci`` schedule;
    every other notebook stores ``ci``.
    """
    stem = Path(source).stem
    topic = stem[3:]
    trains = stem.endswith("_training") or topic.startswith("pretraining")
    return "cpu" if trains or topic in TRAINS_IN_LESSON else "ci"


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
    add_grading_metadata(nb, source.stem)
    _drop_widget_state(nb)
    _stable_ids(nb)
    target = source.with_suffix(".ipynb")
    jupytext.write(nb, target, fmt="ipynb")
    return target


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _cut_region(source: str, begin: str, end: str, stub: str | None, where: str) -> str:
    """``source`` with every ``begin`` .. ``end`` region replaced by ``stub`` (or removed)."""
    lines, kept, inside, found = source.splitlines(), [], False, False
    for line in lines:
        marker = line.strip()
        if marker == begin:
            if inside:
                raise ValueError(f"{where}: {begin!r} inside another one")
            inside = found = True
            if stub is not None:
                indent = line[: len(line) - len(line.lstrip())]
                kept.append(indent + stub)
        elif marker == end:
            if not inside:
                raise ValueError(f"{where}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{where}: {begin!r} without {end!r}")
    if stub is not None and not found:
        raise ValueError(f"{where}: a solution cell needs {begin!r} and {end!r} markers")
    return "\n".join(kept)


def add_grading_metadata(nb, name: str = "notebook"):
    """Give solution and check cells nbgrader's cell metadata, in place; returns ``nb``.

    Exercise ``n`` is the ``n``-th solution cell: its answer cell gets the nbgrader id
    ``exercise_n`` (``solution``, editable) and each check cell after it
    ``exercise_n_check`` (then ``..._check2``, ...): graded, one point, read-only.

    Raises:
        ValueError: a solution cell without its markers, a check cell before any
            solution cell, or a solution cell followed by no check cell.
    """
    exercise, checks = 0, 0
    for index, cell in enumerate(nb.cells):
        tags = _tags(cell)
        where = f"{name}, cell {index}"
        if cell.cell_type != "code" or not {SOLUTION_TAG, CHECK_TAG} & set(tags):
            cell.metadata.pop("nbgrader", None)
            continue
        if SOLUTION_TAG in tags:
            if exercise and not checks:
                raise ValueError(f"{where}: exercise {exercise} has no check cell")
            _cut_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, where)
            exercise, checks = exercise + 1, 0
            grading = {"grade": False, "grade_id": f"exercise_{exercise}", "locked": False,
                       "solution": True}  # fmt: skip
        else:
            if not exercise:
                raise ValueError(f"{where}: a check cell before any solution cell")
            checks += 1
            suffix = "" if checks == 1 else str(checks)
            grading = {"grade": True, "grade_id": f"exercise_{exercise}_check{suffix}",
                       "locked": True, "points": 1, "solution": False}  # fmt: skip
        cell.metadata["nbgrader"] = {
            **grading, "schema_version": NBGRADER_SCHEMA_VERSION, "task": False
        }  # fmt: skip
    if exercise and not checks:
        raise ValueError(f"{name}: exercise {exercise} has no check cell")
    return nb


def make_exercise(nb, name: str = "notebook"):
    """The student release of an executed course notebook.

    Solution regions become ``# YOUR CODE HERE`` (the lines before them stay), hidden
    tests are removed, solution and check cells lose their outputs; every other cell
    keeps its outputs, so the lesson's tables and figures are there to read. Cells carry
    nbgrader's metadata. The course notebook is left untouched.
    """
    import copy

    student = add_grading_metadata(copy.deepcopy(nb), name)
    for index, cell in enumerate(student.cells):
        tags = _tags(cell)
        where = f"{name}, cell {index}"
        if SOLUTION_TAG in tags:
            cell.source = _cut_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, where)
        elif CHECK_TAG in tags:
            cell.source = _cut_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        else:
            continue
        cell.outputs = []
        cell.execution_count = None
    _stable_ids(student)
    return student


def write_exercises(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Write ``notebooks/exercises/NN_topic.ipynb`` for every course notebook.

    The release is made from the stored, executed ``NN_topic.ipynb``, whose outputs it
    keeps; run ``refresh`` first when the source changed.
    """
    import nbformat

    out_dir = notebook_dir / "exercises"
    out_dir.mkdir(exist_ok=True)
    written = []
    for source in course_notebooks(notebook_dir):
        stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        target = out_dir / f"{source.stem}.ipynb"
        nbformat.write(make_exercise(stored, source.stem), target)
        written.append(target)
    return written


def exercise_network(
    model_name: str,
    data_root: Path,
    schedule_name: str | None = None,
    out_dir: Path | None = None,
    device: str = "cpu",
    seconds: float = 45.0,
    lesson_run: Path | None = None,
):
    """A trained network for the exercises of a training notebook, in under a minute.

    The exercises of notebooks 13, 23 and 33 need a network that has learnt something.
    If the lesson's run on this schedule finished (``lesson_run``, its folder, holds
    ``last.pt`` of a run with the schedule's steps, batch and image size), that
    network is loaded. Otherwise this trains the detector's ``cpu`` schedule cut to
    ``seconds`` of training (batches of 8 at 256 px, the learning rate planned for that
    time; a network that has only started to learn) and stores it in
    ``runs/exercises/``; the next call with the same plan loads it in a second. On the
    ``ci`` schedule it trains the ``ci`` one.

    Returns:
        the detector in eval mode, on ``device``.
    """
    import dataclasses
    import json

    import torch

    from detutils.data import CocoDetection, build_train_set, find_split
    from detutils.engine import train
    from detutils.engine.checkpoint import inference_state_dict, load_checkpoint
    from detutils.engine.presets import schedules_for
    from detutils.models import build_detector

    schedule_name = schedule_name or current_schedule()
    schedules = schedules_for(model_name)
    if schedule_name == "ci":
        schedule = schedules["ci"]
    else:
        cpu = schedules["cpu"]
        planned = max(int(seconds / 0.25), 1)  # steps of 8 at 256 px: about 0.25 s on a laptop
        schedule = dataclasses.replace(
            cpu, iterations=planned, batch_size=8, img_size=256, warmup_epochs=0.05,
            max_minutes=seconds / 60, lr_by_time=True, cache_images=False,
        )  # fmt: skip
    out_dir = Path(out_dir or REPO_ROOT / "runs" / "exercises" / f"{model_name}_{schedule_name}")
    train_set = CocoDetection(*find_split(Path(data_root), "train"))
    model = build_detector(model_name, num_classes=train_set.num_classes)
    plan = json.dumps({"model": model_name, **schedule.to_dict()}, sort_keys=True, default=str)
    plan_file, checkpoint = out_dir / "plan.json", out_dir / "last.pt"
    lesson = Path(lesson_run) / "last.pt" if lesson_run is not None else None
    lesson_state = None
    if lesson is not None and lesson.is_file():
        lesson_state = load_checkpoint(lesson, model_name=model_name)
    # a lesson's run counts only on the schedule asked for (the tests' ci runs do not
    # stand in for a cpu run)
    named = schedules[schedule_name].to_dict()
    if lesson_state is not None and all(
        lesson_state["schedule"].get(key) == named[key]
        for key in ("iterations", "batch_size", "img_size")
    ):
        model.load_state_dict(inference_state_dict(lesson_state))
        print(f"loaded the network of the lesson's run ({lesson_state['iteration']} steps)")
    elif checkpoint.is_file() and plan_file.is_file() and plan_file.read_text() == plan:
        state = load_checkpoint(checkpoint, model_name=model_name)
        model.load_state_dict(inference_state_dict(state))
        print(
            f"loaded the exercise network from {checkpoint.relative_to(out_dir.parents[1])} "
            f"({state['iteration']} steps)"
        )
    else:
        start = time.perf_counter()
        result = train(
            model, build_train_set(train_set, schedule), schedule, out_dir=out_dir,
            device=device, progress=False,
        )  # fmt: skip
        model = result.model
        plan_file.write_text(plan)
        print(
            f"trained {result.iterations} steps of {schedule.batch_size} images at "
            f"{schedule.img_size} px in {time.perf_counter() - start:.0f} s; stored for next time"
        )
    torch.set_num_threads(int(os.environ.get("DETUTILS_NUM_THREADS", "1")))
    return model.to(device).eval()


def run_course(build: Path, data_root: Path, schedule: str | None = None) -> Path:
    """Build the data, execute every notebook in order, write ``build/``.

    ``build/notebooks/`` gets the executed notebooks, ``build/site/`` the course's web
    site made from them (``build_site``; open ``build/site/index.html``) and
    ``build/results.csv`` one row per notebook (seconds, status).

    Returns:
        the path of ``results.csv``.
    """
    import jupytext
    import nbformat
    import pandas as pd

    from detutils.data.shapes import ensure_shapes

    schedule = schedule or current_schedule()
    build = Path(build)
    (build / "notebooks").mkdir(parents=True, exist_ok=True)
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
        rows.append({"notebook": source.stem, "seconds": round(seconds, 1), "status": status})
        print(f"{source.stem:40s} {seconds:7.1f} s  {status}", flush=True)
    results = build / "results.csv"
    pd.DataFrame(rows).to_csv(results, index=False)
    failed = [r["notebook"] for r in rows if r["status"] != "ok"]
    index = build_site(build / "notebooks", build / "site", NOTEBOOK_DIR / "exercises")
    print(f"\nExecuted notebooks: {build / 'notebooks'}\nSite: {index}")
    print(f"Results table: {results}")
    if failed:
        raise RuntimeError(f"notebooks failed: {', '.join(failed)} (see {build / 'notebooks'})")
    return results


# The course's web site: Jupyter Book (Sphinx, MyST-NB) renders the stored notebooks.
SITE_CONFIG = {
    "author": "",
    "copyright": "",
    "only_build_toc_files": True,
    "execute": {"execute_notebooks": "off"},  # the stored outputs, never a kernel
    "html": {"home_page_in_navbar": True, "use_multitoc_numbering": False},
    "sphinx": {"config": {"html_show_copyright": False}},
}
SITE_EXERCISES = "_exercises"  # where the staged book keeps the student versions


def notebook_title(nb, default: str = "") -> str:
    """The text of the first markdown heading of ``nb``, or ``default`` if it has none."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                match = re.match(r"^#{1,6}\s+(.+?)[\s#]*$", line)
                if match:
                    return match.group(1)
    return default


def _first_sentence(nb) -> str:
    """The first sentence of the first markdown paragraph that is not a heading."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for paragraph in re.split(r"\n\s*\n", cell.source):
            text = " ".join(paragraph.split())
            if text and not text.startswith("#"):
                return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return ""


def readme_course_map(readme: Path = REPO_ROOT / "README.md") -> dict[str, dict[str, str]]:
    """The rows of the README's "Course map" table, by notebook name.

    Returns:
        ``{"01_boxes_and_iou": {"you will learn to": ..., "CPU time": ...}, ...}``, the
        columns after the first as the README names them; empty without a README.
    """
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    section = re.search(r"^## Course map\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    rows, header = {}, None
    for line in section.group(1).splitlines() if section else []:
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
        elif (name := re.search(r"\d\d_[a-z0-9_]+", cells[0])) is not None:
            rows[name.group(0)] = dict(zip(header[1:], cells[1:], strict=False))
    return rows


def course_title(readme: Path = REPO_ROOT / "README.md") -> str:
    """The course's name: the README's first heading."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    match = re.search(r"^# (.+)$", text, re.M)
    return match.group(1).strip() if match else "The course"


def course_index(pages: list[tuple[str, str, str, str]], title: str) -> str:
    """The site's index page (MyST markdown): the course map, one row per notebook.

    Args:
        pages: ``(name, title, what it teaches, CPU time)`` of every notebook, in
            course order; the page of ``name`` is ``name.ipynb``.
        title: the page's heading.
    """
    lines = [
        f"# {title}",
        "",
        "Every notebook of the course, in course order, with the outputs and figures it",
        "stores. Each page offers its student version, the notebook whose exercises are",
        "left for you to do: download it and open it in Jupyter.",
        "",
        "## Course map",
        "",
        "| notebook | you will learn to | CPU time |",
        "| --- | --- | --- |",
    ]
    for name, page_title, description, cpu_time in pages:
        link = re.sub(r"([\[\]|])", r"\\\1", page_title)
        lines.append(f"| [{link}]({name}.ipynb) | {description} | {cpu_time} |")
    return "\n".join(lines) + "\n"


def _student_link(name: str) -> str:
    """The markdown cell that offers a notebook's student version as a download."""
    return (
        "```{admonition} Student version\n"
        f"{{download}}`Download {name}.ipynb <{SITE_EXERCISES}/{name}.ipynb>`: this notebook "
        "with the exercises left for you to do, to open in Jupyter. It is "
        f"`notebooks/exercises/{name}.ipynb` in the course's repository.\n```"
    )


def site_notebooks(notebook_dir: Path) -> list[Path]:
    """The executed ``NN_topic.ipynb`` of a folder, in course order.

    A folder of sources (``notebooks/``) gives the ``.ipynb`` beside each of its
    ``course_notebooks``; a folder of executed notebooks only (``build/notebooks/``) its
    ``NN_topic.ipynb`` files.
    """
    notebook_dir = Path(notebook_dir)
    names = {source.stem for source in course_notebooks(notebook_dir)}
    names |= {p.stem for p in notebook_dir.glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.stem)}
    found = [notebook_dir / f"{name}.ipynb" for name in sorted(names)]
    for missing in (p for p in found if not p.is_file()):
        print(f"no stored {missing.name}, left out of the site (make refresh)", file=sys.stderr)
    return [p for p in found if p.is_file()]


def build_site(notebook_dir: Path, out: Path, exercises_dir: Path | None = None) -> Path:
    """Build the course's web site from executed notebooks with Jupyter Book.

    Nothing is executed: each ``NN_topic.ipynb`` of ``notebook_dir`` becomes a page with
    the outputs and figures it stores, after an index page with the course map (each
    notebook's title, its first markdown heading, and what it teaches, from the README's
    "Course map" or else the notebook's first sentence). A sidebar and previous / next
    links join the pages; each page offers its student version as a download. The book
    (copies of the notebooks, ``index.md``, ``_config.yml``, ``_toc.yml``) is staged in a
    temporary folder and built by ``jupyter-book`` run with this Python.

    Args:
        notebook_dir: folder of executed notebooks (``notebooks/``, ``build/notebooks/``).
        out: the site's folder; an earlier site there is replaced, anything else refused.
        exercises_dir: the student versions, ``NN_topic.ipynb``; default
            ``notebook_dir / "exercises"``. A notebook without one gets no link.

    Returns:
        the path of the site's ``index.html``.

    Raises:
        FileNotFoundError: ``notebook_dir`` holds no course notebook.
        FileExistsError: ``out`` holds files that are not an earlier site.
        RuntimeError: the build failed (its messages are in the error).
    """
    import shutil
    import subprocess
    import tempfile

    import nbformat
    import yaml

    notebooks = site_notebooks(notebook_dir)
    if not notebooks:
        raise FileNotFoundError(f"no NN_topic.ipynb notebooks in {notebook_dir}")
    exercises_dir = Path(exercises_dir or Path(notebook_dir) / "exercises")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").is_file():
        raise FileExistsError(f"{out} holds files that are not a site built here; not replaced")
    course_map, title = readme_course_map(), course_title()
    with tempfile.TemporaryDirectory(prefix="detutils-site-") as tmp:
        book = Path(tmp) / "book"
        (book / SITE_EXERCISES).mkdir(parents=True)
        pages = []
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            name = path.stem
            row = course_map.get(name, {})
            description = row.get("you will learn to") or _first_sentence(nb)
            pages.append((name, notebook_title(nb, name), description, row.get("CPU time", "")))
            student = exercises_dir / f"{name}.ipynb"
            if student.is_file():
                shutil.copyfile(student, book / SITE_EXERCISES / student.name)
                heading = next(
                    (i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"), -1
                )
                nb.cells.insert(heading + 1, nbformat.v4.new_markdown_cell(_student_link(name)))
            nbformat.write(nb, book / path.name)
        (book / "index.md").write_text(course_index(pages, title), encoding="utf-8")
        config = {"title": title, **SITE_CONFIG}
        toc = {"format": "jb-book", "root": "index",
               "chapters": [{"file": page[0]} for page in pages]}  # fmt: skip
        for file_name, content in (("_config.yml", config), ("_toc.yml", toc)):
            text = yaml.safe_dump(content, allow_unicode=True, sort_keys=False)
            (book / file_name).write_text(text, encoding="utf-8")
        command = [
            sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
            "build", str(book), "--path-output", tmp, "--quiet",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        html = Path(tmp) / "_build" / "html"
        if done.returncode != 0 or not (html / "index.html").is_file():
            raise RuntimeError(f"jupyter-book failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        if done.stderr.strip():
            print(done.stderr.strip(), file=sys.stderr)  # Sphinx's warnings
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(html, out)
    return out / "index.html"


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
    site = commands.add_parser(
        "site", help="build the web site from executed notebooks, in seconds (nothing runs)"
    )
    site.add_argument("--notebooks", type=Path, default=NOTEBOOK_DIR)
    site.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "site")
    site.add_argument(
        "--exercises", type=Path, default=None,
        help="student versions; default NOTEBOOKS/exercises, else notebooks/exercises",
    )  # fmt: skip
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
    elif args.command == "site":
        exercises = args.exercises or args.notebooks / "exercises"
        if args.exercises is None and not exercises.is_dir():
            exercises = NOTEBOOK_DIR / "exercises"  # build/notebooks has none of its own
        start = time.perf_counter()
        try:
            index = build_site(args.notebooks, args.out, exercises)
        except (OSError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"Site: {index} ({time.perf_counter() - start:.0f} s)")
    else:
        try:
            run_course(args.build, args.data, args.schedule)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
