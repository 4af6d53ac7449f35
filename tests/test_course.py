"""The notebook tooling: course order, student versions, the set-up cell."""

import nbformat
import pytest
import torch

from detutils import current_schedule
from detutils.course import (
    CODE_STUB,
    course_notebooks,
    make_exercise,
    setup,
    stored_schedule,
)


def _notebook():
    nb = nbformat.v4.new_notebook()
    question = nbformat.v4.new_markdown_cell("**Exercise 1.** What is 2 + 2?")
    answer = nbformat.v4.new_code_cell(
        "answer = None\n### BEGIN SOLUTION\nanswer = 2 + 2\n### END SOLUTION\nprint(answer)",
        metadata={"tags": ["solution"]},
    )
    answer.outputs = [nbformat.v4.new_output("stream", text="4\n")]
    answer.execution_count = 3
    check = nbformat.v4.new_code_cell(
        'check_equal("answer", answer, 4)\n### BEGIN HIDDEN TESTS\nassert answer == 4\n'
        "### END HIDDEN TESTS\ncheck_passed('Exercise 1')",
        metadata={"tags": ["check"]},
    )
    check.outputs = [nbformat.v4.new_output("stream", text="passed\n")]
    check.execution_count = 4
    other = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["keep"]})
    other.outputs = [nbformat.v4.new_output("stream", text="lesson output\n")]
    other.execution_count = 5
    nb.cells = [question, answer, check, other]
    return nb


def test_exercise_stubs_solutions_hides_tests_and_keeps_lesson_outputs():
    nb = _notebook()
    student = make_exercise(nb, "toy")
    assert student.cells[0].source == nb.cells[0].source  # statements stay
    assert student.cells[1].source == f"answer = None\n{CODE_STUB}\nprint(answer)"
    hidden_tests_gone = "check_equal(\"answer\", answer, 4)\ncheck_passed('Exercise 1')"
    assert student.cells[2].source == hidden_tests_gone
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells[1:3])
    assert student.cells[3].outputs == nb.cells[3].outputs  # the lesson's outputs stay
    assert student.cells[3].execution_count == 5
    assert student.cells[1].metadata["nbgrader"]["grade_id"] == "exercise_1"
    assert student.cells[2].metadata["nbgrader"] == {
        "grade": True, "grade_id": "exercise_1_check", "locked": True, "points": 1,
        "solution": False, "schema_version": 3, "task": False,
    }  # fmt: skip
    assert "nbgrader" not in student.cells[3].metadata
    assert "BEGIN SOLUTION" in nb.cells[1].source  # the course notebook is untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda nb: setattr(nb.cells[1], "source", "answer = 4"), "needs '### BEGIN SOLUTION'"),
        (lambda nb: nb.cells.pop(2), "exercise 1 has no check cell"),
        (lambda nb: nb.cells.pop(1), "a check cell before any solution cell"),
        (
            lambda nb: setattr(nb.cells[2], "source", "### BEGIN HIDDEN TESTS\nx = 1"),
            "without '### END HIDDEN TESTS'",
        ),
    ],
    ids=["no-markers", "no-check", "check-first", "unclosed-hidden"],
)
def test_exercise_rejects_malformed_exercises_naming_the_cell(change, message):
    nb = _notebook()
    change(nb)
    with pytest.raises(ValueError, match=message) as error:
        make_exercise(nb, "toy")
    assert "toy" in str(error.value)


def test_course_notebooks_are_in_course_order_and_paired():
    notebooks = course_notebooks()
    names = [p.stem for p in notebooks]
    assert names == sorted(names)
    assert all(p.with_suffix(".ipynb").is_file() for p in notebooks)


def test_setup_seeds_and_reports(capsys, monkeypatch):
    monkeypatch.setenv("DETUTILS_SCHEDULE", "ci")
    info = setup(seed=3, threads=1)
    first = torch.rand(2)
    setup(seed=3, threads=1, verbose=False)
    torch.testing.assert_close(torch.rand(2), first)
    assert info["schedule"] == "ci"
    assert "torch " + torch.__version__ in capsys.readouterr().out


def test_schedule_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("DETUTILS_SCHEDULE", "fast")
    with pytest.raises(ValueError, match="DETUTILS_SCHEDULE='fast'"):
        current_schedule()
    monkeypatch.delenv("DETUTILS_SCHEDULE")
    assert current_schedule() == ("gpu" if torch.cuda.is_available() else "cpu")


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("source", course_notebooks(), ids=lambda p: p.stem)
def test_stored_notebook_matches_its_source_and_was_executed(source):
    jupytext = pytest.importorskip("jupytext")
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert _cells(stored) == _cells(jupytext.read(source)), "run `make refresh NB=...`"
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "stored without outputs"


def test_training_notebooks_store_a_cpu_run():
    assert stored_schedule("notebooks/13_yolov3_training.py") == "cpu"
    assert stored_schedule("notebooks/11_yolov3_targets.py") == "ci"
    assert stored_schedule("notebooks/04_pretraining_a_backbone.py") == "cpu"
    assert stored_schedule("notebooks/90_assigners_side_by_side.py") == "cpu"


def test_readme_course_map_lists_every_notebook():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = re.findall(r"^\| \[`(\d\d_[a-z0-9_]+)`\]\(notebooks/", readme, re.M)
    assert listed == [p.stem for p in course_notebooks()]


def test_significant_keeps_four_digits_of_float_columns_only():
    import pandas as pd

    from detutils.course import significant

    table = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "x": [9.61675e-05, 123.456789]})
    rounded = significant(table)
    assert rounded["x"].tolist() == [9.617e-05, 123.5]  # float32's last bits gone
    assert rounded["id"].tolist() == [1, 2] and rounded["name"].tolist() == ["a", "b"]
    assert table["x"].tolist() == [9.61675e-05, 123.456789]  # a copy: the table is untouched
    assert significant(table, digits=2)["x"].tolist() == [9.6e-05, 120.0]


def test_stored_notebooks_keep_a_widgets_text_not_its_state():
    from detutils.course import _drop_widget_state

    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    slider = nbformat.v4.new_code_cell("interact(...)")
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc"}}
    slider.outputs = [
        nbformat.v4.new_output("display_data", data={**view, "text/plain": "interactive(...)"}),
        nbformat.v4.new_output("display_data", data=dict(view)),  # nothing left: dropped
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("text"), slider]
    _drop_widget_state(nb)
    assert "widgets" not in nb.metadata
    assert [o.data for o in slider.outputs] == [{"text/plain": "interactive(...)"}]
    assert "outputs" not in nb.cells[0]  # a markdown cell gets no outputs field
    nbformat.validate(nb)


def test_exercise_network_prefers_the_lesson_run_then_its_own_cached_one(tmp_path, capsys):
    from detutils.course import exercise_network
    from detutils.data import generate_shapes
    from detutils.engine.checkpoint import save_checkpoint

    root = generate_shapes(tmp_path / "shapes", train=8, val=2, size=64, seed=0, workers=1)
    out = tmp_path / "exercises"
    first = exercise_network("yolov8n", root, schedule_name="ci", out_dir=out)
    assert "trained 3 steps" in capsys.readouterr().out
    again = exercise_network("yolov8n", root, schedule_name="ci", out_dir=out)
    assert "loaded the exercise network" in capsys.readouterr().out
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert not again.training
    # a finished lesson run (its folder holds last.pt) comes first
    lesson = tmp_path / "lesson"
    state = torch.load(out / "last.pt", weights_only=True)
    save_checkpoint({**state, "iteration": 500}, lesson / "last.pt")
    exercise_network("yolov8n", root, schedule_name="ci", out_dir=out, lesson_run=lesson)
    assert "the lesson's run (500 steps)" in capsys.readouterr().out
    # a run on another schedule (here the cpu schedule's size) does not stand in for it
    other = tmp_path / "other"
    cpu_size = {**state["schedule"], "img_size": 320}
    save_checkpoint({**state, "iteration": 500, "schedule": cpu_size}, other / "last.pt")
    exercise_network("yolov8n", root, schedule_name="ci", out_dir=out, lesson_run=other)
    assert "loaded the exercise network" in capsys.readouterr().out
    # another model's checkpoint is refused, naming the file
    with pytest.raises(Exception, match="holds model 'yolov8n', not 'nanodet-m'"):
        exercise_network("nanodet-m", root, schedule_name="ci", out_dir=out, lesson_run=lesson)
