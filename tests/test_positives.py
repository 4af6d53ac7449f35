"""Every detector's positives in one form (detutils.positives), and the scene fixture."""

import math

import numpy as np
import pytest
import torch

from detutils.boxes import box_iou_aligned
from detutils.data.shapes import CLASS_NAMES, render_scene
from detutils.models import build_detector
from detutils.positives import positives_of, positives_summary, positives_table

SIZE = 128
OBJECTS = [("rectangle", 50, 60, 70), ("star", 100, 30, 12), ("hexagon", 118, 100, 40)]
PRESETS = {
    "yolov3-tiny": ["YOLOv3 wh-IoU"],
    "nanodet-m": ["ATSS on grid cells"],
    "yolov8n": ["task-aligned"],
    "atss-r18half-fpn64": ["ATSS on anchors"],
    "faster-rcnn-r18half-fpn64": ["RPN max IoU + sampler", "RoI head max IoU + sampler"],
    "deformable-detr-r18half-d128": [
        "Hungarian (last decoder layer)",
        "Hungarian (encoder proposals)",
    ],
    "co-deformable-detr-r18half-d128": [
        "Co-DETR last decoder layer",
        "Co-DETR encoder proposals",
        "Co-DETR ATSS head",
        "Co-DETR RPN",
        "Co-DETR RoI head",
    ],
}


@pytest.fixture(scope="module")
def scene():
    image, boxes, labels = render_scene(OBJECTS, size=SIZE, seed=1)
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float() / 255
    targets = [
        {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return batch, targets


def test_render_scene_boxes_are_the_visible_pixels():
    image, boxes, labels = render_scene(OBJECTS, size=SIZE, seed=1, distractors=False)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert labels.tolist() == [CLASS_NAMES.index(name) for name, *_ in OBJECTS]
    assert boxes.shape == (3, 4) and boxes.dtype == np.float32
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= SIZE).all()
    # the hexagon at x = 118 with side 40 is cut by the right border
    assert boxes[2, 2] == SIZE and boxes[2, 2] - boxes[2, 0] < 40
    # the large rectangle's box is about its side (rotation only shrinks the longer side)
    assert 40 <= max(boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]) <= 71
    again, boxes_again, _ = render_scene(OBJECTS, size=SIZE, seed=1, distractors=False)
    assert np.array_equal(image, again) and np.array_equal(boxes, boxes_again)


def test_render_scene_bad_objects_are_named():
    with pytest.raises(ValueError, match="object 1: unknown class 'blob'"):
        render_scene([("star", 10, 10, 8), ("blob", 20, 20, 8)], size=64)
    with pytest.raises(ValueError, match="object 0 .* wholly outside"):
        render_scene([("star", 200, 20, 8)], size=64)
    with pytest.raises(ValueError, match="object 0 has no visible pixel"):
        render_scene([("star", 32, 32, 6), ("rectangle", 32, 32, 60)], size=64)
    with pytest.raises(ValueError, match="object 0: side 1 px"):
        render_scene([("star", 32, 32, 1)], size=64)
    with pytest.raises(ValueError, match="class index 9"):
        render_scene([(9, 32, 32, 10)], size=64)


@pytest.fixture(scope="module")
def records(scene):
    batch, targets = scene
    found = {}
    torch.manual_seed(0)
    for preset in PRESETS:
        model = build_detector(preset, num_classes=len(CLASS_NAMES)).train()
        torch.manual_seed(0)
        with torch.no_grad():
            outputs = model(batch)
            assignment = model.assign(outputs, targets)
        found[preset] = (model, outputs, assignment, positives_of(model, outputs, assignment,
                                                                  targets))  # fmt: skip
    return found


def test_every_detector_gives_its_assigners(records):
    for preset, names in PRESETS.items():
        assert list(records[preset][3]) == names, preset


def test_positives_agree_with_the_raw_assignment(records, scene):
    _, targets = scene
    gt = targets[0]["boxes"]
    for *_, found in records.values():
        for name, record in found.items():
            count = len(record.gt_index)
            assert record.level.shape == record.iou.shape == record.prior.shape == (count,)
            assert record.boxes.shape == (count, 4), name
            assert ((record.gt_index >= 0) & (record.gt_index < len(gt))).all(), name
            assert ((record.level >= 0) & (record.level < len(record.levels))).all(), name
            expected_iou = box_iou_aligned(record.boxes, gt[record.gt_index])
            assert torch.allclose(record.iou, expected_iou), name
            # sorted by box, then level
            key = record.gt_index * len(record.levels) + record.level
            assert torch.equal(key, key.sort(stable=True).values), name
    # prior-based: the same priors as the (B, A) result of image 0
    _, _, assignment, found = records["atss-r18half-fpn64"]
    gt_index = assignment.assignment.gt_index[0]
    record = found["ATSS on anchors"]
    assert set(record.prior.tolist()) == set(torch.nonzero(gt_index >= 0).flatten().tolist())
    assert torch.equal(gt_index[record.prior], record.gt_index)
    _, _, tal, found = records["yolov8n"]
    assert len(found["task-aligned"].gt_index) == int(tal.fg_mask[0].sum())
    _, _, rcnn, found = records["faster-rcnn-r18half-fpn64"]
    rpn_positive = (rcnn.rpn.gt_index[0] >= 0) & rcnn.rpn_sampled[0]
    assert len(found["RPN max IoU + sampler"].gt_index) == int(rpn_positive.sum())
    roi = found["RoI head max IoU + sampler"]
    positive_rois = (rcnn.rois[:, 0] == 0) & (rcnn.roi_labels >= 0)
    assert len(roi.gt_index) == int(positive_rois.sum()) and (roi.prior == -1).all()
    # one-to-one: one query per box on the decoder and on the encoder
    for name in ["Hungarian (last decoder layer)", "Hungarian (encoder proposals)"]:
        record = records["deformable-detr-r18half-d128"][3][name]
        assert sorted(record.gt_index.tolist()) == list(range(len(gt)))
        assert record.measured == "prediction"
    # the same ATSS rule on the same anchors: Co-DETR's ATSS head agrees with ATSS
    same = records["co-deformable-detr-r18half-d128"][3]["Co-DETR ATSS head"]
    atss = records["atss-r18half-fpn64"][3]["ATSS on anchors"]
    assert torch.equal(same.prior, atss.prior) and torch.equal(same.gt_index, atss.gt_index)


def test_yolov3_priors_are_anchors_on_their_cells(records):
    model, outputs, targets_per_layer, found = records["yolov3-tiny"]
    record = found["YOLOv3 wh-IoU"]
    expected = []
    for layer, layer_targets in enumerate(targets_per_layer):
        mine = layer_targets.image == 0
        stride = model.strides[layer]
        centre = (torch.stack([layer_targets.gx[mine], layer_targets.gy[mine]], 1) + 0.5) * stride
        wh = layer_targets.anchor_wh[mine] * stride
        expected += torch.cat([centre - wh / 2, centre + wh / 2], 1).tolist()
    assert sorted(map(tuple, record.boxes.tolist())) == sorted(map(tuple, expected))


def test_an_image_without_boxes_has_no_positives(records, scene):
    batch, targets = scene
    for preset, (model, outputs, assignment, _) in records.items():
        torch.manual_seed(0)
        for name, record in positives_of(model, outputs, assignment, targets, image=1).items():
            assert len(record.gt_index) == 0 and record.boxes.shape == (0, 4), (preset, name)


def test_bad_arguments(records, scene):
    _, targets = scene
    model, outputs, assignment, _ = records["yolov8n"]
    with pytest.raises(IndexError, match="image 2 outside a batch of 2"):
        positives_of(model, outputs, assignment, targets, image=2)
    with pytest.raises(TypeError, match="does not know Linear"):
        positives_of(torch.nn.Linear(2, 2), outputs, assignment, targets)


def test_tables_count_per_box_and_level(records):
    found = {}
    for _, _, _, record in records.values():
        found.update(record)
    table = positives_table(found, 3)
    levels = [c for c in table.columns if c not in ("positives", "mean IoU")]
    assert levels[0] == "stride 4" and levels[-1] == "queries"
    assert (table[levels].sum(axis=1) == table["positives"]).all()
    summary = positives_summary(found, 3)
    for name, record in found.items():
        counts = torch.bincount(record.gt_index, minlength=3)
        assert table.loc[name]["positives"].tolist() == counts.tolist()
        assert summary.loc[name, "positives"] == len(record.gt_index)
        assert summary.loc[name, "boxes without"] == int((counts == 0).sum())
        mean = float(record.iou.mean()) if len(record.iou) else math.nan
        assert summary.loc[name, "mean IoU"] == pytest.approx(mean, nan_ok=True)
