"""Tests of detutils.postprocess: score threshold, class-aware NMS, max_det."""

import pytest
import torch
from torchvision.ops import nms

from detutils.postprocess import (
    postprocess_detections,
    select_dense_detections,
    select_detections,
)

# Three priors, two classes. Boxes 0 and 1 are 10 x 10 squares offset by 1 px: overlap
# 9 x 10 = 90, union 110, IoU 0.82. Box 2 is far away.
BOXES = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])


def test_nms_suppresses_within_a_class_only():
    # Same class: the weaker of the overlapping pair goes. Prior 1 scores class 1 instead,
    # so it survives: NMS is per class.
    same = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])
    result = select_detections(BOXES, same, score_thr=0.05, iou_thr=0.5)
    assert result["scores"].tolist() == pytest.approx([0.9, 0.7])
    torch.testing.assert_close(result["boxes"], BOXES[[0, 2]])
    other = torch.tensor([[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]])
    result = select_detections(BOXES, other, score_thr=0.05, iou_thr=0.5)
    assert result["labels"].tolist() == [0, 1, 0]
    # Above the pair's IoU nothing is suppressed.
    assert len(select_detections(BOXES, same, iou_thr=0.9)["scores"]) == 3


def test_threshold_max_det_and_multi_label():
    scores = torch.tensor([[0.9, 0.6], [0.02, 0.01], [0.3, 0.7]])
    result = select_detections(BOXES, scores, score_thr=0.05, iou_thr=0.5)
    # prior 0 gives two classes, prior 1 is under the threshold, prior 2 gives two
    assert result["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.3])
    assert result["labels"].tolist() == [0, 1, 1, 0]
    assert len(select_detections(BOXES, scores, max_det=2)["scores"]) == 2
    single = select_detections(BOXES, scores, multi_label=False)
    assert single["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert single["labels"].tolist() == [0, 1]
    capped = select_detections(BOXES, scores, max_candidates=1)
    assert capped["scores"].tolist() == pytest.approx([0.9])


def test_boxes_per_class():
    # (A, C, 4): prior 0 has one box for class 0 and another for class 1.
    boxes = torch.stack([BOXES, BOXES + 100], dim=1)  # (3, 2, 4)
    scores = torch.tensor([[0.9, 0.8], [0.0, 0.0], [0.0, 0.0]])
    result = select_detections(boxes, scores)
    torch.testing.assert_close(result["boxes"], torch.stack([BOXES[0], BOXES[0] + 100]))


def test_empty_inputs():
    for priors, classes in ((0, 3), (4, 0)):
        result = select_detections(torch.zeros(priors, 4), torch.zeros(priors, classes))
        assert result["boxes"].shape == (0, 4)
        assert result["scores"].shape == (0,) and result["labels"].dtype == torch.int64
    assert postprocess_detections(torch.zeros(0, 5, 4), torch.zeros(0, 5, 2)) == []


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"scores must be \(A, C\)"):
        select_detections(BOXES, torch.zeros(3))
    with pytest.raises(ValueError, match=r"boxes must be \(A, 4\) or \(A, C, 4\)"):
        select_detections(BOXES[:2], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="max_det"):
        select_detections(BOXES, torch.zeros(3, 2), max_det=0)
    with pytest.raises(ValueError, match="batch size"):
        postprocess_detections(torch.zeros(2, 3, 4), torch.zeros(1, 3, 2))


def loop_reference(boxes, scores, score_thr, iou_thr, max_det):
    """Class by class: threshold, torchvision nms, then merge and keep the best max_det."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(scores.shape[1]):
        keep = scores[:, label] > score_thr
        class_boxes, class_scores = boxes[keep], scores[keep, label]
        survivors = nms(class_boxes, class_scores, iou_thr)
        kept_boxes.append(class_boxes[survivors])
        kept_scores.append(class_scores[survivors])
        kept_labels.append(torch.full((len(survivors),), label))
    scores_all = torch.cat(kept_scores)
    order = scores_all.argsort(descending=True, stable=True)[:max_det]
    return torch.cat(kept_boxes)[order], scores_all[order], torch.cat(kept_labels)[order]


def test_batched_equals_a_loop_over_classes():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 200, 2, generator=generator) * 80
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 200, 2, generator=generator) * 30], -1)
    scores = torch.rand(2, 200, 4, generator=generator)
    results = postprocess_detections(boxes, scores, score_thr=0.3, iou_thr=0.5, max_det=50)
    for image, result in enumerate(results):
        expected = loop_reference(boxes[image], scores[image], 0.3, 0.5, 50)
        assert len(result["scores"]) == 50
        torch.testing.assert_close(result["scores"], expected[1])
        torch.testing.assert_close(result["boxes"], expected[0])
        assert torch.equal(result["labels"], expected[2])
        single = select_detections(boxes[image], scores[image], 0.3, 0.5, 50)
        assert all(torch.equal(single[key], result[key]) for key in result)


def test_non_finite_boxes_are_dropped_before_nms():
    # An infinite box would make batched_nms's class offset NaN and with it every box
    # of its class; here it is dropped and the two good boxes of class 0 are kept.
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, float("inf"), 10], [50, 50, 60, 60], [float("nan"), 0, 1, 1]]
    )
    scores = torch.tensor([[0.9], [0.95], [0.8], [0.99]])
    result = select_detections(boxes, scores, score_thr=0.05, iou_thr=0.5)
    assert result["boxes"].tolist() == [[0.0, 0, 10, 10], [50, 50, 60, 60]]
    assert result["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_dense_detections_threshold_the_class_score_then_multiply():
    # mmdet's order: per level the class score above score_thr and the nms_pre best of
    # those, then times the score factor, then NMS
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50]])
    scores = torch.tensor([[0.9], [0.04], [0.8], [0.6]])  # (A, C = 1)
    factors = torch.tensor([0.1, 1.0, 1.0, 0.5])
    dets = select_dense_detections(boxes, scores, [2, 2], score_factors=factors, nms_pre=1)
    # level 1: anchor 0 (0.9) beats anchor 1, which is under the threshold anyway;
    # level 2: anchor 2 (0.8) is the one best; times the factors: 0.09 and 0.8;
    # anchor 0 overlaps anchor 2 fully but scores lower: suppressed
    torch.testing.assert_close(dets["scores"], torch.tensor([0.8]))
    dets = select_dense_detections(boxes, scores, [2, 2], score_factors=factors, nms_pre=2)
    torch.testing.assert_close(dets["scores"], torch.tensor([0.8, 0.3]))
    flat = torch.tensor([[0.0, 0, 0, 10]])  # no width: dropped as mmdet's min_bbox_size 0
    empty = select_dense_detections(flat, torch.tensor([[0.9]]), [1])
    assert empty["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="must sum to"):
        select_dense_detections(boxes, scores, [1, 2])
