"""Padding a batch's ground truth for the batched assigners."""

import pytest
import torch

from detutils.assigners import pad_ground_truth


def test_pads_to_the_largest_count_and_masks_the_padding():
    targets = [
        {"boxes": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
    assert gt_boxes.shape == (2, 2, 4) and gt_labels.tolist() == [[2, 0], [0, 0]]
    assert gt_mask.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(gt_boxes[0], targets[0]["boxes"])
    empty = pad_ground_truth([targets[1], targets[1]])
    assert empty[0].shape == (2, 0, 4) and empty[2].shape == (2, 0)
    with pytest.raises(ValueError, match=r"targets\[0\]"):
        pad_ground_truth([{"boxes": torch.zeros(3), "labels": torch.zeros(3)}])


def test_keeps_the_device_and_checks_keys():
    targets = [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.long)}]
    assert pad_ground_truth(targets)[0].device == targets[0]["boxes"].device
    assert pad_ground_truth([])[0].shape == (0, 0, 4)  # an empty batch
    with pytest.raises(ValueError, match=r"targets\[0\] needs 'boxes' and 'labels'"):
        pad_ground_truth([{"boxes": torch.zeros(1, 4)}])


@pytest.mark.parametrize(
    ("box", "why"),
    [
        ([1.0, 2.0, float("nan"), 4.0], "NaN"),
        ([1.0, 2.0, float("inf"), 4.0], "infinite"),
        ([30.0, 20.0, 10.0, 8.0], "xywh by mistake: x2 = width < x1"),
        ([5.0, 9.0, 7.0, 3.0], "y2 < y1"),
    ],
)
def test_a_bad_box_is_named_with_its_image(box, why):
    good = {"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([1])}
    bad = {"boxes": torch.tensor([[0.0, 0, 2, 2], box]), "labels": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match=r"^targets\[1\]: box 1 = \[.*\] is not an xyxy box"):
        pad_ground_truth([good, bad])


def test_a_bad_label_is_named_with_its_image():
    boxes = torch.tensor([[0.0, 0, 4, 4], [1, 1, 2, 2]])
    with pytest.raises(ValueError, match=r"^targets\[0\]: box 1 has label -1"):
        pad_ground_truth([{"boxes": boxes, "labels": torch.tensor([0, -1])}])
    with pytest.raises(ValueError, match=r"^targets\[0\]: labels must be integer class ids"):
        pad_ground_truth([{"boxes": boxes, "labels": torch.tensor([0.0, 1.0])}])


def test_a_zero_area_box_is_valid():
    # A point box (x1 = x2, y1 = y2) is degenerate but well-formed: the assigners and
    # losses handle it (IoU 0), so it is kept.
    target = {"boxes": torch.tensor([[3.0, 3.0, 3.0, 3.0]]), "labels": torch.tensor([0])}
    assert pad_ground_truth([target])[2].tolist() == [[True]]
