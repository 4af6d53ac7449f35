"""Tests of detutils.priors: grid cells, anchor points, anchor boxes and the flat prior index."""

import math

import pytest
import torch

from detutils.priors import (
    anchor_boxes,
    anchor_points,
    base_anchors,
    flat_prior_index,
    grid_cells,
    level_offsets,
    num_priors_per_level,
)

# A 320 x 320 input seen at strides 8, 16, 32.
SIZES_320 = [(40, 40), (20, 20), (10, 10)]
STRIDES_320 = [8, 16, 32]
# Faster R-CNN RPN and ATSS anchor settings (mmdet configs).
RPN = dict(scales=[8], ratios=[0.5, 1.0, 2.0])
ATSS = dict(octave_base_scale=8, scales_per_octave=1, ratios=[1.0])


def test_320_px_input_gives_1600_400_100_priors():
    cells, num_per_level = grid_cells(SIZES_320, STRIDES_320)
    points, point_strides = anchor_points(SIZES_320, STRIDES_320)
    anchors = anchor_boxes(SIZES_320, STRIDES_320, **ATSS)
    assert num_per_level == [1600, 400, 100]
    assert cells.shape == (2100, 4) and points.shape == (2100, 2) and anchors.shape == (2100, 4)
    assert point_strides.tolist() == [8.0] * 1600 + [16.0] * 400 + [32.0] * 100
    assert level_offsets(num_per_level) == [0, 1600, 2000]
    # Three anchors per location for the RPN settings.
    assert anchor_boxes(SIZES_320, STRIDES_320, **RPN).shape == (6300, 4)
    assert num_priors_per_level(SIZES_320, 3) == [4800, 1200, 300]


def test_grid_cells_hand_values():
    cells, _ = grid_cells(SIZES_320, STRIDES_320)
    # Cell (0, 0) at stride 8: centre (4, 4), side 5 * 8 = 40.
    torch.testing.assert_close(cells[0], torch.tensor([-16.0, -16, 24, 24]))
    # Cell (y=2, x=3) of the stride-16 level: centre (56, 40), side 80; index 1600 + 2*20 + 3.
    torch.testing.assert_close(cells[1643], torch.tensor([16.0, 0, 96, 80]))
    # The last cell (9, 9) at stride 32: centre (304, 304), side 160.
    torch.testing.assert_close(cells[-1], torch.tensor([224.0, 224, 384, 384]))


def test_grid_cells_and_points_equal_a_loop():
    sizes, strides = [(3, 5), (2, 1), (1, 2)], [8, 16, 32]
    cells, _ = grid_cells(sizes, strides, cell_scale=4.0)
    points, point_strides = anchor_points(sizes, strides, offset=0.25)
    expected_cells, expected_points, expected_strides = [], [], []
    for (height, width), stride in zip(sizes, strides, strict=True):
        for y in range(height):
            for x in range(width):
                cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                half = 4.0 * stride / 2
                expected_cells.append([cx - half, cy - half, cx + half, cy + half])
                expected_points.append([(x + 0.25) * stride, (y + 0.25) * stride])
                expected_strides.append(stride)
    torch.testing.assert_close(cells, torch.tensor(expected_cells))
    torch.testing.assert_close(points, torch.tensor(expected_points))
    torch.testing.assert_close(point_strides, torch.tensor(expected_strides, dtype=torch.float32))


def test_anchor_points_are_the_grid_cell_centres():
    cells, _ = grid_cells(SIZES_320, STRIDES_320)
    points, _ = anchor_points(SIZES_320, STRIDES_320)
    torch.testing.assert_close(points, (cells[:, :2] + cells[:, 2:]) / 2)


def test_rpn_anchor_golden_values():
    # mmdet's formula: h_ratio = sqrt(r), w_ratio = 1 / sqrt(r), w = base * w_ratio * scale.
    # Stride 4, scale 8: ratio 0.5 gives w = 32 sqrt(2) = 45.2548, h = 32 / sqrt(2) = 22.6274,
    # centred on the top-left corner (0, 0) of cell (0, 0) (center_offset 0).
    half_long, half_short = 16 * math.sqrt(2), 8 * math.sqrt(2)
    anchors = anchor_boxes([(2, 3)], [4], **RPN)
    expected_first_cell = torch.tensor(
        [
            [-half_long, -half_short, half_long, half_short],  # ratio 0.5: wide
            [-16.0, -16.0, 16.0, 16.0],  # ratio 1: 32 x 32
            [-half_short, -half_long, half_short, half_long],  # ratio 2: tall
        ]
    )
    torch.testing.assert_close(anchors[:3], expected_first_cell)
    # Cell (y=1, x=2) shifts every anchor by (2 * 4, 1 * 4) = (8, 4); its ratio-1 anchor is
    # the second of the three: index (1 * 3 + 2) * 3 + 1 = 16.
    torch.testing.assert_close(anchors[16], torch.tensor([-8.0, -12.0, 24.0, 20.0]))
    # Stride 64: base size 64 * 8 = 512, ratio 1: (-256, -256, 256, 256).
    level_64 = anchor_boxes([(1, 1)], [64], **RPN)
    torch.testing.assert_close(level_64[1], torch.tensor([-256.0, -256, 256, 256]))


def test_atss_anchor_golden_values():
    strides = [8, 16, 32, 64, 128]
    anchors = anchor_boxes([(1, 1)] * 5, strides, **ATSS)
    # One square of side 8 * stride per location, centred on (0, 0).
    expected = torch.tensor([[-4.0 * s, -4.0 * s, 4.0 * s, 4.0 * s] for s in strides])
    torch.testing.assert_close(anchors, expected)
    # Cell (y=1, x=2) at stride 8: shift (16, 8), side 64.
    grid = anchor_boxes([(2, 3)], [8], **ATSS)
    torch.testing.assert_close(grid[1 * 3 + 2], torch.tensor([-16.0, -24, 48, 40]))
    # center_offset 0.5 moves the centre to the middle of the cell: (4, 4).
    centred = anchor_boxes([(1, 1)], [8], center_offset=0.5, **ATSS)
    torch.testing.assert_close(centred[0], torch.tensor([-28.0, -28, 36, 36]))


def test_octave_scales_and_scale_major_order():
    # RetinaNet: octave_base_scale 4, 3 scales per octave: 4, 4 * 2^(1/3), 4 * 2^(2/3).
    anchors = base_anchors(8, [4 * 2 ** (i / 3) for i in range(3)], [1.0])
    octave = anchor_boxes([(1, 1)], [8], octave_base_scale=4, scales_per_octave=3, ratios=[1.0])
    torch.testing.assert_close(octave, anchors)
    torch.testing.assert_close(octave[:, 2] - octave[:, 0], torch.tensor([32.0, 40.3175, 50.7968]))
    # Two ratios x two scales. scale_major=True: k = ratio_index * 2 + scale_index.
    major = base_anchors(10, scales=[1.0, 2.0], ratios=[0.25, 4.0], scale_major=True)
    minor = base_anchors(10, scales=[1.0, 2.0], ratios=[0.25, 4.0], scale_major=False)
    widths_major = (major[:, 2] - major[:, 0]).tolist()
    widths_minor = (minor[:, 2] - minor[:, 0]).tolist()
    # Ratio 0.25 (h / w): w = 10 / 0.5 = 20 at scale 1, 40 at scale 2; ratio 4: w = 5, 10.
    assert widths_major == pytest.approx([20.0, 40.0, 5.0, 10.0])
    assert widths_minor == pytest.approx([20.0, 5.0, 40.0, 10.0])


def test_anchor_boxes_equal_a_loop_and_the_flat_index():
    sizes, strides = [(3, 4), (2, 2)], [4, 8]
    ratios, scales = [0.5, 1.0, 2.0], [8.0]
    anchors = anchor_boxes(sizes, strides, ratios=ratios, scales=scales)
    expected = []
    for (height, width), stride in zip(sizes, strides, strict=True):
        for y in range(height):
            for x in range(width):
                for ratio in ratios:
                    w = stride * scales[0] / math.sqrt(ratio)
                    h = stride * scales[0] * math.sqrt(ratio)
                    expected.append(
                        [
                            x * stride - w / 2,
                            y * stride - h / 2,
                            x * stride + w / 2,
                            y * stride + h / 2,
                        ]
                    )
    torch.testing.assert_close(anchors, torch.tensor(expected))
    # Flat index: level 1 starts after 3 * 4 * 3 = 36 anchors; cell (1, 0), anchor 2.
    index = flat_prior_index(1, y=1, x=0, feature_sizes=sizes, anchor=2, anchors_per_location=3)
    assert index == 36 + (1 * 2 + 0) * 3 + 2
    torch.testing.assert_close(anchors[index], torch.tensor(expected[index]))


def test_flat_index_of_single_priors():
    # Level 2 (10 x 10) of the 320-px input, cell (y=9, x=9): the very last prior.
    assert flat_prior_index(2, 9, 9, SIZES_320) == 2099
    assert flat_prior_index(1, 2, 3, SIZES_320) == 1600 + 2 * 20 + 3
    points, _ = anchor_points(SIZES_320, STRIDES_320)
    torch.testing.assert_close(
        points[flat_prior_index(1, 2, 3, SIZES_320)], torch.tensor([56.0, 40.0])
    )


def test_dtype_and_non_square_maps():
    anchors = anchor_boxes([(2, 5)], [16], dtype=torch.float64, **ATSS)
    assert anchors.dtype == torch.float64 and anchors.shape == (10, 4)
    points, point_strides = anchor_points([(2, 5)], [16], dtype=torch.float64)
    assert points.dtype == torch.float64 and point_strides.dtype == torch.float64
    # Row-major: the second prior is one step in x, the sixth the start of row 1.
    assert points[1].tolist() == [24.0, 8.0] and points[5].tolist() == [8.0, 24.0]


def test_empty_feature_sizes():
    cells, num_per_level = grid_cells([], [])
    assert cells.shape == (0, 4) and num_per_level == []
    points, point_strides = anchor_points([], [])
    assert points.shape == (0, 2) and point_strides.shape == (0,)
    assert anchor_boxes([], [], **RPN).shape == (0, 4)
    assert level_offsets([]) == []
    # A level with no cells contributes no priors.
    cells, num_per_level = grid_cells([(0, 4), (2, 2)], [8, 16])
    assert cells.shape == (4, 4) and num_per_level == [0, 4]


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="feature_sizes and strides"):
        grid_cells(SIZES_320, [8, 16])
    with pytest.raises(ValueError, match=r"feature_sizes\[1\]"):
        anchor_points([(4, 4), (-1, 2)], [8, 16])
    with pytest.raises(ValueError, match=r"feature_sizes\[0\]"):
        anchor_points([(4, 4.5)], [8])
    with pytest.raises(ValueError, match=r"strides\[0\]"):
        anchor_points([(4, 4)], [0])
    with pytest.raises(ValueError, match="cell_scale"):
        grid_cells([(4, 4)], [8], cell_scale=0)
    with pytest.raises(ValueError, match="either scales or octave_base_scale"):
        anchor_boxes([(4, 4)], [8], scales=[8], octave_base_scale=8, scales_per_octave=1)
    with pytest.raises(ValueError, match="either scales or octave_base_scale"):
        anchor_boxes([(4, 4)], [8])
    with pytest.raises(ValueError, match="scales_per_octave"):
        anchor_boxes([(4, 4)], [8], octave_base_scale=8)
    with pytest.raises(ValueError, match="center_offset"):
        anchor_boxes([(4, 4)], [8], center_offset=1.5, **ATSS)
    with pytest.raises(ValueError, match="ratios"):
        anchor_boxes([(4, 4)], [8], scales=[8], ratios=[])
    with pytest.raises(ValueError, match="base_sizes"):
        anchor_boxes([(4, 4)], [8], base_sizes=[8, 16], **ATSS)
    with pytest.raises(ValueError, match="level"):
        flat_prior_index(3, 0, 0, SIZES_320)
    with pytest.raises(ValueError, match="outside"):
        flat_prior_index(0, 40, 0, SIZES_320)
    with pytest.raises(ValueError, match="anchor"):
        flat_prior_index(0, 0, 0, SIZES_320, anchor=3, anchors_per_location=3)
