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
# # 12 · YOLOv3: the loss, term by term
#
# Notebook 11 told every ground-truth box which predictions must learn it. The loss
# now says *what* they learn, and what every other prediction learns. YOLOv3's loss
# (in the PyTorch port this course follows) has three terms: a GIoU box loss at the
# positives, a binary cross-entropy (BCE) objectness loss over every prediction, and a
# BCE class loss at the positives. This notebook computes each term by hand, first on
# a prediction small enough to follow with pen and paper, then on a real image, checks
# both against `detutils.losses.yolov3_loss`, and shows what the objectness ratio `gr`
# and the three gains do.
#
# **Learning goals**
#
# 1. Write the box, objectness and class terms of the YOLOv3 loss and compute each by
#    hand for a small prediction.
# 2. Explain how the terms are averaged (per layer, over positives, cells or entries)
#    and summed over layers.
# 3. Say what `gr` changes: an objectness target of 1, or the GIoU of the prediction.
# 4. Read the gains as weights that balance three terms of very different sizes, and
#    see their effect on the gradient the network receives.
#
# **Prerequisites**: notebook 01 (GIoU), notebook 10 (raw outputs and decoding),
# notebook 11 (targets); binary cross-entropy.
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup, significant

device = setup()["device"]

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from ipywidgets import FloatSlider, interact

from detutils import boxes as box_ops
from detutils.assigners import build_yolov3_targets
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses import yolov3_loss
from detutils.models.yolov3 import YOLOv3Config, build_yolov3
from detutils.trace import trace

GAINS = {"box": 3.54, "obj": 64.3, "cls": 37.4}  # the reference's hyp giou, obj, cls


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def bce(logit, target):
    """Binary cross-entropy of one logit: -t log s(x) - (1 - t) log(1 - s(x))."""
    return softplus(logit) - target * logit


# %% [markdown]
# ## 1. The three terms
#
# For each YOLO layer with `n` positives (from `build_yolov3_targets`), raw output
# `p` of shape `(B, K, H, W, 5 + C)` (K = 3 anchors per cell), and positive `i` at
# `(image, anchor, gy, gx)`:
#
# - **box**: the predicted box in grid units, relative to the cell's corner, centre
#   `sigmoid(t_xy)` and size `exp(t_wh) · anchor`, against the target box (offset in
#   the cell, size): $\frac{1}{n}\sum_i \big(1 - \mathrm{GIoU}_i\big)$.
# - **obj**: BCE with logits of the objectness channel against a target that is 0
#   everywhere except at the positives, where it is $(1 - g_r) + g_r\,\max(\mathrm{GIoU}_i,
#   0)$; averaged over all `B · K · H · W` predictions of the layer.
# - **cls**: BCE with logits of the C class logits against the one-hot label, averaged
#   over the `n · C` entries (only when C > 1: a one-class model has nothing to learn).
#
# Each term is summed over the layers and multiplied by its gain; the loss is the sum
# of the three. The BCE of a logit `x` and a target `t` is
# $-t\log\sigma(x) - (1-t)\log(1-\sigma(x)) = \mathrm{softplus}(x) - t\,x$, the form
# `bce` above uses.
#
# ## 2. One positive, by hand
#
# The smallest case with all three terms: one image 16 px high and 24 px wide, one
# layer of stride 8 (a 2 × 3 grid), one anchor of 8 × 8 pixels (1 × 1 cell), two
# classes, and one box of class 1, 16 × 8 pixels, centred at (12, 4). Its centre is in
# cell (gy 0, gx 1) at offset (0.5, 0.5); in grid units it is 2 × 1; its wh-IoU with
# the anchor is 1/2, so it is a positive.

# %%
small_targets = build_yolov3_targets(
    gt_boxes=torch.tensor([[[4.0, 0.0, 20.0, 8.0]]]),
    gt_labels=torch.tensor([[1]]),
    gt_mask=torch.tensor([[True]]),
    anchors=[torch.tensor([[8.0, 8.0]])],
    strides=[8],
    feature_sizes=[(2, 3)],
)
target = small_targets[0]
print("cell:", target.gy.tolist(), target.gx.tolist(), "box:", target.box.tolist())
print("anchor (cells):", target.anchor_wh.tolist(), "label:", target.labels.tolist())

# %% [markdown]
# A prediction: every output 0, except the objectness logit of the positive cell,
# 2, and its class-1 logit, 2.
#
# - box: `t = 0` decodes to centre (0.5, 0.5), size 1 × 1: the box `[0, 0, 1, 1]` in
#   the cell. The target is `[-0.5, 0, 1.5, 1]`. Intersection 1, union 2, and the
#   enclosing box is the target itself (area 2): GIoU = 1/2, box term 1/2.
# - obj: target 1/2 at the positive (`gr = 1`: the GIoU), 0 at the five other cells.
#   With logit 0, BCE is log 2 whatever the target; at the positive BCE(2, 1/2).
# - cls: logits (0, 2) against the one-hot (0, 1): BCE(0, 0) and BCE(2, 1), mean of 2.

# %%
small_raw = torch.zeros(1, 1, 2, 3, 7)  # (B, K, H, W, 5 + C), K = 1
small_raw[0, 0, 0, 1, 4] = 2.0  # objectness logit of the positive
small_raw[0, 0, 0, 1, 6] = 2.0  # its class-1 logit
giou = 0.5
box_by_hand = 1 - giou
obj_by_hand = (5 * bce(0.0, 0.0) + bce(2.0, giou)) / 6
cls_by_hand = (bce(0.0, 0.0) + bce(2.0, 1.0)) / 2
by_hand = {
    "box": GAINS["box"] * box_by_hand,
    "obj": GAINS["obj"] * obj_by_hand,
    "cls": GAINS["cls"] * cls_by_hand,
}
by_hand["loss"] = sum(by_hand.values())
losses = yolov3_loss([small_raw], small_targets)  # float32: the 4th decimal may differ
for name, value in by_hand.items():
    torch.testing.assert_close(losses[name], torch.tensor(value))
pd.DataFrame(
    {
        "by hand, no gain": [box_by_hand, obj_by_hand, cls_by_hand, math.nan],
        "gain": [GAINS["box"], GAINS["obj"], GAINS["cls"], math.nan],
        "by hand": list(by_hand.values()),
        "yolov3_loss": [losses[name].item() for name in by_hand],
    },
    index=list(by_hand),
)

# %% [markdown]
# ## 3. The loss of a real image
#
# The image and targets of notebook 11 (320 px, seven boxes, six classes), and a
# prediction shaped like the output of a freshly built YOLOv3 (notebook 10): box
# outputs near 0, objectness logits near the prior `log(8 / (640 / s)²)`, class
# logits near `log(0.6 / (C − 0.99))`, with some noise so that every prediction
# differs. The targets come from the model's own anchors.

# %%
image, _, objects = render_sample(seed=0, split="val", index=0, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
num_classes = len(CLASS_NAMES)
model = build_yolov3(num_classes=num_classes)
anchors = [head.anchors for head in model.heads]
strides = model.strides
feature_sizes = [(320 // stride, 320 // stride) for stride in strides]
targets = build_yolov3_targets(
    gt_boxes[None],
    gt_labels[None],
    torch.ones(1, len(gt_boxes), dtype=torch.bool),
    anchors,
    strides,
    feature_sizes,
)
generator = torch.Generator().manual_seed(0)
raw_outputs = []
for (height, width), stride in zip(feature_sizes, strides, strict=True):
    raw = 0.5 * torch.randn(1, 3, height, width, 5 + num_classes, generator=generator)
    raw[..., 4] += math.log(8 / (640 / stride) ** 2)
    raw[..., 5:] += math.log(0.6 / (num_classes - 0.99))
    raw_outputs.append(raw.to(device))  # (B, K, H, W, 5 + C)
targets = [type(target)(*(field.to(device) for field in target)) for target in targets]
print([tuple(raw.shape) for raw in raw_outputs], "positives:", [len(t.image) for t in targets])

# %% [markdown]
# ### 3.1 Box
#
# Gather the positives' predictions with the target indices, decode them in grid units
# relative to the cell corner, and compare with the target boxes (cxcywh, converted to
# xyxy for the GIoU of notebook 01):

# %%
box_terms, gious = [], []
for raw, target in zip(raw_outputs, targets, strict=True):
    pred = raw[target.image, target.anchor, target.gy, target.gx]  # (n, 5 + C)
    # (yolov3_loss also clamps exp(t_wh) at 1000, so that a wild output cannot overflow)
    pred_box = torch.cat([pred[:, :2].sigmoid(), pred[:, 2:4].exp() * target.anchor_wh], dim=1)
    giou = box_ops.box_iou_aligned(
        box_ops.cxcywh_to_xyxy(pred_box), box_ops.cxcywh_to_xyxy(target.box), kind="giou"
    )  # (n,)
    gious.append(giou)
    box_terms.append((1 - giou).mean())
box_inline = GAINS["box"] * sum(box_terms)
print("1 - GIoU per layer:", [f"{term:.4f}" for term in box_terms])

# %% [markdown]
# The positives of the stride-32 layer: predicted and target box in cells, and their
# GIoU. A fresh prediction sits near the anchor in the middle of the cell, so its GIoU
# is mostly set by how well the anchor's shape fits, and by how far the box centre is
# from the middle of the cell.

# %%
target, giou = targets[0], gious[0]
pred = raw_outputs[0][target.image, target.anchor, target.gy, target.gx]
pd.DataFrame(
    {
        "box": [f"g{m}" for m in target.gt_index.tolist()],
        "anchor": target.anchor.tolist(),
        "pred cx, cy": [tuple(round(v, 2) for v in row) for row in pred[:, :2].sigmoid().tolist()],
        "pred w, h": [
            tuple(round(v, 2) for v in row)
            for row in (pred[:, 2:4].exp() * target.anchor_wh).tolist()
        ],
        "target cx, cy": [tuple(round(v, 2) for v in row) for row in target.box[:, :2].tolist()],
        "target w, h": [tuple(round(v, 2) for v in row) for row in target.box[:, 2:].tolist()],
        "GIoU": giou.tolist(),
    }
)

# %% [markdown]
# ### 3.2 Objectness
#
# A target map of zeros the shape of the objectness channel, the positives' entries set
# to their GIoU (with `gr = 1`, clamped at 0), and BCE over every cell:

# %%
obj_terms, obj_targets = [], []
for raw, target, giou in zip(raw_outputs, targets, gious, strict=True):
    obj_target = torch.zeros_like(raw[..., 4])  # (B, K, H, W)
    obj_target[target.image, target.anchor, target.gy, target.gx] = giou.detach().clamp(min=0)
    obj_targets.append(obj_target)
    obj_terms.append(F.binary_cross_entropy_with_logits(raw[..., 4], obj_target))
obj_inline = GAINS["obj"] * sum(obj_terms)
print("objectness BCE per layer:", [f"{term:.4f}" for term in obj_terms])

# %% [markdown]
# (No two positives of this image share a cell and anchor, so each entry is written
# once; when two do, `yolov3_loss` keeps the last one written, the order of the
# targets, on every device.)
#
# ### 3.3 Class
#
# One-hot targets at the positives, BCE over the `n × C` logits:

# %%
cls_terms = []
for raw, target in zip(raw_outputs, targets, strict=True):
    pred = raw[target.image, target.anchor, target.gy, target.gx]  # (n, 5 + C)
    one_hot = F.one_hot(target.labels, num_classes).float()  # (n, C)
    cls_terms.append(F.binary_cross_entropy_with_logits(pred[:, 5:], one_hot))
cls_inline = GAINS["cls"] * sum(cls_terms)
print("class BCE per layer:", [f"{term:.4f}" for term in cls_terms])

# %% [markdown]
# ### 3.4 Through `detutils`
#
# The three inline terms against `yolov3_loss`, and against the model's own
# `loss(outputs, targets)`, which takes the per-image ground truth, pads it, builds
# the targets and calls `yolov3_loss` with the config's gains, `gr` and `iou_t`:

# %%
losses = yolov3_loss(raw_outputs, targets)
model_losses = model.to(device).loss(
    raw_outputs, [{"boxes": gt_boxes.to(device), "labels": gt_labels.to(device)}]
)
inline = {"box": box_inline, "obj": obj_inline, "cls": cls_inline}
inline["loss"] = box_inline + obj_inline + cls_inline
for name in inline:
    torch.testing.assert_close(inline[name], losses[name])
    torch.testing.assert_close(model_losses[name], losses[name])
pd.DataFrame({"inline": inline, "yolov3_loss": losses}).map(lambda value: value.item())

# %% [markdown]
# The loss records its intermediates for the tracer (notebook 10): the GIoU of each
# layer's positives and each layer's objectness target map.

# %%
trace_table, _ = trace(yolov3_loss, raw_outputs, targets, include_input=False)
trace_table

# %% [markdown]
# ## 4. Where the objectness term comes from
#
# The objectness BCE is a mean over every prediction: 6,300 of them at 320 px, of
# which 24 are positives. Split by kind:

# %%
rows = []
for stride, raw, obj_target, target in zip(strides, raw_outputs, obj_targets, targets, strict=True):
    per_cell = F.binary_cross_entropy_with_logits(raw[..., 4], obj_target, reduction="none")
    positive = torch.zeros_like(obj_target, dtype=torch.bool)
    positive[target.image, target.anchor, target.gy, target.gx] = True
    rows.append(
        {
            "stride": stride,
            "predictions": per_cell.numel(),
            "positives": int(positive.sum()),
            "mean BCE, negatives": per_cell[~positive].mean().item(),
            "mean BCE, positives": per_cell[positive].mean().item(),
            "share of the sum from positives": (per_cell[positive].sum() / per_cell.sum()).item(),
        }
    )
objectness_table = pd.DataFrame(rows)
objectness_table

# %% [markdown]
# A positive costs about a hundred times a negative: its logit still says "almost
# surely nothing" while its target is its GIoU. Only 24 of the 6,300 predictions are
# positives, yet they make up half to two-thirds of each layer's sum; the thousands of
# negatives cost little because the bias initialisation of notebook 10 starts their
# logits at the prior. With logits of 0 instead, every negative would cost log 2 ≈ 0.69
# and drown the positives (exercise 3).

# %%
ratio = objectness_table["mean BCE, positives"] / objectness_table["mean BCE, negatives"]
assert (ratio > 50).all()
assert (objectness_table["share of the sum from positives"] > 0.5).all()
assert objectness_table["positives"].sum() == sum(len(t.image) for t in targets) == 24

# %% [markdown]
# ## 5. `gr`: what the objectness of a positive should say
#
# With `gr = 0` a positive's objectness target is 1, as in the original YOLOv3: "there
# is an object here". With `gr = 1` (the reference's `model.gr = 1.0`) it is the GIoU
# of the current prediction, clamped at 0: "there is an object here, and my box is
# this good". The objectness then learns to rank well-localised boxes above poor ones,
# which is what the detection score (objectness × class probability) should do at
# test time. `gr` in between mixes the two: $(1 - g_r) + g_r \max(\mathrm{GIoU}, 0)$.
#
# Where `gr` is set in the reference is easy to miss: not in the loss, which reads
# `model.gr` (`compute_loss` in `utils/utils.py`), but in `train.py`, which sets
# `model.gr = 1.0` before the first epoch and then, on the archive branch (whose last
# commit is the tag v8, November 2020; v7, May 2020, does the same), *ramps* it during
# the burn-in, the first max(3 epochs, 500) iterations:
# `model.gr = np.interp(ni, [0, n_burn], [0.0, 1.0])` (v7 ramps over twice the
# burn-in). Printed at the first step of such a run, `model.gr` is 0: the positives
# start with target 1 and move to their GIoU as the boxes improve. Before (v6, 2019)
# there was no `gr`: the target was always 1. From v9.0 on (December 2020, the releases
# built on YOLOv5's code) the ramp line is commented out and `gr` stays 1.0 from the
# start. `detutils` keeps `YOLOv3Config.gr` fixed, 1.0 by
# default, on every schedule: it has no ramp (notebook 13 lists this among the
# differences of its `gpu` schedule from the reference).

# %%
giou_axis = torch.linspace(-1, 1, 201)
all_gious = torch.cat(gious).detach().cpu()
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for gr in (0.0, 0.5, 1.0):
    ax.plot(giou_axis, (1 - gr) + gr * giou_axis.clamp(min=0), label=f"gr = {gr}")
ax.plot(all_gious, all_gious.clamp(min=0), "k|", markersize=12, label="this image's positives")
ax.set_xlabel("GIoU of the predicted box")
ax.set_ylabel("objectness target")
ax.set_title("objectness target of a positive")
ax.legend(fontsize=8)
plt.show()


# %%
# NBVAL_IGNORE_OUTPUT
# (an interactive version of the figure above: move the slider; the figure above is
# the one the tests check)
def plot_objectness_target(gr=1.0):
    """The objectness target of a positive against its GIoU, for one gr."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for end in (0.0, 1.0):  # gr = 0 and gr = 1, for comparison
        ax.plot(giou_axis, (1 - end) + end * giou_axis.clamp(min=0), color="0.85")
    ax.plot(giou_axis, (1 - gr) + gr * giou_axis.clamp(min=0), label=f"gr = {gr:.2f}")
    at_positives = (1 - gr) + gr * all_gious.clamp(min=0)
    ax.plot(all_gious, at_positives, "k|", markersize=12, label="this image's positives")
    obj_term = yolov3_loss(raw_outputs, targets, gr=gr)["obj"].item()
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("GIoU of the predicted box")
    ax.set_ylabel("objectness target")
    ax.set_title(f"objectness target of a positive (obj term {obj_term:.2f})")
    ax.legend(fontsize=8)
    plt.show()


_ = interact(plot_objectness_target, gr=FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05))

# %%
rows = []
for gr in (0.0, 0.25, 0.5, 0.75, 1.0):
    gr_losses = yolov3_loss(raw_outputs, targets, gr=gr)
    quality = (1 - gr) + gr * all_gious.clamp(min=0)
    rows.append(
        {
            "gr": gr,
            "mean target at positives": quality.mean().item(),
            **{name: value.item() for name, value in gr_losses.items()},
        }
    )
gr_table = pd.DataFrame(rows).set_index("gr")
gr_table

# %%
assert gr_table["box"].nunique() == 1 and gr_table["cls"].nunique() == 1  # gr touches obj only
assert gr_table["obj"].is_monotonic_decreasing
print(f"mean GIoU of the positives: {all_gious.mean():.4f}")

# %% [markdown]
# At the start of training the GIoUs are low (0.30 on average here), so with `gr = 1`
# the positives are first asked for a low objectness, which rises as their boxes
# improve: the untrained network is not pushed to claim a confidence its boxes have
# not earned. Here the lower targets also suit the low initial logits, so the term is
# smallest at `gr = 1`.
#
# ## 6. The gains
#
# The three terms are means over very different things: positives (box), every
# prediction (obj), positive-class entries (cls). Their sizes differ accordingly, and
# so do the gradients they send back. The gains 3.54, 64.3 and 37.4 were tuned on COCO
# by the reference's hyperparameter evolution; they weigh the three terms against each
# other. The terms of this prediction without and with them:

# %%
plain = yolov3_loss(raw_outputs, targets, giou_gain=1.0, obj_gain=1.0, cls_gain=1.0)
gains_table = pd.DataFrame(
    {
        "mean (gain 1)": [plain[name].item() for name in GAINS],
        "gain": list(GAINS.values()),
        "term": [losses[name].item() for name in GAINS],
        "share of loss": [(losses[name] / losses["loss"]).item() for name in GAINS],
    },
    index=list(GAINS),
)
gains_table

# %% [markdown]
# ### The class gain for C classes
#
# The class gain 37.4 was tuned on COCO's 80 classes. The reference's `train.py` does
# not use it as it is on another dataset: before training it rescales it,
# `hyp['cls'] *= nc / 80` (archive branch; from v9.1 on also times 3 / the number of
# YOLO layers), because the class term is a mean over the positives' `n × C` entries,
# which shrinks as C grows. For the shapes set's C = 6 the reference would train with
# 37.4 × 6 / 80 = 2.805, and the class term falls from most of the loss to a small part
# of it:

# %%
scaled_cls_gain = GAINS["cls"] * num_classes / 80  # train.py: hyp['cls'] *= nc / 80
scaled = yolov3_loss(raw_outputs, targets, cls_gain=scaled_cls_gain)
class_gain_table = pd.DataFrame(
    {
        "COCO gain 37.4": [(losses[name] / losses["loss"]).item() for name in GAINS],
        f"scaled {scaled_cls_gain:.4g}": [(scaled[name] / scaled["loss"]).item() for name in GAINS],
    },
    index=[f"share of {name}" for name in GAINS],
)
assert scaled["box"] == losses["box"] and scaled["obj"] == losses["obj"]
significant(class_gain_table, 3)

# %% [markdown]
# `detutils` keeps the COCO gain, `YOLOv3Config.cls_gain = 37.4`, for every number of
# classes and on every schedule: the model does not rescale it. This is a measured
# choice, not an oversight. Trained on the `cpu` schedule for 500 steps (notebook 13's
# recipe, `benchmarks/sample_efficiency.py`, the class gain the only change), YOLOv3-tiny
# reached AP50 0.441 with the gain 37.4 and 0.259 with the scaled 2.805: in so short a
# run the naming of the shapes is what the network learns last, and the larger gain
# pushes it. To train exactly as the reference does, give the model the scaled gain:
# `YOLOv3(dataclasses.replace(model.config, cls_gain=37.4 * C / 80))`.
#
# The gains act on the gradient the same way. The gradient of the loss with respect to
# the raw outputs, split by channel: box channels and class channels receive gradient
# only at the positives, the objectness channel everywhere. The table gives the norm of
# each part, without gains and with them.


# %%
def gradient_norms(**gains):
    """Norm of d loss / d raw outputs, per channel group, summed over layers."""
    leaves = [raw.detach().clone().requires_grad_(True) for raw in raw_outputs]
    yolov3_loss(leaves, targets, **gains)["loss"].backward()
    groups = {"box (t_xywh)": slice(0, 4), "obj": slice(4, 5), "cls": slice(5, None)}
    return {
        name: torch.stack([leaf.grad[..., part].norm() for leaf in leaves]).norm().item()
        for name, part in groups.items()
    }


gradient_table = pd.DataFrame(
    {
        "gains 1": gradient_norms(giou_gain=1.0, obj_gain=1.0, cls_gain=1.0),
        "default gains": gradient_norms(),
    }
)
gradient_table["ratio"] = gradient_table["default gains"] / gradient_table["gains 1"]
gradient_table

# %%
# Each term's gradient reaches only its own channels, so the ratios are the gains.
torch.testing.assert_close(
    torch.tensor(gradient_table["ratio"].to_list()), torch.tensor(list(GAINS.values()))
)

# %% [markdown]
# Without gains the objectness term, a mean over 6,300 predictions, sends each output
# a tiny gradient; the gain of 64.3 lifts it. The class gain does the same for a mean
# over `n × C` entries. Changing one gain changes what the network spends its capacity
# on; `YOLOv3Config` keeps them as `giou_gain`, `obj_gain` and `cls_gain`.

# %%
config = YOLOv3Config()
assert (config.giou_gain, config.obj_gain, config.cls_gain) == tuple(GAINS.values())
assert (config.gr, config.iou_t) == (1.0, 0.2)
print(
    f"YOLOv3Config: giou_gain {config.giou_gain}, obj_gain {config.obj_gain}, "
    f"cls_gain {config.cls_gain}, gr {config.gr}, iou_t {config.iou_t}"
)

# %% [markdown]
# ## Recap
#
# - box: mean over the positives of 1 − GIoU between the decoded prediction (grid
#   units, around its cell) and the target box.
# - obj: BCE over every prediction; the target is 0 except at the positives, where it
#   is `(1 − gr) + gr · max(GIoU, 0)`.
# - cls: BCE of the C logits against the one-hot label, mean over the positives'
#   `n × C` entries; none with one class.
# - Each term is a mean per layer, summed over layers, times its gain (3.54, 64.3,
#   37.4); the loss does not grow with the batch size or the number of boxes.
# - From here on: `detutils.losses.yolov3_loss`, or `YOLOv3.loss(outputs, targets)`.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Make the prediction perfect at the positives: copy `raw_outputs` and,
# at each positive, set `t_xy` to the logit of the target offset and `t_wh` to the log
# of target size / anchor size. Assign the list of the three modified outputs (same
# shapes as `raw_outputs`) to `perfect`. The check verifies that the box term vanishes
# and that the objectness term is now the same for `gr = 0` and `gr = 1` (why?).
# Offsets of exactly 0 need a nudge: their logit is −∞.

# %% tags=["solution"]
perfect = None  # list of 3 tensors, each (B, K, H, W, 5 + C) like raw_outputs
### BEGIN SOLUTION
perfect = [raw.clone() for raw in raw_outputs]
for raw, target in zip(perfect, targets, strict=True):
    offsets = target.box[:, :2].clamp(1e-5, 1 - 1e-5)
    raw[target.image, target.anchor, target.gy, target.gx, :2] = torch.logit(offsets)
    raw[target.image, target.anchor, target.gy, target.gx, 2:4] = torch.log(
        target.box[:, 2:] / target.anchor_wh
    )
# GIoU = 1 at every positive, so (1 - gr) + gr * GIoU = 1 for any gr.
### END SOLUTION

# %% tags=["check"]
check_true(
    isinstance(perfect, list) and len(perfect) == len(raw_outputs),
    "`perfect` should be a list of 3 tensors, one per layer, like `raw_outputs`.",
    hint="start from [raw.clone() for raw in raw_outputs] and overwrite the box channels "
    "at the positives, raw[target.image, target.anchor, target.gy, target.gx, :4].",
)  # fmt: skip
for layer, (mine, raw) in enumerate(zip(perfect, raw_outputs, strict=True)):
    check_equal(
        f"perfect[{layer}].shape", tuple(mine.shape), tuple(raw.shape),
        hint="keep every output's shape (B, K, H, W, 5 + C); change values only.",
    )  # fmt: skip
perfect_gr1 = yolov3_loss(perfect, targets, gr=1.0)
perfect_gr0 = yolov3_loss(perfect, targets, gr=0.0)
check_true(
    perfect_gr1["box"].item() < 1e-3,
    f"the box term of `perfect` is {perfect_gr1['box'].item():.4g}; expected below 0.001.",
    hint="sigmoid(t_xy) must give target.box[:, :2]: t_xy = torch.logit(offset), with the "
    "offsets clamped to [1e-5, 1 - 1e-5]; exp(t_wh) * target.anchor_wh must give "
    "target.box[:, 2:]: t_wh = log(target.box[:, 2:] / target.anchor_wh).",
)  # fmt: skip
check_close(
    "obj term of `perfect` at gr = 0", perfect_gr0["obj"], perfect_gr1["obj"].detach(),
    rtol=1e-4, atol=1e-4,
    hint="at GIoU = 1 the positive's target (1 - gr) + gr * GIoU is 1 for every gr.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
for layer, (mine, raw) in enumerate(zip(perfect, raw_outputs, strict=True)):
    check_close(
        f"perfect[{layer}][..., 4:]", mine[..., 4:], raw[..., 4:],
        hint="only the box channels t_xywh change; objectness and class logits stay",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Show that the loss does not depend on the batch size: make a batch
# that holds this image twice, `twice` (each raw output concatenated with itself along
# the batch dimension, so B = 2), and assign its losses from `YOLOv3.loss` (which builds
# the targets of both images) to `batch_losses`. The check compares the four numbers
# with those of the image alone, `losses` (section 3.4).

# %% tags=["solution"]
ground_truth = {"boxes": gt_boxes.to(device), "labels": gt_labels.to(device)}
twice = None  # list of 3 tensors, each (2, K, H, W, 5 + C)
batch_losses = None  # dict {"box", "obj", "cls", "loss"} of scalar tensors
### BEGIN SOLUTION
twice = [torch.cat([raw, raw]) for raw in raw_outputs]
batch_losses = model.loss(twice, [ground_truth, ground_truth])
### END SOLUTION
if batch_losses is not None:
    print({name: f"{value.item():.4g}" for name, value in batch_losses.items()})

# %% tags=["check"]
check_true(
    twice is not None and [raw.shape[0] for raw in twice] == [2, 2, 2],
    "`twice` should hold 3 raw outputs with B = 2 (the image twice).",
    hint="torch.cat([raw, raw]) joins along dim 0, the batch dimension.",
)  # fmt: skip
check_true(
    isinstance(batch_losses, dict),
    "`batch_losses` should be the dict that model.loss returns.",
    hint="model.loss(twice, [ground_truth, ground_truth]): one ground-truth dict per image.",
)  # fmt: skip
for name in ("box", "obj", "cls", "loss"):
    check_close(
        f'batch_losses["{name}"]', batch_losses.get(name), losses[name],
        hint="each term is a mean (over positives, predictions or class entries) per layer; "
        "a batch of the same image twice has twice the numerator and twice the denominator. "
        "Give model.loss one ground-truth dict per image of the batch.",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
for layer, (mine, raw) in enumerate(zip(twice, raw_outputs, strict=True)):
    check_close(f"twice[{layer}]", mine, torch.cat([raw, raw]), hint="the image twice")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** An image without any object: every prediction is a negative, and
# only the objectness term remains. For a very negative logit `x` the BCE of a negative
# is `softplus(x) ≈ e^x`, so a negative costs about its prior probability
# `p = 8 / (640 / s)²`. Assign to `estimate` the term (gain included) estimated from
# the priors alone; to `empty_losses` the dict `yolov3_loss` gives for `raw_outputs`
# with empty targets (build them from ground truth of shape `(1, 0, 4)`); and to
# `without_init` the term a head without the bias initialisation (every logit 0) would
# cost.

# %% tags=["solution"]
estimate = without_init = None  # float each, gain included
empty_losses = None  # dict {"box", "obj", "cls", "loss"}
### BEGIN SOLUTION
empty_targets = build_yolov3_targets(
    torch.zeros(1, 0, 4),
    torch.zeros(1, 0, dtype=torch.long),
    torch.zeros(1, 0, dtype=torch.bool),
    anchors,
    strides,
    feature_sizes,
)
empty_targets = [type(t)(*(field.to(device) for field in t)) for t in empty_targets]
empty_losses = yolov3_loss(raw_outputs, empty_targets)
estimate = GAINS["obj"] * sum(8 / (640 / stride) ** 2 for stride in strides)
without_init = GAINS["obj"] * 3 * math.log(2)  # BCE(0, 0) = log 2 in every cell of 3 layers
### END SOLUTION
if estimate is not None and without_init is not None:
    print(f"estimate {estimate:.4g}, with every logit 0: {without_init:.4g}")

# %% tags=["check"]
check_close(
    "estimate", estimate, 64.3 * (8 / 20**2 + 8 / 40**2 + 8 / 80**2), rtol=1e-3,
    hint="the term is the gain times the sum over the 3 layers of a mean BCE, and each "
    "negative costs about p = 8 / (640 / s)^2 at s = 32, 16, 8.",
)  # fmt: skip
check_true(
    isinstance(empty_losses, dict),
    "`empty_losses` should be the dict yolov3_loss returns.",
    hint="build_yolov3_targets(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), "
    "torch.zeros(1, 0, dtype=torch.bool), anchors, strides, feature_sizes), then "
    "yolov3_loss(raw_outputs, those targets).",
)  # fmt: skip
no_ground_truth = build_yolov3_targets(
    torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long),
    torch.zeros(1, 0, dtype=torch.bool), anchors, strides, feature_sizes,
)  # fmt: skip
no_ground_truth = [type(t)(*(field.to(device) for field in t)) for t in no_ground_truth]
check_close(
    'empty_losses["obj"]', empty_losses.get("obj"),
    yolov3_loss(raw_outputs, no_ground_truth)["obj"],
    hint="every target of the objectness map is 0: the term is the gain times the mean "
    "BCE of the objectness logits against 0, summed over the layers.",
)  # fmt: skip
check_close(
    "without_init", without_init, 64.3 * 3 * math.log(2), rtol=1e-3,
    hint="with logit 0, BCE(0, 0) = log 2 for every prediction: the mean of each layer is "
    "log 2, and there are 3 layers.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close('empty_losses["box"]', empty_losses["box"], 0.0, hint="no positive, no box term")
check_close('empty_losses["cls"]', empty_losses["cls"], 0.0, hint="no positive, no class term")
# The noise makes the term a little larger: E[exp(x)] = p exp(sigma^2 / 2), about 1.13 p.
check_true(
    estimate < empty_losses["obj"].item() < 1.25 * estimate,
    "the estimate should be a little below the measured term",
    hint="logits are the prior plus noise of standard deviation 0.5",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** A one-class detector (C = 1) has no class term. Keep only the first
# class channel of the prediction, `one_class` (a list of `(B, K, H, W, 5 + 1)`
# tensors), relabel every box as class 0, `one_class_targets` (a list of three
# `YOLOv3Targets`; a NamedTuple's `_replace` swaps one field), and assign
# `yolov3_loss(one_class, one_class_targets)` to `one_class_losses`. The check verifies
# that `cls` is 0 while `box` is unchanged.

# %% tags=["solution"]
one_class = None  # list of 3 tensors (B, K, H, W, 5 + 1)
one_class_targets = None  # list of 3 YOLOv3Targets, every label 0
one_class_losses = None  # dict {"box", "obj", "cls", "loss"}
### BEGIN SOLUTION
one_class = [raw[..., :6] for raw in raw_outputs]
one_class_targets = [target._replace(labels=torch.zeros_like(target.labels)) for target in targets]
one_class_losses = yolov3_loss(one_class, one_class_targets)
### END SOLUTION
if one_class_losses is not None:
    print({name: f"{value.item():.4g}" for name, value in one_class_losses.items()})

# %% tags=["check"]
check_true(
    one_class is not None and [raw.shape[-1] for raw in one_class] == [6, 6, 6],
    "`one_class` should hold 3 outputs whose last dimension is 5 + 1 = 6.",
    hint="raw[..., :6] keeps t_xywh, the objectness and the first class logit.",
)  # fmt: skip
check_true(
    one_class_targets is not None
    and all(bool((target.labels == 0).all()) for target in one_class_targets),
    "`one_class_targets` should be the targets with every label 0.",
    hint="target._replace(labels=torch.zeros_like(target.labels)) for each layer's target.",
)  # fmt: skip
check_true(
    isinstance(one_class_losses, dict),
    "`one_class_losses` should be the dict yolov3_loss returns.",
    hint="yolov3_loss(one_class, one_class_targets)",
)  # fmt: skip
check_close(
    'one_class_losses["cls"]', one_class_losses["cls"], 0.0,
    hint="with C = 1 yolov3_loss adds no class term: one class leaves nothing to tell apart.",
)  # fmt: skip
check_close(
    'one_class_losses["box"]', one_class_losses["box"], losses["box"],
    hint="the box channels and the positives are those of section 3: the box term is the same.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    'one_class_losses["obj"]', one_class_losses["obj"], losses["obj"],
    hint="the objectness channel and its targets do not depend on the classes",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - J. Redmon and A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018, section 2
#   (sum-of-squares box loss and BCE objectness and classes in the original),
#   <https://arxiv.org/abs/1804.02767>
# - H. Rezatofighi et al., *Generalized Intersection over Union: A Metric and a Loss
#   for Bounding Box Regression*, CVPR 2019, <https://arxiv.org/abs/1902.09630>
# - ultralytics/yolov3, archive branch: `utils/utils.py` `compute_loss` and
#   `build_targets`, `train.py` (`hyp`, `model.gr`),
#   <https://github.com/ultralytics/yolov3/tree/archive>
# - ultralytics/yolov3 issue 310, the hyperparameter evolution behind the gains,
#   <https://github.com/ultralytics/yolov3/issues/310>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017 (the
#   imbalance of positives and negatives in a dense objectness loss),
#   <https://arxiv.org/abs/1708.02002>
