"""CocoDetection, the checks of load_coco_json, find_split and collate."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.cocoeval import COCOeval

from detutils.data import CocoDetection, CocoFormatError, build_transforms, collate, find_split
from detutils.data.shapes import generate_shapes

# A hand-built set. Category ids 3 and 7 (not contiguous): labels 0 and 1.
# Image 1 is 40 px wide, 30 px high, with four annotations:
#   id 1: dog  [5, 5, 10, 8]     -> xyxy [5, 5, 15, 13]
#   id 2: cat  crowd             -> never a training target
#   id 3: cat  [35, 25, 10, 10]  -> runs past the corner, clipped to [35, 25, 40, 30]
#   id 4: dog  [1, 1, 0, 5]      -> zero width: left out of the targets
# Image 2 (20 x 20) has no annotation and stays in the set with empty targets.
TINY = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 8], "area": 80, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [35, 25, 10, 10]},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 5], "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
}


def _write_set(root, dataset=TINY):
    image_dir = root / "images" / "train"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in TINY["images"]:
        pixels = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / image["file_name"])
    ann_file = root / "annotations" / "instances_train.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(dataset))
    return image_dir, ann_file


@pytest.fixture
def tiny(tmp_path):
    return _write_set(tmp_path)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, train=6, val=2, size=128, seed=1, workers=1)


def _broken(tmp_path, change):
    """Write TINY after ``change(dataset)`` and return (image_dir, ann_file)."""
    dataset = copy.deepcopy(TINY)
    change(dataset)
    return _write_set(tmp_path, dataset)


def test_find_split_knows_both_layouts(tmp_path):
    image_dir, ann_file = _write_set(tmp_path / "shapes")
    assert find_split(tmp_path / "shapes", "train") == (image_dir, ann_file)
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    assert find_split(coco, "val") == (
        coco / "val2017",
        coco / "annotations" / "instances_val2017.json",
    )


def test_find_split_names_what_is_missing(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        find_split(tmp_path, "val")
    message = str(error.value)
    assert "instances_val.json" in message and "val2017" in message
    assert "images/val " not in message  # the folder that exists is not reported


def test_item_without_transforms(tiny):
    image_dir, ann_file = tiny
    dataset = CocoDetection(image_dir, ann_file)
    image, target = dataset[0]
    pixels = np.asarray(Image.open(image_dir / "a.png"))  # (30, 40, 3)
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    torch.testing.assert_close(
        image, torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    )
    expected = torch.tensor([[5.0, 5.0, 15.0, 13.0], [35.0, 25.0, 40.0, 30.0]])
    torch.testing.assert_close(target["boxes"], expected)
    assert type(target["boxes"]) is torch.Tensor  # plain tensors out, not tv_tensors
    assert target["labels"].tolist() == [1, 0] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 1
    assert target["orig_size"].tolist() == [30, 40] and target["orig_size"].dtype == torch.int64
    assert target["scale"] == 1.0
    assert target["pad"].tolist() == [0.0, 0.0] and target["pad"].dtype == torch.float32


def test_category_ids_map_to_contiguous_labels_and_back(tiny):
    dataset = CocoDetection(*tiny)
    assert dataset.num_classes == 2
    assert dataset.label_to_cat_id == [3, 7]
    assert dataset.cat_id_to_label == {3: 0, 7: 1}
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.image_ids == [1, 2] and len(dataset) == 2


def test_image_without_annotations_has_empty_targets(tiny):
    image, target = CocoDetection(*tiny)[1]
    assert image.shape == (3, 20, 20)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_missing_area_and_iscrowd_get_coco_defaults(tiny):
    dataset = CocoDetection(*tiny)
    ann = dataset.coco.anns[3]  # written without area and iscrowd
    assert ann["iscrowd"] == 0 and ann["area"] == 100


def test_transforms_letterbox_the_item(tiny):
    dataset = CocoDetection(*tiny, transforms=build_transforms(80, train=False))
    image, target = dataset[0]
    # 40 x 30 -> scale 2 -> 80 x 60, padded 10 px above and below.
    assert image.shape == (3, 80, 80)
    assert target["scale"] == 2.0 and target["pad"].tolist() == [0.0, 10.0]
    expected = torch.tensor([[10.0, 20.0, 30.0, 36.0], [70.0, 60.0, 80.0, 70.0]])
    torch.testing.assert_close(target["boxes"], expected)


def test_matches_torchvision_coco_detection(shapes_root):
    # torchvision's own dataset, wrapped for transforms v2, reads the same boxes;
    # its labels are category ids, ours are ids - 1 (shape ids run 1..6).
    image_dir, ann_file = find_split(shapes_root, "train")
    ours = CocoDetection(image_dir, ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = torchvision.datasets.wrap_dataset_for_transforms_v2(
            torchvision.datasets.CocoDetection(str(image_dir), str(ann_file))
        )
    for index in range(len(ours)):
        image, target = ours[index]
        reference_image, reference_target = reference[index]
        assert target["image_id"] == reference_target["image_id"]
        torch.testing.assert_close(
            image, torchvision.transforms.v2.functional.to_image(reference_image).float() / 255
        )
        torch.testing.assert_close(
            target["boxes"], reference_target["boxes"].as_subclass(torch.Tensor).float()
        )
        assert target["labels"].tolist() == (reference_target["labels"] - 1).tolist()


def test_perfect_detections_score_ap_one_with_cocoeval(shapes_root):
    # The dataset's pycocotools index is the evaluator's ground truth: detections equal
    # to the targets, mapped back to category ids, must score AP 1.
    dataset = CocoDetection(*find_split(shapes_root, "val"))
    results = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = box
            results.append(
                {
                    "image_id": target["image_id"],
                    "category_id": dataset.label_to_cat_id[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": 1.0,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_collate_stacks_a_batch(tiny):
    dataset = CocoDetection(*tiny, transforms=build_transforms(32, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert [t["image_id"] for t in targets] == [1, 2]
    assert [len(t["boxes"]) for t in targets] == [2, 0]


def test_collate_rejects_mixed_sizes_and_empty_batches(tiny):
    dataset = CocoDetection(*tiny)  # 40 x 30 and 20 x 20, no letterbox
    with pytest.raises(ValueError, match="one size"):
        collate([dataset[0], dataset[1]])
    with pytest.raises(ValueError, match="empty"):
        collate([])


# Bad input: each error names the file and the entry at fault.


def test_missing_image_file_is_named_at_construction(tiny):
    image_dir, ann_file = tiny
    (image_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images .*id 2 'b.png'"):
        CocoDetection(image_dir, ann_file)


def test_missing_image_file_is_named_when_loaded(tiny):
    image_dir, ann_file = tiny
    dataset = CocoDetection(image_dir, ann_file, check_files=False)
    (image_dir / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="image id 1.*a.png"):
        dataset[0]


def test_missing_image_folder(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoDetection(tmp_path / "nowhere", tiny[1])


def test_malformed_json_names_file_and_line(tiny):
    image_dir, ann_file = tiny
    ann_file.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(CocoFormatError, match=r"instances_train.json: not valid JSON \(line 2"):
        CocoDetection(image_dir, ann_file)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CocoDetection(tmp_path, tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"][0].update(bbox=[5, 5, -10, 8]),
            r"annotations\[0\] \(id 1\).*negative",
        ),
        (
            lambda d: d["annotations"][2].update(category_id=99),
            r"annotations\[2\] \(id 3\).*category_id 99",
        ),
        (
            lambda d: d["annotations"][0].update(image_id=42),
            r"annotations\[0\] \(id 1\).*image_id 42",
        ),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
            r"annotations\[1\].*four finite numbers",
        ),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, float("nan"), 3]), r"four finite"),
        (lambda d: d["annotations"][3].update(id=1), r"annotations\[3\].*unique"),
        (lambda d: d["annotations"][0].update(iscrowd=2), r"iscrowd"),
        (lambda d: d["images"][1].update(id=1), r"images\[1\] \(id 1\).*duplicate"),
        (lambda d: d["images"][0].update(width=0), r"images\[0\].*'width'"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\].*file_name"),
        (lambda d: d["categories"][1].update(id=3), r"categories\[1\].*duplicate"),
        (lambda d: d.pop("annotations"), r"no 'annotations' list"),
        (lambda d: d["images"].append(7), r"images\[2\] is not an object"),
    ],
)
def test_malformed_entries_are_named(tmp_path, change, message):
    image_dir, ann_file = _broken(tmp_path, change)
    with pytest.raises(CocoFormatError, match=message) as error:
        CocoDetection(image_dir, ann_file)
    assert str(ann_file) in str(error.value)


def test_top_level_must_be_an_object(tiny):
    image_dir, ann_file = tiny
    ann_file.write_text("[]")
    with pytest.raises(CocoFormatError, match="top level"):
        CocoDetection(image_dir, ann_file)


def test_undecodable_image_is_named(tiny):
    image_dir, ann_file = tiny
    dataset = CocoDetection(image_dir, ann_file)
    (image_dir / "b.png").write_bytes(b"")  # an empty file
    with pytest.raises(CocoFormatError, match=r"b.png \(image id 2"):
        dataset[1]


def test_image_of_the_wrong_size_is_named(tiny):
    image_dir, ann_file = tiny
    Image.new("RGB", (10, 10)).save(image_dir / "a.png")
    with pytest.raises(CocoFormatError, match="a.png is 10x10 px but image id 1 .* says 40x30"):
        CocoDetection(image_dir, ann_file)[0]


def test_cached_images_equal_the_files_and_outlive_them(tiny):
    image_dir, ann_file = tiny
    dataset = CocoDetection(image_dir, ann_file)
    before = [dataset[index][0] for index in range(len(dataset))]
    held = dataset.cache_images()
    assert held == sum(image.numel() for image in before)  # one byte a value
    for path in image_dir.iterdir():
        path.unlink()  # read from memory from now on
    for index, image in enumerate(before):
        torch.testing.assert_close(dataset[index][0], image)
    assert dataset.cache_images() == held  # a second call decodes nothing


def test_caching_names_an_undecodable_file(tiny):
    image_dir, ann_file = tiny
    (image_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(CocoFormatError, match="a.png"):
        CocoDetection(image_dir, ann_file).cache_images()
