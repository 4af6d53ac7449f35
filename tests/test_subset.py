"""Cutting a COCO-format subset by classes and image count."""

import json

import pytest

from detutils.data import CocoDetection, find_split
from detutils.data import subset as subset_module
from detutils.data.shapes import generate_shapes
from detutils.data.subset import make_subset, subset_coco


def _dataset():
    """Twelve images; categories cat (3), dog (7), bird (9).

    Images 1-8 hold a dog (image 5's dog is a crowd), images 1-4 a cat too,
    images 9-12 hold only birds.
    """
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in range(1, 13)]
    annotations = []
    for image_id in range(1, 13):
        kinds = [7] if image_id <= 8 else [9]
        kinds += [3] if image_id <= 4 else []
        for category_id in kinds:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [1, 1, 5, 5],
                    "area": 25,
                    "iscrowd": int(image_id == 5),
                }
            )
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_keeps_only_the_chosen_classes_and_their_images():
    result = subset_coco(_dataset(), ["dog", "cat"])
    # Image 5's only dog is a crowd: no training target, so the image is not taken.
    assert [image["id"] for image in result["images"]] == [1, 2, 3, 4, 6, 7, 8]
    assert [c["name"] for c in result["categories"]] == ["cat", "dog"]  # source order, ids kept
    assert [c["id"] for c in result["categories"]] == [3, 7]
    assert {a["category_id"] for a in result["annotations"]} == {3, 7}
    assert len(result["annotations"]) == 7 + 4  # seven dogs, four cats


def test_crowd_annotations_of_chosen_images_are_kept():
    dataset = _dataset()
    dataset["annotations"].append(
        {"id": 99, "image_id": 2, "category_id": 7, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1}
    )
    result = subset_coco(dataset, ["dog"])
    assert 99 in {a["id"] for a in result["annotations"]}


def test_image_count_is_reproducible_by_seed():
    first = subset_coco(_dataset(), ["dog"], num_images=3, seed=0)
    again = subset_coco(_dataset(), ["dog"], num_images=3, seed=0)
    ids = [image["id"] for image in first["images"]]
    assert ids == [image["id"] for image in again["images"]]
    assert len(ids) == 3 and ids == sorted(ids)
    assert set(ids) <= {1, 2, 3, 4, 6, 7, 8}
    assert {a["image_id"] for a in first["annotations"]} == set(ids)
    picks = {
        tuple(i["id"] for i in subset_coco(_dataset(), ["dog"], 3, seed)["images"])
        for seed in range(10)
    }
    assert len(picks) > 1  # the seed matters
    assert len(subset_coco(_dataset(), ["dog"], num_images=100)["images"]) == 7  # all there are


def test_records_how_it_was_cut():
    result = subset_coco(_dataset(), ["bird"], num_images=2, seed=4)
    assert result["info"]["subset"] == {"classes": ["bird"], "num_images": 2, "seed": 4}


@pytest.mark.parametrize(
    ("classes", "count", "message"),
    [
        (["dog", "unicorn"], None, "unicorn"),
        ([], None, "not empty"),
        (["dog", "dog"], None, "distinct"),
        (["dog"], -1, "num_images"),
    ],
)
def test_bad_arguments_name_the_culprit(classes, count, message):
    with pytest.raises(ValueError, match=message):
        subset_coco(_dataset(), classes, count)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    return generate_shapes(root, train=8, val=4, size=96, seed=2, workers=1)


def test_make_subset_writes_a_set_that_loads(shapes_root, tmp_path):
    out = make_subset(shapes_root, tmp_path / "sub", ["star", "cross"], {"train": 3, "val": None})
    train = CocoDetection(*find_split(out, "train"))
    assert len(train) == 3
    assert train.class_names == ["star", "cross"]
    for index in range(len(train)):
        _, target = train[index]
        assert len(target["boxes"]) >= 1  # every image holds a chosen class
    val_dir, _ = find_split(out, "val")
    source_dir, _ = find_split(shapes_root, "val")
    for path in val_dir.iterdir():
        assert path.read_bytes() == (source_dir / path.name).read_bytes()


def test_make_subset_refuses_to_write_over_its_source(shapes_root):
    with pytest.raises(ValueError, match="another folder"):
        make_subset(shapes_root, shapes_root, ["star"], {"train": 1})


def test_command_line(shapes_root, tmp_path, capsys):
    argv = ["--src", str(shapes_root), "--out", str(tmp_path), "--classes", "ellipse, star"]
    assert subset_module.main([*argv, "--splits", "val", "--val-images", "2", "--seed", "1"]) == 0
    written = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert len(written["images"]) == 2
    assert "val: 2 images" in capsys.readouterr().out
    assert subset_module.main([*argv[:5], "unicorn"]) == 1
    assert "unicorn" in capsys.readouterr().err
