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
