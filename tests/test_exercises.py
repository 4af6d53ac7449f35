"""The student release: nbgrader metadata, stubs that fail only in the checks, grading.

The course notebooks themselves (solutions in place, every check passing) are run by
nbval; these tests run the student copies and nbgrader.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from detutils import course
from detutils.course import (
    CHECK_TAG,
    CODE_STUB,
    SOLUTION_TAG,
    course_notebooks,
    make_exercise,
)

NOTEBOOKS = course_notebooks()
RELEASE = NOTEBOOKS[0].parent / "exercises"
ids = [p.stem for p in NOTEBOOKS]


def _tagged(cell, tag):
    return cell.cell_type == "code" and tag in cell.metadata.get("tags", [])


def _stored(source: Path):
    return nbformat.read(source.with_suffix(".ipynb"), as_version=4)


@pytest.mark.parametrize("source", NOTEBOOKS, ids=ids)
def test_release_is_up_to_date_and_keeps_the_lesson_outputs(source):
    stored = _stored(source)
    release = nbformat.read(RELEASE / f"{source.stem}.ipynb", as_version=4)
    expected = make_exercise(stored, source.stem)
    assert [(c.cell_type, c.source) for c in release.cells] == [
        (c.cell_type, c.source) for c in expected.cells
    ], "run `make exercises`"
    for kept, original in zip(release.cells, stored.cells, strict=True):
        exercise = _tagged(original, SOLUTION_TAG) or _tagged(original, CHECK_TAG)
        if original.cell_type != "code":
            continue
        if exercise:
            assert kept.outputs == [] and kept.execution_count is None
        else:  # the lesson's figures and tables are there to read
            assert kept.outputs == original.outputs
    solutions = [c for c in release.cells if _tagged(c, SOLUTION_TAG)]
    assert len(solutions) >= 3, "each notebook has at least three exercises"
    assert all(CODE_STUB in c.source and "BEGIN SOLUTION" not in c.source for c in solutions)
    assert not any("HIDDEN TESTS" in c.source for c in release.cells)


@pytest.mark.parametrize("source", NOTEBOOKS, ids=ids)
def test_course_and_release_carry_valid_nbgrader_metadata(source):
    from nbgrader.nbgraderformat import MetadataValidator, ValidationError

    validator = MetadataValidator()
    release = nbformat.read(RELEASE / f"{source.stem}.ipynb", as_version=4)
    for nb in (_stored(source), release):
        try:
            validator.validate_nb(nb)
        except ValidationError as error:
            pytest.fail(f"{source.stem}: {error}")
        graded = [c for c in nb.cells if "nbgrader" in c.metadata]
        solutions = [c for c in graded if c.metadata.nbgrader.solution]
        checks = [c for c in graded if c.metadata.nbgrader.grade]
        assert len(solutions) == sum(_tagged(c, SOLUTION_TAG) for c in nb.cells)
        assert len(checks) >= len(solutions)  # at least one check per exercise
        assert all(c.metadata.nbgrader.locked for c in checks)  # read-only test cells
        grade_ids = [c.metadata.nbgrader.grade_id for c in graded]
        assert len(set(grade_ids)) == len(grade_ids)


def _execute(nb, cwd: Path):
    env = {"DETUTILS_SCHEDULE": "ci", "DETUTILS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}  # fmt: skip
    course._execute(nb, cwd, 600, env, allow_errors=True)
    return nb


def _errors(nb):
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append((index, cell, output))
    return found


SLIDER = "interact("


@pytest.mark.parametrize("source", NOTEBOOKS, ids=ids)
def test_student_copy_runs_and_only_its_checks_fail_with_a_message(source):
    release = nbformat.read(RELEASE / f"{source.stem}.ipynb", as_version=4)
    # A slider cell (an ipywidgets figure, NBVAL_IGNORE_OUTPUT) is left out here: under
    # nbclient its Output widget's messages now and then leave the client waiting for a
    # reply until its timeout. nbval executes those cells in the course notebooks.
    for cell in release.cells:
        if cell.cell_type == "code" and SLIDER in cell.source:
            cell.source = "pass  # a slider cell, executed by nbval in the course notebook"
    executed = _execute(release, source.parent)
    errors = _errors(executed)
    failing = {index for index, _, _ in errors}
    for index, cell, output in errors:
        assert _tagged(cell, CHECK_TAG), (
            f"cell {index} is not a check cell but failed with the stubs: "
            f"{output.ename}: {output.evalue}\n{cell.source[:300]}"
        )
        assert output.ename == "CheckFailed", f"cell {index}: {output.ename}: {output.evalue}"
        assert len(output.evalue) > 30, f"cell {index}: a check needs a message that helps"
    checks = {i for i, c in enumerate(executed.cells) if _tagged(c, CHECK_TAG)}
    first_checks = set()
    for index in sorted(checks):  # the first check cell after each solution cell
        if _tagged(executed.cells[index - 1], SOLUTION_TAG):
            first_checks.add(index)
    assert first_checks <= failing, "a check passed with the stub: it cannot fail"


@pytest.fixture(scope="module")
def nbgrader_course(tmp_path_factory):
    """An nbgrader course folder with notebook 01 as assignment ``ps1``."""
    nbgrader = shutil.which("nbgrader", path=str(Path(sys.executable).parent))
    assert nbgrader, "nbgrader is installed with the dev extra"
    root = tmp_path_factory.mktemp("course")
    (root / "source" / "ps1").mkdir(parents=True)
    name = "01_boxes_and_iou"
    shutil.copy(NOTEBOOKS[0].parent / f"{name}.ipynb", root / "source" / "ps1")
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'detection'\n"
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE'}\n"
    )

    def run(*args):
        done = subprocess.run(
            [nbgrader, *args], cwd=root, capture_output=True, text=True, timeout=600,
            env={**os.environ, "DETUTILS_SCHEDULE": "ci", "DETUTILS_NUM_THREADS": "1",
                 "PATH": f"{Path(nbgrader).parent}{os.pathsep}{os.environ['PATH']}"},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    run("db", "student", "add", "solved")
    run("db", "student", "add", "stubbed")
    run("generate_assignment", "ps1", "--force")
    for student, copy_from in [
        ("solved", NOTEBOOKS[0].parent / f"{name}.ipynb"),
        ("stubbed", RELEASE / f"{name}.ipynb"),
    ]:
        folder = root / "submitted" / student / "ps1"
        folder.mkdir(parents=True)
        shutil.copy(copy_from, folder / f"{name}.ipynb")
    run("autograde", "ps1", "--force")
    run("export", "--to", str(root / "grades.csv"))
    return root, name


def test_nbgrader_generates_and_autogrades_the_exercises(nbgrader_course):
    import csv

    root, name = nbgrader_course
    release = nbformat.read(root / "release" / "ps1" / f"{name}.ipynb", as_version=4)
    ours = nbformat.read(RELEASE / f"{name}.ipynb", as_version=4)
    graded = lambda nb: [(c.source, c.metadata.nbgrader.grade_id) for c in nb.cells
                         if c.metadata.get("nbgrader", {}).get("grade")]  # fmt: skip
    assert graded(release) == graded(ours)  # nbgrader's release has our check cells
    with open(root / "grades.csv") as file:
        scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader(file)}
    maximum = sum(1 for c in ours.cells if _tagged(c, CHECK_TAG))
    assert scores == {"solved": maximum, "stubbed": 0.0}
