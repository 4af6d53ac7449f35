"""Tests of detutils.coders: distance, delta-xywh, YOLO and DFL integral codings."""

import math

import pytest
import torch

from detutils.coders import (
    decode_delta_xywh,
    decode_distance,
    decode_yolo,
    dfl_distances,
    dfl_integral,
    encode_delta_xywh,
    encode_distance,
)


def random_boxes(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 100
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 50 + 1
    return torch.cat([top_left, top_left + size], dim=-1)


# ---------------------------------------------------------------- distance (ltrb)


def test_encode_distance_hand_values():
    # Point (12, 20) inside box (10, 15, 30, 25): 2 to the left side, 5 to the top,
    # 18 to the right, 5 to the bottom.
    points = torch.tensor([[12.0, 20.0]])
    boxes = torch.tensor([[10.0, 15.0, 30.0, 25.0]])
    torch.testing.assert_close(encode_distance(points, boxes), torch.tensor([[2.0, 5, 18, 5]]))
    # Clamped for DFL with R = 15 bins: 18 becomes 15 - 0.01 (ultralytics), 15 - 0.1 (GFL).
    torch.testing.assert_close(
        encode_distance(points, boxes, max_dist=15), torch.tensor([[2.0, 5, 14.99, 5]])
    )
    torch.testing.assert_close(
        encode_distance(points, boxes, max_dist=15, eps=0.1), torch.tensor([[2.0, 5, 14.9, 5]])
    )


def test_encode_distance_outside_point():
    # Point (5, 20) is left of the box: its left distance is -5, or 0 once clamped.
    points = torch.tensor([[5.0, 20.0]])
    boxes = torch.tensor([[10.0, 15.0, 30.0, 25.0]])
    assert encode_distance(points, boxes)[0, 0] == -5
    assert encode_distance(points, boxes, max_dist=100)[0, 0] == 0


def test_distance_round_trip_and_batch_dims():
    boxes = random_boxes(12, seed=0).reshape(3, 4, 4)
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2
    distances = encode_distance(centers, boxes)
    assert distances.shape == (3, 4, 4) and (distances > 0).all()
    torch.testing.assert_close(decode_distance(centers, distances), boxes)


def test_decode_distance_clips_to_image():
    # Distances reach past a 20 (H) x 30 (W) image on every side.
    boxes = decode_distance(
        torch.tensor([[10.0, 10.0]]), torch.tensor([[15.0, 15, 25, 15]]), (20, 30)
    )
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 30, 20]]))


# ---------------------------------------------------------------- delta-xywh


def test_encode_delta_hand_values():
    # Proposal (0, 0, 10, 20): centre (5, 10), size 10 x 20. Target (5, 0, 25, 20): centre
    # (15, 10), size 20 x 20. dx = 10 / 10 = 1, dy = 0, dw = log 2, dh = log 1 = 0.
    proposals = torch.tensor([[0.0, 0, 10, 20]])
    targets = torch.tensor([[5.0, 0, 25, 20]])
    deltas = encode_delta_xywh(proposals, targets)
    torch.testing.assert_close(deltas, torch.tensor([[1.0, 0, math.log(2), 0]]))
    # With the RoI head's stds (0.1, 0.1, 0.2, 0.2) every delta is divided by them.
    normalised = encode_delta_xywh(proposals, targets, stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(normalised, torch.tensor([[10.0, 0, math.log(2) / 0.2, 0]]))


def test_decode_delta_matches_mmdet_docstring_example():
    # The worked example in mmdet's delta2bbox docstring (max_shape (32, 32, 3)).
    rois = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]])
    deltas = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]])
    expected = torch.tensor(
        [
            [0.0000, 0.0000, 1.0000, 1.0000],
            [0.1409, 0.1409, 2.8591, 2.8591],
            [0.0000, 0.3161, 4.1945, 0.6839],
            [5.0000, 5.0000, 5.0000, 5.0000],
        ]
    )
    decoded = decode_delta_xywh(rois, deltas, max_shape=(32, 32, 3))
    torch.testing.assert_close(decoded, expected, atol=1e-4, rtol=0)


def test_delta_round_trip_with_means_and_stds():
    proposals, targets = random_boxes(20, seed=1), random_boxes(20, seed=2)
    means, stds = (0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2)
    deltas = encode_delta_xywh(proposals, targets, means, stds)
    torch.testing.assert_close(decode_delta_xywh(proposals, deltas, means, stds), targets)


def test_decode_delta_clamps_the_size_change():
    # dw = 100 would overflow exp; it is clamped to |log(16 / 1000)|, so a 10 px wide
    # proposal becomes 10 * 1000 / 16 = 625 px wide. dh = -100 shrinks 16 / 1000 times.
    proposals = torch.tensor([[0.0, 0, 10, 10]])
    decoded = decode_delta_xywh(proposals, torch.tensor([[0.0, 0, 100, -100]]))
    width, height = decoded[0, 2] - decoded[0, 0], decoded[0, 3] - decoded[0, 1]
    assert width.item() == pytest.approx(625.0, rel=1e-5)
    assert height.item() == pytest.approx(0.16, rel=1e-5)


def test_decode_delta_class_specific_equals_a_loop():
    # Faster R-CNN's RoI head predicts K = 3 boxes per proposal (one per class).
    proposals = random_boxes(5, seed=3)
    deltas = torch.randn(5, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    decoded = decode_delta_xywh(proposals, deltas)
    assert decoded.shape == (5, 12)
    for k in range(3):
        torch.testing.assert_close(
            decoded[:, 4 * k : 4 * k + 4],
            decode_delta_xywh(proposals, deltas[:, 4 * k : 4 * k + 4]),
        )


def test_delta_empty_inputs():
    empty = torch.zeros(0, 4)
    assert encode_delta_xywh(empty, empty).shape == (0, 4)
    assert decode_delta_xywh(empty, empty).shape == (0, 4)


# ---------------------------------------------------------------- YOLO


def test_decode_yolo_hand_values():
    # Zero outputs: sigmoid(0) = 0.5, the centre of the cell; exp(0) = 1, the anchor size.
    # Cell (x=2, y=1) at stride 8: centre (20, 12); anchor 10 x 13 px.
    raw = torch.zeros(1, 6)  # (t_x, t_y, t_w, t_h, objectness, class)
    boxes = decode_yolo(raw, torch.tensor([2.0, 1.0]), torch.tensor([10.0, 13.0]), stride=8)
    torch.testing.assert_close(boxes, torch.tensor([[15.0, 5.5, 25.0, 18.5]]))
    # t_w = log 2 doubles the width.
    raw[0, 2] = math.log(2)
    boxes = decode_yolo(raw, torch.tensor([2.0, 1.0]), torch.tensor([10.0, 13.0]), stride=8)
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 5.5, 30.0, 18.5]]))


def test_decode_yolo_broadcasts_like_the_reference_layout():
    # (B, 3 anchors, H, W, 5 + C) with a (H, W, 2) grid and (3, 1, 1, 2) anchors.
    batch, height, width = 2, 3, 4
    raw = torch.randn(batch, 3, height, width, 7, generator=torch.Generator().manual_seed(5))
    grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid_xy = torch.stack([grid_x, grid_y], dim=-1).float()  # (H, W, 2)
    anchor_wh = torch.tensor([[10.0, 13], [16, 30], [33, 23]]).reshape(3, 1, 1, 2)
    boxes = decode_yolo(raw, grid_xy, anchor_wh, stride=8)
    assert boxes.shape == (batch, 3, height, width, 4)
    b, a, y, x = 1, 2, 2, 3
    center = (torch.sigmoid(raw[b, a, y, x, :2]) + torch.tensor([x, y])) * 8
    size = torch.exp(raw[b, a, y, x, 2:4]) * anchor_wh[a, 0, 0]
    torch.testing.assert_close(boxes[b, a, y, x], torch.cat([center - size / 2, center + size / 2]))


# ---------------------------------------------------------------- DFL integral


def test_dfl_integral_hand_values():
    # All mass on bin 3 of 0..4: the integral is 3. Equal logits: the mean bin, 2.
    one_hot_logits = torch.full((5,), -1e4)
    one_hot_logits[3] = 0
    assert dfl_integral(one_hot_logits).item() == pytest.approx(3.0)
    assert dfl_integral(torch.zeros(5)).item() == pytest.approx(2.0)
    # Two equal logits on bins 1 and 2: 1.5, a value between bins.
    two = torch.full((5,), -1e4)
    two[1:3] = 0
    assert dfl_integral(two).item() == pytest.approx(1.5)


def test_dfl_integral_equals_explicit_expectation_and_has_gradient():
    logits = torch.randn(3, 7, 17, generator=torch.Generator().manual_seed(6), requires_grad=True)
    value = dfl_integral(logits)
    assert value.shape == (3, 7)
    expected = (torch.softmax(logits, dim=-1) * torch.arange(17.0)).sum(-1)
    torch.testing.assert_close(value, expected)
    assert ((value >= 0) & (value <= 16)).all()
    value.sum().backward()
    assert (logits.grad != 0).all()


def test_dfl_distances_are_side_major():
    # R = 3 (4 bins): logits for left, top, right, bottom peak at bins 0, 1, 2, 3.
    logits = torch.full((2, 16), -1e4)
    for side in range(4):
        logits[:, side * 4 + side] = 0
    torch.testing.assert_close(dfl_distances(logits), torch.tensor([[0.0, 1, 2, 3]] * 2))


def test_dfl_round_trip_through_encode_distance():
    # A distance target d between bins: logits log((1 - frac), frac) on its two neighbour
    # bins integrate back to d; encode_distance keeps d below R so both bins exist.
    points = torch.tensor([[4.0, 4.0]])
    boxes = torch.tensor([[0.0, 1.5, 20.0, 6.25]])
    target = encode_distance(points, boxes, max_dist=8)  # (1, 4): 4, 2.5, 7.99, 2.25
    logits = torch.full((1, 4, 9), -1e4)
    left_bin = target.floor().long()
    frac = target - left_bin
    logits.scatter_(-1, left_bin[..., None], torch.log(1 - frac)[..., None])
    logits.scatter_(-1, left_bin[..., None] + 1, torch.log(frac.clamp(min=1e-12))[..., None])
    torch.testing.assert_close(dfl_distances(logits.flatten(-2)), target, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_culprit():
    boxes = torch.tensor([[0.0, 0, 10, 10]])
    with pytest.raises(ValueError, match="points"):
        encode_distance(torch.zeros(1, 3), boxes)
    with pytest.raises(ValueError, match="max_dist"):
        encode_distance(torch.zeros(1, 2), boxes, max_dist=0.01)
    with pytest.raises(ValueError, match="distances"):
        decode_distance(torch.zeros(1, 2), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="max_shape"):
        decode_distance(torch.zeros(1, 2), torch.zeros(1, 4), max_shape=(0, 5))
    with pytest.raises(ValueError, match="proposals"):
        encode_delta_xywh(torch.tensor([[0.0, 0, 0, 10]]), boxes)
    with pytest.raises(ValueError, match="gt_boxes"):
        encode_delta_xywh(boxes, torch.tensor([[5.0, 5, 5, 8]]))
    with pytest.raises(ValueError, match="same shape"):
        encode_delta_xywh(boxes, boxes.repeat(2, 1))
    with pytest.raises(ValueError, match="deltas"):
        decode_delta_xywh(boxes, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="wh_ratio_clip"):
        decode_delta_xywh(boxes, torch.zeros(1, 4), wh_ratio_clip=2.0)
    with pytest.raises(ValueError, match="raw"):
        decode_yolo(torch.zeros(1, 3), torch.zeros(2), torch.ones(2), stride=8)
    with pytest.raises(ValueError, match="stride"):
        decode_yolo(torch.zeros(1, 5), torch.zeros(2), torch.ones(2), stride=0)
    with pytest.raises(ValueError, match="pred_dist"):
        dfl_integral(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="pred_dist"):
        dfl_distances(torch.zeros(3, 17))


def test_decode_yolo_clamps_the_scale_as_the_loss_does():
    # exp(100) overflows float32; clamped at 1000 anchors, the box stays finite.
    raw = torch.tensor([[0.0, 0.0, 100.0, 0.0]])
    boxes = decode_yolo(raw, torch.zeros(1, 2), torch.tensor([[10.0, 10.0]]), stride=8)
    assert torch.isfinite(boxes).all()
    # centre (0.5 * 8, 0.5 * 8) = (4, 4); width 1000 * 10, height exp(0) * 10 = 10
    torch.testing.assert_close(boxes, torch.tensor([[4.0 - 5000, -1.0, 4.0 + 5000, 9.0]]))
