# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · YOLOv3: which anchors learn which box
#
# Notebook 10 ended with a network that emits, at every cell of three grids, three
# predictions, one per anchor. Training needs to know, for each ground-truth box,
# which of those thousands of predictions must learn it: its *positives*. YOLOv3's
# answer is short. Compare the box with every anchor by *shape* only, as if both sat on
# the same centre; every anchor whose width-height IoU exceeds `iou_t` takes the box,
# in the cell that holds the box centre, on its own layer. This notebook derives that
# rule by hand, applies it to a real image of the shapes set, and shows what the one
# hyperparameter, `iou_t`, changes.
#
# **Learning goals**
#
# 1. Compute the width-height IoU of a box and an anchor by hand, and explain why
#    YOLOv3 matches on shape alone.
# 2. Find the positives of a box: which layers, which anchors, which cell, and the box
#    targets they learn, in grid units.
# 3. Read the per-layer output of `detutils.assigners.build_yolov3_targets`.
# 4. Predict what `iou_t` does to the number of positives per box, and when a box gets
#    none at all.
#
# **Prerequisites**: notebook 02 (the YOLO coder), notebook 10 (heads, strides and
# anchors of YOLOv3).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display
from ipywidgets import FloatSlider, interact

from detutils import boxes as box_ops
from detutils.assigners import BACKGROUND, build_yolov3_targets, pad_ground_truth, wh_iou
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.models.darknet import read_darknet_cfg
from detutils.models.yolov3 import CFG_DIR
from detutils.viz import class_color, draw_assignment, draw_boxes


def load_sample(index, split="val", size=320):
    """One image of the shapes set with its boxes (M, 4) xyxy px and labels (M,)."""
    image, _, objects = render_sample(seed=0, split=split, index=index, size=size)
    boxes = [obj["bbox"] for obj in objects]
    gt_boxes = box_ops.xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    gt_labels = torch.tensor([obj["label"] for obj in objects], dtype=torch.long)
    return image, gt_boxes, gt_labels


# %% [markdown]
# ## 1. An image, its boxes, and YOLOv3's anchors
#
# The image of notebook 02: 320 × 320 pixels, seven objects from 28 px to 245 px. At
# 320 px YOLOv3's three heads have grids of 10, 20 and 40 cells a side. The nine
# anchors come from the cfg (`anchors=` lists all nine, `mask=` picks each head's
# three); they were found by k-means on COCO's box sizes (YOLOv3 paper, section 2.3),
# and the course keeps them as they are.

# %%
image, gt_boxes, gt_labels = load_sample(0)
image_size = 320
gt_sizes = gt_boxes[:, 2:] - gt_boxes[:, :2]  # (M, 2) w, h px
box_names = [
    f"g{index} {CLASS_NAMES[label]} {w:.0f}x{h:.0f}"
    for index, (label, (w, h)) in enumerate(zip(gt_labels.tolist(), gt_sizes.tolist(), strict=True))
]
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES)
plt.show()

# %%
yolo_blocks = [block for block in read_darknet_cfg(CFG_DIR / "yolov3.cfg") if block.kind == "yolo"]
all_anchors = torch.tensor(yolo_blocks[0].get_floats("anchors")).view(-1, 2)  # (9, 2) w, h px
masks = [block.get_ints("mask") for block in yolo_blocks]
strides = [32, 16, 8]
feature_sizes = [(image_size // stride, image_size // stride) for stride in strides]
layer_anchors = [all_anchors[mask] for mask in masks]  # one (3, 2) tensor per layer
pd.DataFrame(
    {
        "stride": strides,
        "grid": [f"{h} x {w}" for h, w in feature_sizes],
        "mask": masks,
        "anchors (px)": [
            ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors.tolist()) for anchors in layer_anchors
        ],
    }
)

# %% [markdown]
# ## 2. Width-height IoU
#
# Put the box and the anchor on the same centre. Their intersection is then
# `min(w_box, w_anchor) × min(h_box, h_anchor)`, and
#
# $$\mathrm{IoU}_{wh} = \frac{I}{w_1 h_1 + w_2 h_2 - I},\qquad I = \min(w_1, w_2)\,\min(h_1, h_2).$$
#
# Position does not enter: whichever anchor is chosen, the prediction will sit in the
# cell of the box centre anyway, so only the shape decides which anchor is a good
# starting point. A 40 × 20 box and a 30 × 30 anchor: intersection 30 × 20 = 600,
# union 800 + 900 − 600 = 1100, IoU 6/11.


# %%
def wh_iou_inline(wh1, wh2):
    """Pairwise width-height IoU of (N, 2) and (M, 2) sizes -> (N, M)."""
    inter = torch.minimum(wh1[:, None], wh2[None]).prod(dim=-1)  # (N, M)
    union = wh1.prod(dim=-1)[:, None] + wh2.prod(dim=-1)[None] - inter  # (N, M)
    return inter / union


value = wh_iou_inline(torch.tensor([[40.0, 20.0]]), torch.tensor([[30.0, 30.0]]))
torch.testing.assert_close(value, torch.tensor([[6 / 11]]))
print(f"40x20 against 30x30: {value.item():.4f}")

# %% [markdown]
# Every anchor against every box of the image. Element `k, j` is the wh-IoU of anchor
# `k` and box `j`; from now on the function is `detutils.assigners.wh_iou`. It does not
# care about the unit: pixels or grid cells (both divided by the stride) give the same
# matrix.

# %%
iou_matrix = wh_iou_inline(all_anchors, gt_sizes)  # (9, M)
torch.testing.assert_close(iou_matrix, wh_iou(all_anchors, gt_sizes))
torch.testing.assert_close(iou_matrix, wh_iou(all_anchors / 32, gt_sizes / 32))
anchor_names = [
    f"a{k} {w:.0f}x{h:.0f} (s{strides[layer]})"
    for layer, mask in enumerate(masks)
    for k, (w, h) in zip(mask, all_anchors[mask].tolist(), strict=True)
]
order = [k for mask in masks for k in mask]  # anchors grouped by layer, stride 32 first
pd.DataFrame(iou_matrix[order].numpy(), index=anchor_names, columns=box_names)

# %% [markdown]
# Drawn on a common centre for box g4 (73 × 67): the anchors whose wh-IoU exceeds
# 0.2 in colour, the others grey. The largest anchors dwarf the box and the smallest
# fit inside it; both give a low IoU.

# %%
box_index = 4


def centred_rectangle(width, height, **style):
    """A width x height rectangle centred on (0, 0)."""
    return plt.Rectangle((-width / 2, -height / 2), width, height, fill=False, **style)


fig, ax = plt.subplots(figsize=(5, 5))
ax.add_patch(centred_rectangle(*gt_sizes[box_index].tolist(), linewidth=3, label=box_names[4]))
colours = iter(["C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "C0"])
grey_label = "wh-IoU <= 0.2"
for k, (anchor_w, anchor_h) in enumerate(all_anchors.tolist()):
    iou = iou_matrix[k, box_index].item()
    if iou > 0.2:
        label = f"a{k} {anchor_w:.0f}x{anchor_h:.0f}: {iou:.2f}"
        style = {"edgecolor": next(colours), "linewidth": 1.5}
    else:
        label, grey_label = grey_label, None  # one legend entry for all grey anchors
        style = {"edgecolor": "0.7", "linestyle": "--"}
    ax.add_patch(centred_rectangle(anchor_w, anchor_h, label=label, **style))
ax.set_xlim(-200, 200)
ax.set_ylim(200, -200)
ax.set_aspect("equal")
ax.set_xlabel("x - centre (px)")
ax.set_ylabel("y - centre (px)")
ax.legend(fontsize=8, loc="upper right")
ax.set_title("box g4 and the 9 anchors, on one centre")
plt.show()

# %% [markdown]
# ## 3. From matches to targets
#
# For each layer (stride `s`, grid `H × W`, three anchors):
#
# 1. Divide boxes and anchors by `s`: grid units.
# 2. Every (anchor, box) pair with wh-IoU > `iou_t` is a positive, on this layer.
# 3. Its cell is the integer part of the box centre: `gx = floor(cx / s)`,
#    `gy = floor(cy / s)`.
# 4. Its targets: the centre's offset inside the cell, `cx / s − gx` in [0, 1), and the
#    box width and height in grid units. The anchor size goes along, for the loss.
#
# A box is matched on every layer independently, so it can have positives on one
# layer, on several, or on none. The rule with plain loops:


# %%
def targets_by_hand(gt_boxes, anchors, stride, iou_t=0.2):
    """Positives of one layer: (gt, anchor, gy, gx, x offset, y offset, w, h) rows."""
    rows = []
    for anchor_index, (anchor_w, anchor_h) in enumerate((anchors / stride).tolist()):
        for gt_index, (x1, y1, x2, y2) in enumerate((gt_boxes / stride).tolist()):
            width, height = x2 - x1, y2 - y1
            inter = min(width, anchor_w) * min(height, anchor_h)
            if inter / (width * height + anchor_w * anchor_h - inter) <= iou_t:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            gx, gy = int(cx), int(cy)  # floor, centres are >= 0
            rows.append([gt_index, anchor_index, gy, gx, cx - gx, cy - gy, width, height])
    return rows


# %% [markdown]
# `build_yolov3_targets` does the same for a whole padded batch at once
# (`gt_boxes (B, M, 4)`, `gt_mask (B, M)`) and returns one `YOLOv3Targets` per layer:
# `image, anchor, gy, gx, gt_index` (n,) and `box` (n, 4), `labels` (n,),
# `anchor_wh` (n, 2) for the n positives of that layer, anchor by anchor, as above.

# %%
gt_mask = torch.ones(1, len(gt_boxes), dtype=torch.bool)
targets = build_yolov3_targets(
    gt_boxes[None], gt_labels[None], gt_mask, layer_anchors, strides, feature_sizes, iou_t=0.2
)
for layer, (target, stride) in enumerate(zip(targets, strides, strict=True)):
    by_hand = torch.tensor(targets_by_hand(gt_boxes, layer_anchors[layer], stride))
    indices = torch.stack([target.gt_index, target.anchor, target.gy, target.gx], dim=1)
    torch.testing.assert_close(indices, by_hand[:, :4].long())
    torch.testing.assert_close(target.box, by_hand[:, 4:].float())
    torch.testing.assert_close(target.anchor_wh, layer_anchors[layer][target.anchor] / stride)
print("positives per layer:", [len(target.image) for target in targets])

# %% [markdown]
# The positives of each layer, one row each: the box, the anchor and its wh-IoU, the
# cell, and the four numbers the box loss will aim at (notebook 12).

# %%
for layer, (target, stride) in enumerate(zip(targets, strides, strict=True)):
    anchor_sizes = layer_anchors[layer][target.anchor]
    table = pd.DataFrame(
        {
            "box": [box_names[m] for m in target.gt_index.tolist()],
            "anchor": [
                f"a{masks[layer][k]} {w:.0f}x{h:.0f}"
                for k, (w, h) in zip(target.anchor.tolist(), anchor_sizes.tolist(), strict=True)
            ],
            "wh-IoU": wh_iou(anchor_sizes, gt_sizes[target.gt_index]).diagonal().tolist(),
            "cell (gy, gx)": list(zip(target.gy.tolist(), target.gx.tolist(), strict=True)),
            "x offset": target.box[:, 0].tolist(),
            "y offset": target.box[:, 1].tolist(),
            "w (cells)": target.box[:, 2].tolist(),
            "h (cells)": target.box[:, 3].tolist(),
        }
    )
    print(f"stride {stride}: {len(table)} positives")
    display(table)

# %% [markdown]
# Drawn on the image, one panel per layer: each box in its own colour with its number
# of positives on that layer, the cells of its positives filled, and the matching
# anchors drawn centred on those cells.


# %%
def anchor_boxes_at_cells(anchors, stride, height, width):
    """(K H W, 4) xyxy px: each of the K anchors on every cell, anchor-major, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = (torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5) * stride  # (H W, 2)
    half = anchors[:, None, :] / 2  # (K, 1, 2)
    return torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)  # (K H W, 4)


faded = 255 - ((255 - image) * 0.4).astype("uint8")  # a pale image, so the overlays stand out
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
for layer, (ax, target, stride) in enumerate(zip(axes, targets, strides, strict=True)):
    height, width = feature_sizes[layer]
    priors = anchor_boxes_at_cells(layer_anchors[layer], stride, height, width)
    gt_index = torch.full((len(priors),), BACKGROUND)
    flat = (target.anchor * height + target.gy) * width + target.gx  # (n,) into priors
    gt_index[flat] = target.gt_index
    draw_assignment(faded, priors, gt_boxes, gt_index, ax=ax, show_background=False)
    for m, gy, gx in torch.stack([target.gt_index, target.gy, target.gx], dim=1).tolist():
        cell = plt.Rectangle((gx * stride, gy * stride), stride, stride, alpha=0.5)
        cell.set_color(class_color(m))
        ax.add_patch(cell)
    ax.set_xlim(0, image_size)
    ax.set_ylim(image_size, 0)
    ax.set_title(f"stride {stride}: {len(target.image)} positives")
plt.show()

# %% [markdown]
# The count per box and layer. Large boxes are learnt on the coarse stride-32 grid,
# small ones on the fine stride-8 grid, and boxes of middle size on two layers at
# once: the layers overlap in the shapes they accept.

# %%
counts = torch.stack(
    [torch.bincount(target.gt_index, minlength=len(gt_boxes)) for target in targets], dim=1
)  # (M, 3)
counts_table = pd.DataFrame(
    counts.numpy(), index=box_names, columns=[f"stride {stride}" for stride in strides]
).assign(total=lambda df: df.sum(axis=1))
counts_table

# %%
assert (counts.sum(dim=1) >= 1).all()  # every box of this image is learnt somewhere
assert counts[0].tolist() == [3, 0, 0]  # the 245 x 203 star: stride 32 only
assert counts[6, 0] == 0 and counts[6, 2] > 0  # the 28 x 28 star: not on the coarse grid
# No two positives of a layer share an (anchor, cell): each prediction learns one box.
for target in targets:
    cells = torch.stack([target.anchor, target.gy, target.gx], dim=1)
    assert len(cells.unique(dim=0)) == len(cells)

# %% [markdown]
# Two boxes can land on the same anchor of the same cell (their centres share a cell
# and their shapes suit one anchor); both stay in the targets, and the loss decides
# what the shared objectness learns (notebook 12). It does not happen in this image.
#
# ## 4. What `iou_t` changes
#
# `iou_t` is the one knob of the rule (0.2 in the reference's `hyp`). At 0 every anchor
# matches every box: nine positives per box, three per layer, however poor the shape
# match. Raising it keeps only the anchors whose shape is close to the box, and past
# some value a box matches no anchor at all and is never learnt. Positives per box of
# this image:

# %%
thresholds = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def positives_per_box(gt_boxes, gt_labels, iou_t):
    """(M,) number of positives of each box, over all layers."""
    layer_targets = build_yolov3_targets(
        gt_boxes[None],
        gt_labels[None],
        torch.ones(1, len(gt_boxes), dtype=torch.bool),
        layer_anchors,
        strides,
        feature_sizes,
        iou_t=iou_t,
    )
    return sum(torch.bincount(target.gt_index, minlength=len(gt_boxes)) for target in layer_targets)


sweep = pd.DataFrame(
    {f"iou_t {t}": positives_per_box(gt_boxes, gt_labels, t).numpy() for t in thresholds},
    index=box_names,
)
sweep

# %%
assert (sweep["iou_t 0.0"] == 9).all()
assert (sweep.diff(axis=1).iloc[:, 1:] <= 0).all().all()  # never more positives as iou_t grows
print("boxes without a positive at iou_t 0.6:", list(sweep.index[sweep["iou_t 0.6"] == 0]))

# %% [markdown]
# Per layer, at the reference's 0.2: the large boxes are learnt on stride 32, the
# middle ones on strides 32 and 16, the two small stars on 16 and 8. Raising `iou_t`
# takes positives away layer by layer; move the slider of the second figure to see
# which boxes go first.


# %%
def positives_per_box_and_layer(iou_t):
    """(M, 3) positives of each box of the image on each layer (stride 32, 16, 8)."""
    layer_targets = build_yolov3_targets(
        gt_boxes[None], gt_labels[None], gt_mask, layer_anchors, strides, feature_sizes,
        iou_t=iou_t,
    )  # fmt: skip
    return torch.stack(
        [torch.bincount(target.gt_index, minlength=len(gt_boxes)) for target in layer_targets],
        dim=1,
    )


def plot_positives(iou_t=0.2):
    """Positives per box of the image, stacked by layer, for one iou_t."""
    counts = positives_per_box_and_layer(iou_t)  # (M, 3)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    left = torch.zeros(len(gt_boxes), dtype=torch.long)
    for layer, stride in enumerate(strides):
        ax.barh(box_names, counts[:, layer], left=left, label=f"stride {stride}")
        left = left + counts[:, layer]
    ax.set_xlim(0, 9)
    ax.invert_yaxis()
    ax.set_xlabel("positives")
    ax.legend(fontsize=8, loc="lower right")
    lost = int((counts.sum(dim=1) == 0).sum())
    ax.set_title(f"iou_t = {iou_t:.2f}: {int(counts.sum())} positives, {lost} boxes with none")
    plt.show()


plot_positives(0.2)

# %%
# NBVAL_IGNORE_OUTPUT
# (an interactive version of the figure above: move the slider; the figure above is
# the one the tests check)
_ = interact(plot_positives, iou_t=FloatSlider(value=0.2, min=0.0, max=0.8, step=0.05))

# %% [markdown]
# The same count over the first 100 images of the validation split, as one padded
# batch (`pad_ground_truth`, the way `YOLOv3.loss` feeds a batch to
# `build_yolov3_targets`); a positive's box is `(image, gt_index)`:

# %%
samples = [load_sample(index)[1:] for index in range(100)]
batch_boxes, batch_labels, batch_mask = pad_ground_truth(
    [{"boxes": boxes, "labels": labels} for boxes, labels in samples]
)
num_images, max_boxes = batch_mask.shape
rows = []
for iou_t in thresholds:
    layer_targets = build_yolov3_targets(
        batch_boxes, batch_labels, batch_mask, layer_anchors, strides, feature_sizes, iou_t=iou_t
    )
    per_box = sum(
        torch.bincount(t.image * max_boxes + t.gt_index, minlength=num_images * max_boxes)
        for t in layer_targets
    )[batch_mask.flatten()]  # (number of real boxes,)
    rows.append(
        {
            "iou_t": iou_t,
            "boxes": len(per_box),
            "mean positives per box": per_box.float().mean().item(),
            "boxes with none (%)": 100 * (per_box == 0).float().mean().item(),
            "most positives": per_box.max().item(),
        }
    )
sample_sweep = pd.DataFrame(rows)
sample_sweep

# %%
fig, ax_mean = plt.subplots(figsize=(6, 3.2))
ax_mean.plot(sample_sweep["iou_t"], sample_sweep["mean positives per box"], "o-", label="mean")
ax_mean.set_xlabel("iou_t")
ax_mean.set_ylabel("positives per box")
ax_none = ax_mean.twinx()
ax_none.plot(sample_sweep["iou_t"], sample_sweep["boxes with none (%)"], "s--", color="C3")
ax_none.set_ylabel("boxes with no positive (%)", color="C3")
ax_mean.axvline(0.2, color="0.6", linewidth=1)
ax_mean.set_title("positives per box against iou_t (100 images)")
plt.show()

# %%
at = sample_sweep.set_index("iou_t")
assert at.loc[0.0, "mean positives per box"] == 9
assert at["mean positives per box"].is_monotonic_decreasing
assert at.loc[0.2, "boxes with none (%)"] == 0 and at.loc[0.5, "boxes with none (%)"] > 5

# %% [markdown]
# At the reference's 0.2, a box has between three and four positives on average and
# none is lost; at 0.5 a box has barely more than one, and one in twelve is never
# learnt. A low threshold gives more positives, but some of them start from an anchor
# of a poor shape and have to stretch `exp(t_wh)` far; a high one trains few, good
# matches and drops the boxes no anchor fits well. (Later YOLOs replace the IoU test by
# a ratio test on width and height, and add neighbouring cells as positives.)
#
# ## Recap
#
# - YOLOv3 matches boxes to anchors by shape: the wh-IoU, both on one centre.
# - Every anchor, on every layer, whose wh-IoU with a box exceeds `iou_t` is a positive
#   of that box, in the cell that holds the box centre.
# - Targets, in grid units: the centre's offset in the cell and the box size; the
#   anchor size travels along for the loss.
# - `build_yolov3_targets` returns, per layer, `image, anchor, gy, gx` indices into
#   the `(B, 3, H, W, 5 + C)` output, with `box`, `labels`, `anchor_wh`, `gt_index`.
# - `iou_t` trades the number of positives for the quality of their anchors; at 0.2
#   the shapes set keeps three to four positives per box and loses almost none.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** A box of height 30 px against the square anchor 30 × 30. For which
# widths is its wh-IoU above 0.2? Derive the interval (two cases: narrower or wider
# than the anchor) and assign its ends, in pixels, to `width_low` and `width_high`
# (the wh-IoU exceeds 0.2 for `width_low < w < width_high`); then look at `wh_iou`
# just inside and just outside both ends.

# %% tags=["solution"]
width_low = width_high = None  # px, numbers
### BEGIN SOLUTION
# w <= 30: IoU = 30 w / 900 = w / 30 > 0.2  =>  w > 6.
# w >= 30: IoU = 900 / (30 w) = 30 / w > 0.2  =>  w < 150.
width_low, width_high = 6.0, 150.0
anchor = torch.tensor([[30.0, 30.0]])
widths = torch.tensor([width_low - 0.1, width_low + 0.1, width_high - 0.1, width_high + 0.1])
values = wh_iou(anchor, torch.stack([widths, torch.full_like(widths, 30.0)], dim=1))[0]
print("wh-IoU just outside, inside, inside, outside:", [f"{v:.4f}" for v in values.tolist()])
### END SOLUTION
print(f"wh-IoU > 0.2 for {width_low} < w < {width_high}")

# %% tags=["check"]
check_close(
    "width_low", width_low, 6.0,
    hint="narrower than the anchor: intersection 30 w, union 900, so wh-IoU = w / 30; "
    "solve w / 30 = 0.2.",
)  # fmt: skip
check_close(
    "width_high", width_high, 150.0,
    hint="wider than the anchor: intersection 900 (the whole anchor), union 30 w, so "
    "wh-IoU = 30 / w; solve 30 / w = 0.2.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
ends = torch.tensor([width_low - 0.1, width_low + 0.1, width_high - 0.1, width_high + 0.1])
above = wh_iou(torch.tensor([[30.0, 30.0]]), torch.stack([ends, torch.full_like(ends, 30.0)], 1))
check_equal(
    "wh-IoU > 0.2 just outside and inside the ends", (above[0] > 0.2).tolist(),
    [False, True, True, False], hint="the interval is open: the ends give exactly 0.2",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** What is the smallest square box YOLOv3 still learns at `iou_t = 0.2`?
# Only the smallest anchor, 10 × 13, can match a tiny box. Derive the side and assign
# it to `smallest_side` (px); then count, with `positives_per_box` (section 4, which
# calls `build_yolov3_targets`), the positives of a square 0.05 px smaller and of one
# 0.05 px larger: `positives_below` and `positives_above` (integers).

# %% tags=["solution"]
smallest_side = None  # px
positives_below = positives_above = None  # int each
### BEGIN SOLUTION
# side d < 10: intersection d^2, union 130  =>  d^2 / 130 > 0.2  =>  d > sqrt(26) = 5.099.
smallest_side = 26**0.5
counts_near = []
for test_side in (smallest_side - 0.05, smallest_side + 0.05):
    square = torch.tensor([[100.0, 100.0, 100.0 + test_side, 100.0 + test_side]])
    counts_near.append(positives_per_box(square, torch.tensor([0]), 0.2).item())
positives_below, positives_above = counts_near
### END SOLUTION
if smallest_side is not None:
    print(f"smallest side: {smallest_side:.4g} px")
print(f"positives just below and just above: {positives_below}, {positives_above}")

# %% tags=["check"]
check_close(
    "smallest_side", smallest_side, 26**0.5,
    hint="a square of side d < 10 lies inside the 10 x 13 anchor: intersection d^2, union "
    "10 * 13 = 130; solve d^2 / 130 = 0.2.",
)  # fmt: skip
check_equal(
    "positives_below", positives_below, 0,
    hint="below the smallest side no anchor of any layer has a wh-IoU above 0.2: no positive.",
)  # fmt: skip
check_equal(
    "positives_above", positives_above, 1,
    hint="just above it only the 10 x 13 anchor (stride 8) matches: one positive. Use "
    "positives_per_box(square (1, 4) xyxy, torch.tensor([0]), 0.2).item().",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A 16 × 16 box centred exactly on a cell corner, at (32, 32): which
# cell takes it on each layer, and what is its centre offset? Assign `corner_cells`,
# the `(gy, gx)` cell on each layer as a `(3, 2)` list or tensor (stride 32, 16, 8),
# and `corner_offset`, the `(x, y)` offset of the centre in its cell (the same on every
# layer). Confirm with `build_yolov3_targets` at `iou_t = 0` (so that every layer has
# positives); the check does the same.

# %% tags=["solution"]
corner_box = torch.tensor([[[24.0, 24.0, 40.0, 40.0]]])  # (B, M, 4) = (1, 1, 4)
corner_cells = None  # (3, 2): (gy, gx) on the layers of stride 32, 16, 8
corner_offset = None  # (2,): (x, y) offset in the cell
### BEGIN SOLUTION
# floor(32 / s): stride 32 -> cell 1, stride 16 -> cell 2, stride 8 -> cell 4; offset 0.
corner_cells = [(32 // stride, 32 // stride) for stride in strides]
corner_offset = [0.0, 0.0]
corner_targets = build_yolov3_targets(
    corner_box,
    torch.tensor([[0]]),
    torch.ones(1, 1, dtype=torch.bool),
    layer_anchors,
    strides,
    feature_sizes,
    iou_t=0.0,
)
print("cells:", [(target.gy[0].item(), target.gx[0].item()) for target in corner_targets])
### END SOLUTION
print(f"cells {corner_cells}, offset {corner_offset}")

# %% tags=["check"]
at_zero = build_yolov3_targets(
    corner_box, torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool), layer_anchors,
    strides, feature_sizes, iou_t=0.0,
)  # fmt: skip
expected_cells = torch.stack([torch.stack([t.gy[0], t.gx[0]]) for t in at_zero])  # (3, 2)
check_close(
    "corner_cells", corner_cells, expected_cells,
    hint="the cell is (floor(cy / s), floor(cx / s)) with the centre (32, 32) and s = 32, "
    "16, 8; a centre on a corner belongs to the cell below and to the right of it.",
)  # fmt: skip
for target, stride in zip(at_zero, strides, strict=True):
    check_close(
        f"corner_offset (stride {stride})", corner_offset, target.box[0, :2],
        hint="the offset is centre / s - cell, in [0, 1): here the centre is the cell's corner.",
    )  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Put this image and the next one of the split in one batch with
# `detutils.assigners.pad_ground_truth` (the images hold different numbers of boxes,
# so one is padded): assign its three results to `pair_boxes` `(2, M, 4)`,
# `pair_labels` `(2, M)` and `pair_mask` `(2, M)`, and the targets of the batch (the
# default `iou_t`) to `pair_targets`, one `YOLOv3Targets` per layer. The check verifies
# that the batch gives the second image exactly the positives it gets alone, with
# `image` = 1, and that no padded entry becomes a positive.

# %% tags=["solution"]
_, boxes_1, labels_1 = load_sample(1)  # the second image: (M1, 4) xyxy px and (M1,)
pair_boxes = pair_labels = pair_mask = None  # (2, M, 4), (2, M), (2, M)
pair_targets = None  # list of 3 YOLOv3Targets
### BEGIN SOLUTION
pair_boxes, pair_labels, pair_mask = pad_ground_truth(
    [{"boxes": gt_boxes, "labels": gt_labels}, {"boxes": boxes_1, "labels": labels_1}]
)
pair_targets = build_yolov3_targets(
    pair_boxes, pair_labels, pair_mask, layer_anchors, strides, feature_sizes
)
### END SOLUTION
if pair_mask is not None:
    print("padded:", tuple(pair_boxes.shape), "real boxes per image:", pair_mask.sum(1).tolist())

# %% tags=["check"]
check_true(
    pair_mask is not None and pair_targets is not None,
    "`pair_mask` or `pair_targets` is still None: assign the padded batch and its targets.",
    hint="pad_ground_truth([{'boxes': ..., 'labels': ...}, {...}]) returns boxes, labels, "
    "mask; pass all three to build_yolov3_targets with layer_anchors, strides, feature_sizes.",
)  # fmt: skip
check_close(
    "pair_mask.sum(1)", pair_mask.sum(1), [len(gt_boxes), len(boxes_1)],
    hint="the mask is True for the real boxes of each image, False for the padding.",
)  # fmt: skip
check_equal(
    "len(pair_targets)", len(pair_targets), 3, hint="one YOLOv3Targets per layer"
)  # fmt: skip
alone = build_yolov3_targets(
    boxes_1[None], labels_1[None], torch.ones(1, len(boxes_1), dtype=torch.bool),
    layer_anchors, strides, feature_sizes,
)  # fmt: skip
for layer, (in_batch, single) in enumerate(zip(pair_targets, alone, strict=True)):
    second = in_batch.image == 1
    for name in ("anchor", "gy", "gx", "box", "labels", "gt_index"):
        check_close(
            f"pair_targets[{layer}].{name} of image 1", getattr(in_batch, name)[second],
            getattr(single, name),
            hint="image 1 of the batch gets what it gets alone: same anchors, cells, boxes; "
            "build the targets from the padded batch with the default iou_t.",
        )  # fmt: skip
    check_true(
        bool(pair_mask[in_batch.image, in_batch.gt_index].all()),
        f"layer {layer}: a padded entry of the batch became a positive.",
        hint="pass pair_mask as gt_mask: build_yolov3_targets skips the entries it marks False.",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
for layer, (in_batch, single) in enumerate(zip(pair_targets, targets, strict=True)):
    first = in_batch.image == 0  # image 0 is the image of sections 1-3
    for name in ("anchor", "gy", "gx", "box", "labels", "gt_index"):
        check_close(
            f"pair_targets[{layer}].{name} of image 0", getattr(in_batch, name)[first],
            getattr(single, name), hint="image 0 of the batch keeps the targets of section 3",
        )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - J. Redmon and A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018, section 2.1
#   (one anchor per box in the paper; the PyTorch port keeps every anchor above
#   `iou_t`), <https://arxiv.org/abs/1804.02767>
# - ultralytics/yolov3, archive branch: `utils/utils.py` `wh_iou` and `build_targets`,
#   `train.py` `hyp['iou_t']`, <https://github.com/ultralytics/yolov3/tree/archive>
# - J. Redmon and A. Farhadi, *YOLO9000: Better, Faster, Stronger*, CVPR 2017 (anchors
#   from k-means on box sizes, the sigmoid-offset coder), <https://arxiv.org/abs/1612.08242>
# - H. Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019 (the box
#   loss these targets feed, notebook 12), <https://arxiv.org/abs/1902.09630>
