"""Tests of detutils.assigners.yolov3_targets: wh-IoU and YOLOv3 target building."""

import pytest
import torch

from detutils.assigners import YOLOv3Targets, build_yolov3_targets, wh_iou

# YOLOv3's anchors (px) and strides, coarsest layer first, as in the cfg.
ANCHORS = [
    torch.tensor([[116.0, 90], [156, 198], [373, 326]]),
    torch.tensor([[30.0, 61], [62, 45], [59, 119]]),
    torch.tensor([[10.0, 13], [16, 30], [33, 23]]),
]
STRIDES = [32, 16, 8]


def feature_sizes(image_size: int) -> list[tuple[int, int]]:
    return [(image_size // stride, image_size // stride) for stride in STRIDES]


def pad(per_image_boxes, per_image_labels):
    """Pad lists of (M_i, 4) boxes and (M_i,) labels to (B, M, 4), (B, M), (B, M)."""
    num_gt = max((len(boxes) for boxes in per_image_boxes), default=0)
    batch = len(per_image_boxes)
    gt_boxes = torch.zeros(batch, num_gt, 4)
    gt_labels = torch.zeros(batch, num_gt, dtype=torch.long)
    gt_mask = torch.zeros(batch, num_gt, dtype=torch.bool)
    for image, (boxes, labels) in enumerate(zip(per_image_boxes, per_image_labels, strict=True)):
        gt_boxes[image, : len(boxes)] = torch.as_tensor(boxes, dtype=torch.float32).view(-1, 4)
        gt_labels[image, : len(boxes)] = torch.as_tensor(labels, dtype=torch.long)
        gt_mask[image, : len(boxes)] = True
    return gt_boxes, gt_labels, gt_mask


# ---------------------------------------------------------------------------- wh_iou


def test_wh_iou_by_hand():
    # (4, 2) vs (2, 4): overlap min(4, 2) x min(2, 4) = 4; union 8 + 8 - 4 = 12: 1/3.
    # (4, 2) vs (4, 2): identical, 1.  (1, 1) vs (2, 2): 1 / 4.  (2, 2) vs (0, 5): empty, 0.
    wh1 = torch.tensor([[4.0, 2], [1, 1], [2, 2]])
    wh2 = torch.tensor([[2.0, 4], [4, 2], [2, 2], [0, 5]])
    expected = torch.tensor(
        [
            [1 / 3, 1.0, 4 / 8, 0.0],
            [1 / 8, 1 / 8, 1 / 4, 0.0],
            [4 / 8, 4 / 8, 1.0, 0.0],
        ]
    )
    torch.testing.assert_close(wh_iou(wh1, wh2), expected)


def test_wh_iou_is_scale_invariant_and_symmetric():
    generator = torch.Generator().manual_seed(0)
    wh1 = torch.rand(5, 2, generator=generator) * 50 + 0.5
    wh2 = torch.rand(7, 2, generator=generator) * 50 + 0.5
    iou = wh_iou(wh1, wh2)
    torch.testing.assert_close(wh_iou(wh1 / 32, wh2 / 32), iou)  # pixels or grid cells
    torch.testing.assert_close(wh_iou(wh2, wh1), iou.T)
    assert ((iou >= 0) & (iou <= 1)).all()


def test_wh_iou_two_empty_boxes_give_zero_and_empty_sets_work():
    assert wh_iou(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0
    assert wh_iou(torch.zeros(0, 2), torch.ones(3, 2)).shape == (0, 3)


def test_wh_iou_rejects_bad_input():
    with pytest.raises(ValueError, match="negative"):
        wh_iou(torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        wh_iou(torch.ones(3), torch.ones(1, 2))


# -------------------------------------------------------------- build_yolov3_targets


def test_targets_by_hand():
    # A 416 px image, one 20 x 40 box centred at (100, 60) (xyxy 90, 40, 110, 80).
    # wh-IoU with the anchors (px): stride 32 (116, 90) 800 / 10440 = 0.077, the others
    # smaller: no match. Stride 16: (30, 61) 800 / 1830 = 0.437, (62, 45) 800 / 2790 = 0.287,
    # (59, 119) 800 / 7021 = 0.114: anchors 0 and 1. Stride 8: (10, 13) 130 / 800 = 0.163,
    # (16, 30) 480 / 800 = 0.6, (33, 23) 460 / 1099 = 0.419: anchors 1 and 2.
    # Centre at stride 16: (6.25, 3.75) -> cell x 6, y 3, offset (0.25, 0.75), size (1.25, 2.5).
    # At stride 8: (12.5, 7.5) -> cell x 12, y 7, offset (0.5, 0.5), size (2.5, 5).
    gt_boxes, gt_labels, gt_mask = pad([[[90, 40, 110, 80]]], [[5]])
    targets = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(416)
    )
    assert len(targets) == 3 and all(isinstance(t, YOLOv3Targets) for t in targets)
    assert targets[0].image.numel() == 0
    stride16, stride8 = targets[1], targets[2]
    assert stride16.anchor.tolist() == [0, 1]
    assert stride16.gx.tolist() == [6, 6] and stride16.gy.tolist() == [3, 3]
    torch.testing.assert_close(stride16.box, torch.tensor([[0.25, 0.75, 1.25, 2.5]] * 2))
    torch.testing.assert_close(
        stride16.anchor_wh, torch.tensor([[30 / 16, 61 / 16], [62 / 16, 45 / 16]])
    )
    assert stride8.anchor.tolist() == [1, 2]
    assert stride8.gx.tolist() == [12, 12] and stride8.gy.tolist() == [7, 7]
    torch.testing.assert_close(stride8.box, torch.tensor([[0.5, 0.5, 2.5, 5.0]] * 2))
    for layer in targets:
        assert layer.labels.tolist() == [5] * len(layer.image)
        assert layer.image.tolist() == [0] * len(layer.image)
        assert layer.gt_index.tolist() == [0] * len(layer.image)


def test_iou_t_is_a_strict_threshold():
    # A 10 x 13 box equals anchor 0 of stride 8 (wh-IoU 1) and has wh-IoU
    # 130 / 480 = 0.2708 with (16, 30): matched with iou_t = 0.27, not with 0.2708...
    gt_boxes, gt_labels, gt_mask = pad([[[0, 0, 10, 13]]], [[0]])
    loose = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64))
    assert loose[2].anchor.tolist() == [0, 1]
    strict = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64), iou_t=130 / 480
    )
    assert strict[2].anchor.tolist() == [0]


def test_border_centre_is_clamped_to_the_last_cell():
    # 64 px image, stride 8 grid 8 x 8. A 16 x 16 box centred exactly on the right and
    # bottom edge (64, 64) (half of it outside the image): its centre is 8.0 in grid units,
    # cell 8 does not exist, so it goes to cell 7 with offset 1.0. A box at the top-left
    # corner, centred at (0, 0): cell 0, offset 0.
    gt_boxes, gt_labels, gt_mask = pad([[[56, 56, 72, 72], [-8, -8, 8, 8]]], [[1, 2]])
    targets = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64)
    )
    for layer, (height, width) in zip(targets, feature_sizes(64), strict=True):
        assert ((layer.gx >= 0) & (layer.gx < width) & (layer.gy >= 0) & (layer.gy < height)).all()
    stride8 = targets[2]
    edge = stride8.gt_index == 0
    assert edge.any() and (~edge).any()
    assert (stride8.gx[edge] == 7).all() and (stride8.gy[edge] == 7).all()
    torch.testing.assert_close(stride8.box[edge, :2], torch.ones(int(edge.sum()), 2))
    assert (stride8.gx[~edge] == 0).all() and (stride8.gy[~edge] == 0).all()
    torch.testing.assert_close(stride8.box[~edge, :2], torch.zeros(int((~edge).sum()), 2))


def test_padded_entries_are_ignored():
    # The same box as a real entry of image 0 and, with mask False, as padding of image 1.
    gt_boxes = torch.tensor([[[90.0, 40, 110, 80]], [[90.0, 40, 110, 80]]])
    gt_labels = torch.tensor([[5], [5]])
    gt_mask = torch.tensor([[True], [False]])
    targets = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(416)
    )
    assert sum(len(layer.image) for layer in targets) == 4
    assert all((layer.image == 0).all() for layer in targets)
    # Padding may hold garbage: it is never checked nor matched.
    gt_boxes[1, 0] = torch.tensor([float("nan"), 5, -3, 0])
    again = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(416))
    for first, second in zip(targets, again, strict=True):
        torch.testing.assert_close(first.box, second.box)


@pytest.mark.parametrize("per_image", [[], [[], []]])
def test_empty_batch_and_images_without_boxes(per_image):
    gt_boxes, gt_labels, gt_mask = pad(per_image, per_image)
    targets = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64)
    )
    assert len(targets) == 3
    for layer in targets:
        assert layer.image.shape == (0,) and layer.box.shape == (0, 4)
        assert layer.anchor_wh.shape == (0, 2) and layer.labels.dtype == torch.long


def test_box_no_anchor_matches_gets_no_target():
    # Smaller than a pixel (0.5 x 0.5: wh-IoU 0.25 / 130 with the smallest anchor), of zero
    # width, or very elongated (400 x 4: at best 1600 / (1600 + 373 * 326 - 1492) = 0.013).
    gt_boxes, gt_labels, gt_mask = pad(
        [[[10, 10, 10.5, 10.5], [20, 5, 20, 30], [8, 200, 408, 204]]], [[0, 1, 2]]
    )
    targets = build_yolov3_targets(
        gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(416)
    )
    assert all(layer.image.numel() == 0 for layer in targets)


def loop_targets(gt_boxes, gt_labels, gt_mask, anchors, strides, sizes, iou_t):
    """One (anchor, image, box) at a time, in the reference's order."""
    results = []
    for layer_anchors, stride, (height, width) in zip(anchors, strides, sizes, strict=True):
        rows = []
        for anchor, (anchor_w, anchor_h) in enumerate(layer_anchors.tolist()):
            for image in range(gt_boxes.shape[0]):
                for index in range(gt_boxes.shape[1]):
                    if not gt_mask[image, index]:
                        continue
                    x1, y1, x2, y2 = (value / stride for value in gt_boxes[image, index].tolist())
                    w, h = x2 - x1, y2 - y1
                    aw, ah = anchor_w / stride, anchor_h / stride
                    inter = min(w, aw) * min(h, ah)
                    if inter / (w * h + aw * ah - inter) <= iou_t:
                        continue
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    gx = min(max(int(cx // 1), 0), width - 1)
                    gy = min(max(int(cy // 1), 0), height - 1)
                    label = int(gt_labels[image, index])
                    rows.append((image, anchor, gy, gx, [cx - gx, cy - gy, w, h], label, [aw, ah]))
        results.append(rows)
    return results


def test_vectorised_equals_loop():
    generator = torch.Generator().manual_seed(3)
    batch, num_gt, image_size = 3, 6, 128
    corner = torch.rand(batch, num_gt, 2, generator=generator) * image_size
    size = torch.rand(batch, num_gt, 2, generator=generator) * 90 + 1
    gt_boxes = torch.cat([corner - size / 2, corner + size / 2], dim=-1)
    gt_labels = torch.randint(0, 5, (batch, num_gt), generator=generator)
    gt_mask = torch.rand(batch, num_gt, generator=generator) > 0.3
    sizes = feature_sizes(image_size)
    targets = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, sizes)
    expected = loop_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, sizes, 0.2)
    assert sum(len(rows) for rows in expected) > 10  # the case exercises matching
    for layer, rows in zip(targets, expected, strict=True):
        assert layer.image.tolist() == [row[0] for row in rows]
        assert layer.anchor.tolist() == [row[1] for row in rows]
        assert layer.gy.tolist() == [row[2] for row in rows]
        assert layer.gx.tolist() == [row[3] for row in rows]
        torch.testing.assert_close(layer.box, torch.tensor([row[4] for row in rows]).view(-1, 4))
        assert layer.labels.tolist() == [row[5] for row in rows]
        torch.testing.assert_close(
            layer.anchor_wh, torch.tensor([row[6] for row in rows]).view(-1, 2)
        )


def test_batch_equals_images_one_at_a_time():
    generator = torch.Generator().manual_seed(4)
    gt_boxes = torch.tensor(
        [[[10.0, 10, 40, 50], [0, 0, 60, 30]], [[20.0, 30, 30, 60], [0, 0, 0, 0]]]
    )
    gt_labels = torch.randint(0, 3, (2, 2), generator=generator)
    gt_mask = torch.tensor([[True, True], [True, False]])
    batch = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64))
    for image in range(2):
        single = build_yolov3_targets(
            gt_boxes[image : image + 1],
            gt_labels[image : image + 1],
            gt_mask[image : image + 1],
            ANCHORS,
            STRIDES,
            feature_sizes(64),
        )
        for layer_batch, layer_single in zip(batch, single, strict=True):
            mine = layer_batch.image == image
            assert (layer_single.image == 0).all()
            assert layer_batch.anchor[mine].tolist() == layer_single.anchor.tolist()
            assert layer_batch.gx[mine].tolist() == layer_single.gx.tolist()
            torch.testing.assert_close(layer_batch.box[mine], layer_single.box)


def test_bad_input_is_rejected_with_a_clear_message():
    gt_boxes, gt_labels, gt_mask = pad([[[10, 10, 20, 20], [30, 30, 25, 40]]], [[0, 1]])
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 1\]"):
        build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64))
    gt_boxes, gt_labels, gt_mask = pad([[[10, 10, 20, 20]]], [[-1]])
    with pytest.raises(ValueError, match="class ids"):
        build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, feature_sizes(64))
    with pytest.raises(ValueError, match="one entry per layer"):
        build_yolov3_targets(
            gt_boxes, gt_labels.abs(), gt_mask, ANCHORS, STRIDES[:2], feature_sizes(64)
        )
    with pytest.raises(ValueError, match="bool"):
        build_yolov3_targets(
            gt_boxes, gt_labels.abs(), gt_mask.long(), ANCHORS, STRIDES, feature_sizes(64)
        )
    with pytest.raises(ValueError, match=r"\(B, M, 4\)"):
        build_yolov3_targets(
            gt_boxes[0], gt_labels.abs(), gt_mask, ANCHORS, STRIDES, feature_sizes(64)
        )
