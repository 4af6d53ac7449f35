"""Tests of detutils.viz: the artists each figure carries, colours, and bad inputs."""

import matplotlib

matplotlib.use("Agg")  # tests draw off screen; the module itself leaves the backend alone

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb

from detutils.assigners import BACKGROUND, IGNORE
from detutils.viz import (
    class_color,
    compare_detections,
    draw_assignment,
    draw_boxes,
    draw_priors,
    image_to_array,
    plot_losses,
)

NAMES = ["cat", "dog", "car"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rectangles(ax):
    """(x1, y1, x2, y2) of every Rectangle patch, in drawing order."""
    return [
        (patch.get_x(), patch.get_y(), patch.get_x() + patch.get_width(),
         patch.get_y() + patch.get_height())
        for patch in ax.patches
    ]  # fmt: skip


def scatters(ax):
    return [artist for artist in ax.collections if isinstance(artist, PathCollection)]


def luminance(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# --- class_color, image_to_array -------------------------------------------------------


def test_class_colors_are_distinct_and_stable():
    colors = [class_color(label) for label in range(80)]
    assert len(set(colors)) == 80
    assert colors == [class_color(label) for label in range(80)]
    assert class_color(0) == to_rgb("tab:blue")
    with pytest.raises(ValueError, match="label"):
        class_color(-1)


@pytest.mark.parametrize(
    "image",
    [
        torch.rand(3, 6, 8),
        (torch.rand(3, 6, 8) * 255).to(torch.uint8),
        np.random.default_rng(0).random((6, 8, 3)),
        torch.rand(1, 6, 8),
        np.zeros((6, 8), np.uint8),
    ],
)
def test_image_formats_give_height_then_width(image):
    assert image_to_array(image).shape[:2] == (6, 8)


def test_bad_images_are_named():
    with pytest.raises(ValueError, match="image"):
        image_to_array(torch.rand(6, 8, 3))  # HWC tensor: channels must come first
    with pytest.raises(ValueError, match="image.*normalisation"):
        image_to_array(torch.randn(3, 6, 8) * 3)  # a normalised image
    with pytest.raises(ValueError, match="image.*empty"):
        image_to_array(np.zeros((0, 8, 3)))
    with pytest.raises(ValueError, match="image"):
        draw_boxes((0, 10), [])


# --- draw_boxes ------------------------------------------------------------------------


def test_draw_boxes_artists_geometry_and_text():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [30.0, 5.0, 90.0, 45.0], [0.0, 0.0, 8.0, 8.0]])
    labels = torch.tensor([0, 2, 0])
    scores = torch.tensor([0.9, 0.456, 0.1])
    fig, given = plt.subplots()
    ax = draw_boxes(torch.rand(3, 64, 96), boxes, labels, scores, NAMES, ax=given)
    assert ax is given
    assert len(ax.patches) == 3 and len(ax.texts) == 3
    assert rectangles(ax) == [tuple(box) for box in boxes.tolist()]
    assert [text.get_text() for text in ax.texts] == ["cat 0.90", "car 0.46", "cat 0.10"]
    # The image covers pixel edges 0..W and 0..H, y downwards: boxes land on pixel edges.
    assert ax.images[0].get_extent() == [0, 96, 64, 0]
    assert ax.get_xlim() == (0, 96) and ax.get_ylim() == (64, 0)
    assert ax.get_title() == "3 boxes" and ax.get_xlabel() == "x (px)"


def test_draw_boxes_one_colour_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    ax = draw_boxes((32, 32), boxes, labels=[1, 2, 1, 2])
    edges = [to_rgb(patch.get_edgecolor()) for patch in ax.patches]
    assert edges[0] == edges[2] == class_color(1)
    assert edges[1] == edges[3] == class_color(2)
    assert edges[0] != edges[1]
    assert [text.get_text() for text in ax.texts] == ["1", "2", "1", "2"]  # ids without names


def test_draw_boxes_text_readable_on_its_tag():
    # Twenty classes span light tags (tab:orange, olive) and dark ones (tab:blue, purple).
    boxes = torch.tensor([[0.0, 10.0, 5.0, 15.0]]).repeat(20, 1)
    ax = draw_boxes((32, 32), boxes, labels=torch.arange(20))
    text_colors = set()
    for text in ax.texts:
        tag = to_rgb(text.get_bbox_patch().get_facecolor())
        expected = "black" if luminance(tag) > 0.5 else "white"
        assert text.get_color() == expected
        text_colors.add(text.get_color())
    assert text_colors == {"black", "white"}


def test_draw_boxes_without_labels_or_scores_draws_no_text():
    ax = draw_boxes(np.zeros((20, 20, 3)), [[1.0, 1.0, 5.0, 5.0]])
    assert len(ax.patches) == 1 and len(ax.texts) == 0
    assert ax.figure.get_size_inches().tolist() == [5.0, 5.0]


def test_draw_boxes_accepts_half_precision_and_grad_tensors():
    # Predictions straight from a model: bfloat16 boxes, scores that require grad.
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0]], dtype=torch.bfloat16)
    scores = torch.tensor([0.75], requires_grad=True)
    ax = draw_boxes((8, 8), boxes, torch.tensor([1]), scores, NAMES)
    assert rectangles(ax) == [(1.0, 2.0, 5.0, 6.0)]
    assert ax.texts[0].get_text() == "dog 0.75"


@pytest.mark.parametrize("empty", [torch.zeros(0, 4), [], np.zeros((0, 4))])
def test_draw_boxes_empty_draws_nothing(empty):
    ax = draw_boxes(torch.rand(3, 16, 16), empty, labels=[], scores=[], class_names=NAMES)
    assert len(ax.patches) == 0 and len(ax.texts) == 0
    assert ax.get_title() == "0 boxes"


def test_draw_boxes_bad_inputs_are_named():
    box = [[0.0, 0.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="boxes"):
        draw_boxes((8, 8), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="boxes.*xyxy"):
        draw_boxes((8, 8), [[4.0, 0.0, 2.0, 4.0]])  # x2 < x1: not xyxy
    with pytest.raises(ValueError, match="boxes.*NaN"):
        draw_boxes((8, 8), [[0.0, 0.0, float("nan"), 4.0]])
    with pytest.raises(ValueError, match="labels"):
        draw_boxes((8, 8), box, labels=[0, 1])
    with pytest.raises(ValueError, match="labels.*out of range"):
        draw_boxes((8, 8), box, labels=[3], class_names=NAMES)
    with pytest.raises(ValueError, match="labels"):
        draw_boxes((8, 8), box, labels=[0.5])
    with pytest.raises(ValueError, match="scores"):
        draw_boxes((8, 8), box, scores=[0.1, 0.2])


def test_drawing_is_deterministic():
    def render():
        fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
        draw_boxes(torch.linspace(0, 1, 3 * 16 * 16).reshape(3, 16, 16), [[2.0, 3.0, 9.0, 12.0]],
                   labels=[1], scores=[0.5], class_names=NAMES, ax=ax)  # fmt: skip
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()

    np.testing.assert_array_equal(render(), render())


# --- draw_priors -----------------------------------------------------------------------


def grid_points(size: int, stride: float) -> torch.Tensor:
    """Centres ((x + 0.5) s, (y + 0.5) s) of a size x size grid, row-major: (size^2, 2)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], 1)


def test_draw_priors_points_every_and_highlight():
    points = grid_points(10, 32)  # 100 points on a 320 px image
    ax = draw_priors((320, 320), points)
    assert len(scatters(ax)) == 1 and len(scatters(ax)[0].get_offsets()) == 100
    assert ax.get_title() == "100 priors"
    # every=2 with 10 columns: phase ((10 - 1) % 2) // 2 = 0, columns and rows 0, 2, .., 8.
    ax = draw_priors((320, 320), points, every=2, highlight=[1])
    kept, marked = scatters(ax)
    assert len(kept.get_offsets()) == 25
    np.testing.assert_array_equal(np.unique(kept.get_offsets()[:, 0]), [16, 80, 144, 208, 272])
    np.testing.assert_array_equal(marked.get_offsets(), [[48, 16]])  # drawn though not kept
    assert to_rgb(marked.get_facecolor()[0][:3]) == to_rgb("tab:red")
    # A highlighted prior that is also kept is drawn once, highlighted; a mask works too.
    mask = torch.zeros(100, dtype=torch.bool)
    mask[0] = True
    kept, marked = scatters(draw_priors((320, 320), points, every=2, highlight=mask))
    assert len(kept.get_offsets()) == 24 and len(marked.get_offsets()) == 1


def test_draw_priors_boxes_auto_step_keeps_boxes_apart():
    # Grid cells of side 5 x stride: 10 x 10 cells of side 160 px, centres 32 px apart.
    # The automatic step is ceil(160 / 32) = 5: columns and rows 2 and 7, four cells.
    points = grid_points(10, 32)
    cells = torch.cat([points - 80, points + 80], 1)
    ax = draw_priors((320, 320), cells)
    assert len(ax.patches) == 4
    centres = {((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in rectangles(ax)}
    assert centres == {(80.0, 80.0), (240.0, 80.0), (80.0, 240.0), (240.0, 240.0)}
    assert ax.get_title() == "4 of 100 priors (every 5)"


def test_draw_priors_keeps_all_anchors_of_a_location():
    # Three anchors (16, 32, 64 px squares) per location of a 10 x 10 grid, stride 8,
    # laid out location-major: the anchors of one location share a centre.
    points = grid_points(10, 8).repeat_interleave(3, 0)  # (300, 2)
    half = torch.tensor([8.0, 16.0, 32.0]).repeat(100)[:, None]
    anchors = torch.cat([points - half, points + half], 1)
    ax = draw_priors((80, 80), anchors, every=5)
    assert len(ax.patches) == 4 * 3
    assert len(scatters(ax)[0].get_offsets()) == 4 * 3


def test_draw_priors_empty_and_bad_inputs():
    ax = draw_priors((64, 64), torch.zeros(0, 4))
    assert len(ax.patches) == 0 and len(ax.collections) == 0
    with pytest.raises(ValueError, match="priors"):
        draw_priors((64, 64), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="highlight.*range"):
        draw_priors((64, 64), grid_points(2, 32), highlight=[4])
    with pytest.raises(ValueError, match="highlight.*shape"):
        draw_priors((64, 64), grid_points(2, 32), highlight=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="every"):
        draw_priors((64, 64), grid_points(2, 32), every=0)


# --- draw_assignment -------------------------------------------------------------------


def test_draw_assignment_points():
    # Four points; gt 0 takes point 0, gt 1 takes point 1, point 2 is background and
    # point 3 ignored.
    points = torch.tensor([[10.0, 10.0], [50.0, 50.0], [10.0, 50.0], [50.0, 10.0]])
    gt_boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [30.0, 30.0, 64.0, 64.0]])
    gt_index = torch.tensor([0, 1, BACKGROUND, IGNORE])
    ax = draw_assignment((64, 64), points, gt_boxes, gt_index, gt_labels=[2, 2], class_names=NAMES)
    assert rectangles(ax) == [tuple(box) for box in gt_boxes.tolist()]  # point priors: gt only
    background, ignored, first, second = scatters(ax)
    np.testing.assert_array_equal(background.get_offsets(), [[10, 50]])
    np.testing.assert_array_equal(ignored.get_offsets(), [[50, 10]])
    np.testing.assert_array_equal(first.get_offsets(), [[10, 10]])
    np.testing.assert_array_equal(second.get_offsets(), [[50, 50]])
    # Each gt and its positives share the gt's colour, even though both are "car".
    assert (
        tuple(first.get_facecolor()[0][:3]) == class_color(0) == ax.patches[0].get_edgecolor()[:3]
    )
    assert tuple(second.get_facecolor()[0][:3]) == class_color(1)
    assert [text.get_text() for text in ax.texts] == ["car: 1 pos", "car: 1 pos"]
    assert ax.get_title() == "2 positive, 1 ignored of 4 priors"


def test_draw_assignment_box_priors_draw_each_positive():
    # Three 20 px box priors inside one gt, two positive, one background.
    priors = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [20.0, 0.0, 40.0, 20.0], [40.0, 0.0, 60.0, 20.0]]
    )
    gt_boxes = torch.tensor([[0.0, 0.0, 45.0, 25.0]])
    ax = draw_assignment((64, 64), priors, gt_boxes, [0, 0, -1], show_background=False)
    assert len(ax.patches) == 2 + 1  # two positive priors, then the gt box
    assert rectangles(ax)[:2] == [tuple(box) for box in priors[:2].tolist()]
    assert len(scatters(ax)) == 1  # the positives' centres; background hidden
    assert [text.get_text() for text in ax.texts] == ["gt 0: 2 pos"]


def test_draw_assignment_empty_gt_and_empty_priors():
    ax = draw_assignment((32, 32), grid_points(2, 16), torch.zeros(0, 4), torch.full((4,), -1))
    assert len(ax.patches) == 0 and len(ax.texts) == 0
    assert len(scatters(ax)) == 1  # the background only
    ax = draw_assignment((32, 32), torch.zeros(0, 2), [[0.0, 0.0, 8.0, 8.0]], torch.zeros(0))
    assert len(ax.patches) == 1 and len(scatters(ax)) == 0


def test_draw_assignment_bad_gt_index_is_named():
    points, gt_boxes = grid_points(2, 16), torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    with pytest.raises(ValueError, match=r"gt_index.*\(4,\)"):
        draw_assignment((32, 32), points, gt_boxes, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="gt_index: value 1"):
        draw_assignment((32, 32), points, gt_boxes, torch.tensor([0, 1, -1, -1]))  # only gt 0
    with pytest.raises(ValueError, match="gt_index: value -3"):
        draw_assignment((32, 32), points, gt_boxes, torch.tensor([0, -3, -1, -1]))
    with pytest.raises(ValueError, match="gt_boxes"):
        draw_assignment((32, 32), points, torch.zeros(1, 2), torch.zeros(4, dtype=torch.long))


# --- plot_losses -----------------------------------------------------------------------


def loss_log() -> pd.DataFrame:
    iterations = np.arange(10)
    return pd.DataFrame(
        {"iter": iterations, "loss_box": 1.0 / (iterations + 1), "loss_cls": 2.0 - 0.1 * iterations,
         "lr": np.full(10, 0.01)}
    )  # fmt: skip


def test_plot_losses_lines_labels_and_log_scale():
    ax = plot_losses(loss_log(), columns=["loss_box", "loss_cls"], logy=True)
    assert len(ax.lines) == 2
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["loss_box", "loss_cls"]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "iter" and ax.get_ylabel() == "loss"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(10))
    # Default columns: every numeric column but x.
    assert len(plot_losses(loss_log()).lines) == 3


def test_plot_losses_smoothing_equals_a_trailing_mean():
    log = loss_log()
    ax = plot_losses(log, columns=["loss_box"], smooth=3)
    raw, smoothed = ax.lines  # the faint raw curve, then its moving average, one colour
    assert raw.get_color() == smoothed.get_color() and raw.get_alpha() < 1
    values = log["loss_box"].to_numpy()
    expected = [values[max(0, index - 2) : index + 1].mean() for index in range(10)]
    np.testing.assert_allclose(smoothed.get_ydata(), expected)
    assert ax.get_title() == "Training losses (mean of 3)"


def test_plot_losses_skips_missing_values_and_uses_the_index():
    log = pd.DataFrame({"val_loss": [np.nan, 1.0, np.nan, 0.5]}, index=pd.Index([1, 2, 3, 4]))
    ax = plot_losses(log, x=None)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [2, 4])
    assert ax.get_xlabel() == "step"


def test_plot_losses_empty_and_bad_inputs():
    ax = plot_losses(pd.DataFrame({"iter": [], "loss": []}))
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 0
    with pytest.raises(ValueError, match="x: 'step'"):
        plot_losses(loss_log(), x="step")
    with pytest.raises(ValueError, match="columns.*loss_obj"):
        plot_losses(loss_log(), columns=["loss_obj"])
    with pytest.raises(ValueError, match="smooth"):
        plot_losses(loss_log(), smooth=0)
    with pytest.raises(TypeError, match="df"):
        plot_losses({"iter": [0, 1]})


def test_compare_detections_draws_ground_truth_over_detections():
    image = torch.zeros(3, 40, 60)
    target = {"boxes": torch.tensor([[1.0, 2, 20, 30]]), "labels": torch.tensor([1])}
    found = {
        "boxes": torch.tensor([[2.0, 2, 21, 30], [30, 5, 50, 25]]),
        "labels": torch.tensor([1, 0]),
        "scores": torch.tensor([0.9, 0.4]),
    }
    figure = compare_detections([(image, target)] * 2, [found, found], ["a", "b"])
    axes = figure.axes
    assert len(axes) == 4
    assert [ax.get_title() for ax in axes] == ["ground truth", "ground truth"] + [
        "2 detections"
    ] * 2
    assert len(axes[0].patches) == 1 and len(axes[2].patches) == 2
    assert "b 0.90" in [text.get_text() for text in axes[2].texts]
    plt.close(figure)
    with pytest.raises(ValueError, match="as many detections as samples"):
        compare_detections([(image, target)], [])
