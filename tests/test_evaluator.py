"""Tests of detutils.engine.evaluator: COCO metrics through pycocotools' COCOeval."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import DataLoader

from detutils.data import CocoDetection, build_transforms, collate
from detutils.engine.evaluator import coco_evaluate, detections_to_coco, evaluate, merge_labels

# COCOeval interpolates precision at 101 recall points 0.00, 0.01, ..., 1.00. A class
# with two objects whose first detection is right and second wrong reaches recall 0.5
# at precision 1 and never more: 51 of the 101 points have precision 1, so AP = 51/101.
HALF_FOUND_AP = 51 / 101


def make_coco(images, annotations, categories) -> COCO:
    """A pycocotools COCO index from lists of dicts (ids of annotations filled in)."""
    for index, annotation in enumerate(annotations, start=1):
        width, height = annotation["bbox"][2:]
        annotation.update(id=index, area=width * height, iscrowd=0)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_as_detections(coco: COCO, cat_id_to_label: dict[int, int], score: float = 0.9):
    """The ground truth of every image as detections (xyxy, file pixels)."""
    detections = []
    for image_id in sorted(coco.imgs):
        annotations = coco.imgToAnns[image_id]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([cat_id_to_label[a["category_id"]] for a in annotations])
        scores = torch.full((len(annotations),), score)
        detections.append(
            {"image_id": image_id, "boxes": boxes, "scores": scores, "labels": labels}
        )
    return detections


@pytest.fixture
def three_sizes():
    """One 200 x 200 image with a small (20 x 20 = 400 < 32^2), a medium (50 x 50) and a
    large (120 x 100 > 96^2) object; category ids 3 and 7 (not contiguous) are labels 0, 1."""
    coco = make_coco(
        [{"id": 5, "width": 200, "height": 200, "file_name": "a.png"}],
        [
            {"image_id": 5, "category_id": 3, "bbox": [10, 10, 20, 20]},
            {"image_id": 5, "category_id": 7, "bbox": [40, 40, 50, 50]},
            {"image_id": 5, "category_id": 3, "bbox": [60, 90, 120, 100]},
        ],
        [{"id": 3, "name": "ring"}, {"id": 7, "name": "bar"}],
    )
    return coco, ["ring", "bar"], [3, 7]


def test_ground_truth_as_predictions_scores_one(three_sizes):
    coco, names, label_to_cat_id = three_sizes
    detections = gt_as_detections(coco, {3: 0, 7: 1})
    result = coco_evaluate(
        coco, detections_to_coco(detections, label_to_cat_id), [5], names, [3, 7]
    )
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert result.metrics[name] == pytest.approx(1.0), name
    assert result.per_class["AP"].tolist() == pytest.approx([1.0, 1.0])
    assert result.per_class["gt"].tolist() == [2, 1]
    assert result.per_class["detections"].tolist() == [2, 1]
    assert (result.num_images, result.num_detections) == (1, 3)


def test_shifted_box_gives_the_hand_computed_ap():
    # Two 100 x 100 objects of one class. The first is detected exactly (score 0.9); the
    # detection of the second is shifted 30 px right (score 0.8): overlap 70 x 100, union
    # 2 * 10000 - 7000, IoU 7000 / 13000 = 0.538. It matches at IoU threshold 0.50 only.
    # At 0.50 both are found: AP 1. At the nine thresholds 0.55 .. 0.95 the first is found
    # and the shifted one is a false positive after it: AP 51/101 (see HALF_FOUND_AP).
    coco = make_coco(
        [{"id": 1, "width": 300, "height": 300, "file_name": "a.png"}],
        [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
            {"image_id": 1, "category_id": 1, "bbox": [150, 150, 100, 100]},
        ],
        [{"id": 1, "name": "square"}],
    )
    detections = [
        {
            "image_id": 1,
            "boxes": torch.tensor([[0.0, 0, 100, 100], [180, 150, 280, 250]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 0]),
        }
    ]
    result = coco_evaluate(coco, detections_to_coco(detections, [1]), [1], ["square"], [1])
    expected_ap = (1.0 + 9 * HALF_FOUND_AP) / 10
    assert result.metrics["AP"] == pytest.approx(expected_ap)
    assert result.metrics["AP50"] == pytest.approx(1.0)
    assert result.metrics["AP75"] == pytest.approx(HALF_FOUND_AP)
    assert result.metrics["APl"] == pytest.approx(expected_ap)  # both objects are large
    assert math.isnan(result.metrics["APs"]) and math.isnan(result.metrics["APm"])
    assert result.per_class.loc["square", "AP"] == pytest.approx(expected_ap)


def test_missing_class_halves_the_mean(three_sizes):
    # Class "ring" found perfectly, class "bar" not at all: COCO AP is the mean over
    # classes, (1 + 0) / 2.
    coco, names, label_to_cat_id = three_sizes
    detections = gt_as_detections(coco, {3: 0, 7: 1})
    keep = detections[0]["labels"] == 0
    detections[0] = {
        key: value[keep] if torch.is_tensor(value) else value
        for key, value in detections[0].items()
    }
    result = coco_evaluate(
        coco, detections_to_coco(detections, label_to_cat_id), [5], names, [3, 7]
    )
    assert result.metrics["AP"] == pytest.approx(0.5)
    assert result.per_class["AP"].tolist() == pytest.approx([1.0, 0.0])


def test_no_predictions_gives_zero_without_error(three_sizes):
    coco, names, label_to_cat_id = three_sizes
    result = coco_evaluate(coco, [], [5], names, label_to_cat_id)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert result.metrics[name] == 0.0, name
    assert result.per_class["AP"].tolist() == [0.0, 0.0]
    assert result.num_detections == 0


def test_no_images_is_an_error(three_sizes):
    coco, names, label_to_cat_id = three_sizes
    with pytest.raises(ValueError, match="no images"):
        coco_evaluate(coco, [], [], names, label_to_cat_id)


def test_detections_to_coco_converts_boxes_and_labels():
    # xyxy (10, 20, 30, 60) is x 10, y 20, width 20, height 40; label 1 is category 7.
    detections = [
        {
            "image_id": 4,
            "boxes": torch.tensor([[10.0, 20, 30, 60]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        }
    ]
    (record,) = detections_to_coco(detections, [3, 7])
    assert record == {
        "image_id": 4,
        "category_id": 7,
        "bbox": [10.0, 20.0, 20.0, 40.0],
        "score": 0.5,
    }
    detections[0]["labels"] = torch.tensor([2])
    with pytest.raises(ValueError, match="image 4: labels must lie in 0..1"):
        detections_to_coco(detections, [3, 7])


@pytest.fixture(scope="module")
def wide_set(tmp_path_factory):
    """Two 80 x 50 (w x h) images on disk, letterboxed to 64: scale 0.8, the image is
    64 x 40 in the square with 12 rows of padding above (pad = (0, 12))."""
    root = tmp_path_factory.mktemp("wide")
    images, annotations = [], []
    boxes = {1: [[5, 5, 30, 20], [40, 10, 35, 38]], 2: [[0, 0, 80, 50]]}
    for image_id, image_boxes in boxes.items():
        Image.new("RGB", (80, 50), (40 * image_id, 90, 160)).save(root / f"{image_id}.png")
        images.append({"id": image_id, "width": 80, "height": 50, "file_name": f"{image_id}.png"})
        for box in image_boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                 "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": 1, "name": "box"}]
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return CocoDetection(root, ann_file, transforms=build_transforms(64, train=False))


class OracleDetector(nn.Module):
    """Predicts the letterboxed ground truth of each image of an in-order loader."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.dataset, self.position = dataset, 0

    def forward(self, images):
        indices = torch.arange(self.position, self.position + images.shape[0])
        self.position += images.shape[0]
        return indices

    def predict(self, outputs, score_thr, iou_thr, max_det):
        detections = []
        for index in outputs.tolist():
            target = self.dataset[index][1]
            count = len(target["labels"])
            detections.append(
                {
                    "boxes": target["boxes"],
                    "scores": torch.full((count,), 0.9),
                    "labels": target["labels"],
                }
            )
        return detections


def test_evaluate_undoes_the_letterbox(wide_set):
    image, target = wide_set[0]
    assert tuple(image.shape) == (3, 64, 64)
    assert target["scale"] == pytest.approx(0.8)
    assert target["pad"].tolist() == [0.0, 12.0]
    loader = DataLoader(wide_set, batch_size=2, collate_fn=collate)
    result = evaluate(OracleDetector(wide_set), loader)
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert result.num_images == 2 and result.num_detections == 3
    # The same boxes left in network-input pixels miss the objects at most thresholds.
    oracle = OracleDetector(wide_set)
    raw = oracle.predict(torch.arange(2), 0.0, 0.5, 100)
    for detection, image_id in zip(raw, wide_set.image_ids, strict=True):
        detection["image_id"] = image_id
    unmapped = coco_evaluate(wide_set.coco, detections_to_coco(raw, [1]), [1, 2], ["box"], [1])
    assert unmapped.metrics["AP"] < 0.5


def test_evaluate_restores_the_mode_and_checks_the_dataset(wide_set):
    model = OracleDetector(wide_set).train()
    evaluate(model, DataLoader(wide_set, batch_size=2, collate_fn=collate))
    assert model.training
    images = DataLoader([(torch.zeros(3, 8, 8), {})], collate_fn=collate)
    with pytest.raises(TypeError, match="no .coco"):
        evaluate(model, images)


def test_evaluate_an_untrained_detector(wide_set):
    from tiny_detector import build

    torch.manual_seed(0)
    model = build(num_classes=1)
    loader = DataLoader(wide_set, batch_size=2, collate_fn=collate)
    silent = evaluate(model, loader, score_thr=1.0)  # no score exceeds 1: no detections
    assert silent.num_detections == 0 and silent.metrics["AP"] == 0.0
    noisy = evaluate(model, loader, score_thr=0.0, max_det=7)
    assert noisy.num_detections == 2 * 7  # 8 x 8 cells score > 0: max_det per image
    assert 0.0 <= noisy.metrics["AP"] <= 1.0
    assert np.isfinite(noisy.per_class["AP"]).all()


def test_merge_labels_keeps_each_box_once_with_its_best_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 10, 10]])
    detections = {
        "boxes": boxes,
        "scores": torch.tensor([0.2, 0.5, 0.7]),
        "labels": torch.tensor([0, 1, 2]),
    }
    merged = merge_labels(detections)
    assert merged["boxes"].tolist() == [[0.0, 0, 10, 10], [5, 5, 20, 20]]
    assert merged["scores"].tolist() == pytest.approx([0.7, 0.5])
    assert merged["labels"].tolist() == [0, 0]
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    assert len(merge_labels(empty)["boxes"]) == 0


class WrongNameOracle(OracleDetector):
    """The ground truth's boxes under the other class (0 <-> 1), and again, at a lower
    score, under the right one."""

    def predict(self, outputs, score_thr, iou_thr, max_det):
        detections = []
        for detection in super().predict(outputs, score_thr, iou_thr, max_det):
            count = len(detection["labels"])
            detections.append(
                {
                    "boxes": detection["boxes"].repeat(2, 1),
                    "scores": torch.cat([torch.full((count,), 0.9), torch.full((count,), 0.2)]),
                    "labels": torch.cat([1 - detection["labels"], detection["labels"]]),
                }
            )
        return detections


def test_class_agnostic_evaluation_scores_boxes_only(tmp_path):
    Image.new("RGB", (80, 50), (90, 90, 160)).save(tmp_path / "1.png")
    annotations = [
        {"id": k, "image_id": 1, "category_id": k, "bbox": box, "area": box[2] * box[3],
         "iscrowd": 0}
        for k, box in ((1, [5, 5, 30, 20]), (2, [40, 10, 35, 38]))
    ]  # fmt: skip
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    images = [{"id": 1, "width": 80, "height": 50, "file_name": "1.png"}]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    dataset = CocoDetection(tmp_path, ann_file, transforms=build_transforms(64, train=False))
    named = evaluate(WrongNameOracle(dataset), DataLoader(dataset, collate_fn=collate))
    boxes_only = evaluate(
        WrongNameOracle(dataset), DataLoader(dataset, collate_fn=collate), class_agnostic=True
    )
    # Named: the right class comes second, after a false positive of each class.
    assert named.metrics["AP50"] == pytest.approx(0.5, abs=0.01)
    assert boxes_only.metrics["AP50"] == pytest.approx(1.0)
    assert boxes_only.num_detections == 2  # each box once, with its best score
    assert list(boxes_only.per_class.index) == ["object"]
    assert dataset.coco.dataset["annotations"][1]["category_id"] == 2  # left as it was


def test_evaluate_runs_the_network_without_autograd(wide_set):
    from tiny_detector import build

    model = build(num_classes=1)
    seen = []
    forward = model.forward

    def recording_forward(images):
        outputs = forward(images)
        seen.append((torch.is_inference_mode_enabled(), outputs.requires_grad))
        return outputs

    model.forward = recording_forward
    evaluate(model, DataLoader(wide_set, batch_size=2, collate_fn=collate))
    assert seen and all(mode and not grad for mode, grad in seen)  # no graph per batch
    assert torch.is_grad_enabled()  # and autograd is back afterwards
