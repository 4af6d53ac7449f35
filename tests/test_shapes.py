"""The shapes set keeps the difficulty it promises: checked on a generated set."""

import json

import numpy as np
import pytest

from detutils.data import shapes
from detutils.data.shapes import (
    CLASS_NAMES,
    MIN_VISIBLE,
    course_root,
    ensure_shapes,
    generate_shapes,
    render_sample,
    resolve_root,
)

SIZE = 320
NUM_TRAIN, NUM_VAL, SEED = 60, 12, 3


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=NUM_TRAIN, val=NUM_VAL, size=SIZE, seed=SEED, workers=1)
    return root


@pytest.fixture(scope="module")
def train_json(shapes_set):
    return json.loads((shapes_set / "annotations" / "instances_train.json").read_text())


@pytest.fixture(scope="module")
def rendered():
    """(image, owner map, objects) of every training image of the set, drawn again."""
    return [render_sample(SEED, "train", index, SIZE) for index in range(NUM_TRAIN)]


def _objects_per_image(coco):
    counts = {image["id"]: 0 for image in coco["images"]}
    for ann in coco["annotations"]:
        counts[ann["image_id"]] += 1
    return np.array(list(counts.values()))


def test_layout_and_coco_fields(shapes_set, train_json):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        assert len(list((shapes_set / "images" / split).glob("*.png"))) == count
        coco = json.loads((shapes_set / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == count
        assert {i["file_name"] for i in coco["images"]} == {
            p.name for p in (shapes_set / "images" / split).glob("*.png")
        }
    assert [c["name"] for c in train_json["categories"]] == list(CLASS_NAMES)
    assert len(train_json["categories"]) >= 6
    for ann in train_json["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert 0 < ann["area"] <= w * h  # visible pixels inside their own box


def test_objects_per_image_and_classes(shapes_set, train_json):
    counts = _objects_per_image(train_json)
    assert counts.min() >= 1 and counts.max() <= 12
    assert counts.max() >= 10 and counts.min() <= 2  # the whole range is used
    labels = {ann["category_id"] for ann in train_json["annotations"]}
    assert labels == set(range(1, len(CLASS_NAMES) + 1))  # every class appears
    val = json.loads((shapes_set / "annotations" / "instances_val.json").read_text())
    assert _objects_per_image(val).min() >= 1


def test_coco_size_bins_each_hold_15_percent(train_json):
    # COCO bins by area: small < 32^2, medium < 96^2, large otherwise.
    areas = np.array([ann["area"] for ann in train_json["annotations"]])
    fractions = [
        (areas < 32**2).mean(),
        ((areas >= 32**2) & (areas < 96**2)).mean(),
        (areas >= 96**2).mean(),
    ]
    assert min(fractions) >= 0.15, fractions
    sides = np.array([max(ann["bbox"][2:]) for ann in train_json["annotations"]])
    assert sides.min() <= 10 and sides.max() >= 0.6 * SIZE  # from a few px to most of the image
    assert sides.max() <= shapes.MAX_SIDE_FRACTION * SIZE + 1


def test_boxes_are_tight_boxes_of_visible_pixels(train_json, rendered):
    by_image = {}
    for ann in train_json["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index, (_, owner, objects) in enumerate(rendered):
        written = by_image[index + 1]
        assert [a["bbox"] for a in written] == [o["bbox"] for o in objects]
        for j, (ann, item) in enumerate(zip(written, objects, strict=True)):
            assert ann["category_id"] == item["label"] + 1
            ys, xs = np.nonzero(owner == j)  # the object's visible pixels
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [int(v) for v in tight]
            assert ann["area"] == len(xs)


def test_no_object_is_mostly_hidden_but_some_are_occluded(rendered):
    visible = np.array([o["area"] / o["full_area"] for _, _, objs in rendered for o in objs])
    assert visible.min() >= MIN_VISIBLE
    assert (visible < 0.95).mean() > 0.2  # occlusion and border cuts do happen


def test_objects_touch_and_overlap(rendered):
    touching, total, overlapping_images = 0, 0, 0
    for _, owner, objects in rendered:
        # 4-neighbour pixel pairs that belong to two different objects.
        neighbours = [(owner[:, :-1], owner[:, 1:]), (owner[:-1], owner[1:])]
        touched = set()
        for a, b in neighbours:
            contact = (a >= 0) & (b >= 0) & (a != b)
            touched |= set(a[contact].tolist()) | set(b[contact].tolist())
        touching += len(touched)
        total += len(objects)
        boxes = np.array([o["bbox"] for o in objects], dtype=float)
        x0, y0, x1, y1 = (
            boxes[:, 0],
            boxes[:, 1],
            boxes[:, 0] + boxes[:, 2],
            boxes[:, 1] + boxes[:, 3],
        )
        width = np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0)
        height = np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0)
        overlap = (width > 0) & (height > 0)
        np.fill_diagonal(overlap, False)
        overlapping_images += overlap.any()
    assert touching / total > 0.4
    assert overlapping_images / len(rendered) > 0.5


def test_backgrounds_are_textured(rendered):
    for image, owner, _ in rendered:
        background = image[owner < 0].astype(float)  # (P, 3)
        assert background.std(axis=0).mean() > 15  # no flat backgrounds
        codes = background @ np.array([65536.0, 256.0, 1.0])
        assert len(np.unique(codes)) > 500


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = generate_shapes(tmp_path / "one", train=30, val=3, size=96, seed=5, workers=1)
    two = generate_shapes(tmp_path / "two", train=30, val=3, size=96, seed=5, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 30 + 3 + 2
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    other = generate_shapes(tmp_path / "other", train=1, val=0, size=96, seed=6, workers=1)
    image = "images/train/000001.png"
    assert (other / image).read_bytes() != (one / image).read_bytes()


def test_train_and_val_draw_different_images():
    train_image = render_sample(0, "train", 0, 64)[0]
    val_image = render_sample(0, "val", 0, 64)[0]
    assert not np.array_equal(train_image, val_image)


def test_ensure_shapes_generates_once_and_on_new_parameters(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    assert ensure_shapes(root, train=3, val=1, size=64, verbose=False) == root
    stored = json.loads((root / "annotations" / "instances_train.json").read_text())["info"]
    assert stored["parameters"]["seed"] == 0

    def fail(*args, **kwargs):
        raise AssertionError("generated again although the set is complete")

    monkeypatch.setattr(shapes, "generate_shapes", fail)
    assert ensure_shapes(root, train=3, val=1, size=64, verbose=False) == root
    monkeypatch.undo()

    ensure_shapes(root, train=2, val=1, size=64, seed=1, verbose=False)
    stored = json.loads((root / "annotations" / "instances_train.json").read_text())["info"]
    assert stored["parameters"]["seed"] == 1
    assert len(list((root / "images" / "train").glob("*.png"))) == 2  # stale images gone

    (root / "images" / "train" / "000002.png").unlink()  # an incomplete set is rebuilt
    ensure_shapes(root, train=2, val=1, size=64, seed=1, verbose=False)
    assert (root / "images" / "train" / "000002.png").is_file()


def test_ensure_shapes_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        ensure_shapes(tmp_path, train=1, val=1, size=64, verbose=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resolve_root_finds_the_course_data_folder(tmp_path, monkeypatch):
    # Notebooks run in <course>/notebooks, which has no data/ of its own.
    course = tmp_path / "course"
    (course / "notebooks").mkdir(parents=True)
    (course / "pyproject.toml").write_text('[project]\nname = "detutils"\n')
    monkeypatch.chdir(course / "notebooks")
    assert course_root() == course
    assert resolve_root("data/shapes") == course / "data" / "shapes"
    assert resolve_root(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_resolve_root_never_climbs_above_the_course(tmp_path, monkeypatch):
    # A data/ folder above the course (say /data) is not the course's: it was once
    # taken, and the shapes set written there.
    (tmp_path / "data").mkdir()
    course = tmp_path / "course"
    course.mkdir()
    (course / "pyproject.toml").write_text('[project]\nname = "detutils"\n')
    monkeypatch.chdir(course)
    assert resolve_root("data/shapes") == course / "data" / "shapes"
    # Outside any course checkout: the current folder, not a data/ above it.
    elsewhere = tmp_path / "somewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (tmp_path / "somewhere" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    monkeypatch.chdir(elsewhere)
    assert course_root() is None
    assert resolve_root("data/shapes") == elsewhere / "data" / "shapes"


@pytest.mark.parametrize(
    ("arguments", "culprit"),
    [({"size": 8}, "size"), ({"train": -1}, "train"), ({"val": 2.5}, "val")],
)
def test_bad_arguments_name_the_culprit(tmp_path, arguments, culprit):
    with pytest.raises(ValueError, match=culprit):
        generate_shapes(tmp_path, **{"train": 1, "val": 1, "size": 64, **arguments})


def test_render_sample_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="test"):
        render_sample(0, "test", 0, 64)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--train", "2", "--val", "1", "--size", "64", "--seed", "1"]
    assert shapes.main([*argv, "--workers", "0"]) == 0
    coco = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert coco["info"]["parameters"] == {
        "train": 2,
        "val": 1,
        "size": 64,
        "seed": 1,
        "version": shapes.GENERATOR_VERSION,
    }
    assert "instances_train.json" in capsys.readouterr().out
