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
# # 03 · NMS and mAP: from raw detections to the numbers a detector is judged by
#
# A detector's head scores every prior, so one object lights up a cluster of boxes.
# Non-maximum suppression (NMS) thins each cluster to one box; the survivors are the
# detections. A detector is then judged by its *average precision* (AP): how well its
# ranking of detections, best score first, finds the ground-truth boxes. Every training
# notebook of the course ends with a COCO table of AP, AP50, AP75, APs, APm, APl and
# AR100; this notebook derives each of those numbers by hand, checks them against
# torchvision and pycocotools, and shows what the three knobs of postprocessing,
# `score_thr`, `iou_thr` and `max_det`, do to them.
#
# **Learning goals**
#
# 1. Write greedy NMS by hand, per class with the coordinate-offset trick, and match
#    torchvision's `nms` and `batched_nms` index for index; say what
#    `detutils.postprocess` does before and after NMS.
# 2. Match detections to ground truth, build the cumulative TP/FP table, draw the
#    precision-recall curve and its envelope, and compute AP as an area.
# 3. Compute COCO's AP exactly as pycocotools does: 101 recall points, ten IoU
#    thresholds, area ranges and `maxDets`; read the course evaluator's table.
# 4. Predict what `score_thr`, `iou_thr` and `max_det` do to AP, and choose them for
#    evaluation and for display.
#
# **Prerequisites**: notebooks 01 (box formats, IoU) and 02 (priors: why a head emits
# many boxes per object); the shapes set of notebook 00.
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
import contextlib
import io
import time
from collections import defaultdict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torchvision.ops as tv_ops
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detutils import boxes as box_ops
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import significant
from detutils.data import CocoDetection, ensure_shapes, find_split
from detutils.engine.evaluator import coco_evaluate, detections_to_coco
from detutils.postprocess import select_detections
from detutils.viz import draw_boxes

# %% [markdown]
# ## 1. Non-maximum suppression
#
# Greedy NMS keeps one box per cluster:
#
# 1. sort the boxes by decreasing score;
# 2. keep the best remaining box;
# 3. drop every remaining box whose IoU with it is **greater than** `iou_thr`;
# 4. repeat from 2 until no box remains.
#
# A dropped box never drops anything itself, and the kept indices come out best
# first. Six boxes make the rules visible: object A with a duplicate, object B that
# overlaps A, and object C, which the head calls a cross and, with a lower score, also
# a star (a prior gives a score per class, and two classes may pass the threshold).

# %%
class_names = ["star", "cross"]
example_boxes = torch.tensor(
    [
        [20.0, 20.0, 80.0, 80.0],  # 0: object A
        [25.0, 22.0, 85.0, 82.0],  # 1: a duplicate of A
        [45.0, 25.0, 105.0, 85.0],  # 2: object B, which overlaps A
        [140.0, 40.0, 180.0, 100.0],  # 3: object C, a cross
        [130.0, 45.0, 175.0, 105.0],  # 4: object C again, named star
        [47.0, 27.0, 105.0, 87.0],  # 5: a duplicate of B
    ]
)  # (6, 4) xyxy px, best score first
example_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])  # (6,)
example_labels = torch.tensor([0, 0, 0, 1, 0, 0])  # (6,) 0 star, 1 cross
example_iou = box_ops.box_iou(example_boxes, example_boxes)  # (6, 6)
significant(pd.DataFrame(example_iou.numpy()), 3)

# %% [markdown]
# NMS by hand. The IoU is torchvision's `box_iou` (no `eps`, the arithmetic of its
# NMS kernel), and the comparison is made in float64, as that kernel compares its
# float IoU with the threshold it gets as a double.


# %%
def nms_by_hand(boxes, scores, iou_thr, trace=None):
    """Greedy NMS of (N, 4) xyxy boxes -> (K,) int64 indices of the kept boxes, best first.

    trace: an optional list that gets one (kept index, [dropped indices]) pair per step.
    """
    order = torch.argsort(scores, descending=True, stable=True)  # (N,) best first
    keep = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iou = tv_ops.box_iou(boxes[best][None], boxes[rest])[0]  # (len(rest),)
        drop = iou.double() > iou_thr  # strictly greater: IoU == iou_thr stays
        if trace is not None:
            trace.append((int(best), rest[drop].tolist()))
        order = rest[~drop]
    return torch.tensor(keep, dtype=torch.int64)


# %% [markdown]
# Class-agnostic NMS of the six boxes at `iou_thr = 0.5`, step by step. From the IoU
# table: box 0 drops box 1 (0.796); box 2 (0.365 with box 0) survives and drops box 5
# (0.905); box 3 drops box 4 (0.606), although box 4 is a star and box 3 a cross.

# %%
trace = []
kept = nms_by_hand(example_boxes, example_scores, 0.5, trace)
assert kept.tolist() == [0, 2, 3]
assert torch.equal(kept, tv_ops.nms(example_boxes, example_scores, 0.5))
pd.DataFrame(trace, columns=["kept", "dropped"])

# %% [markdown]
# The same on 300 random boxes at four thresholds: the same kept indices, in the same
# order, as `torchvision.ops.nms`. An IoU exactly equal to the threshold does not
# suppress: two boxes with IoU 0.5 both survive NMS at 0.5.

# %%
generator = torch.Generator().manual_seed(0)
corner = torch.rand(300, 2, generator=generator) * 200
random_boxes = torch.cat([corner, corner + 5 + torch.rand(300, 2, generator=generator) * 60], 1)
random_scores = torch.rand(300, generator=generator)  # (300,)
for iou_thr in (0.3, 0.5, 0.7, 0.9):
    mine = nms_by_hand(random_boxes, random_scores, iou_thr)
    assert torch.equal(mine, tv_ops.nms(random_boxes, random_scores, iou_thr))
    print(f"iou_thr {iou_thr}: {len(mine)} of 300 boxes kept, as torchvision.ops.nms")
halves = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0]])  # IoU 8 / 16 = 0.5
assert nms_by_hand(halves, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
assert tv_ops.nms(halves, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]

# %% [markdown]
# **Per class.** A box should only suppress boxes of its own class: box 3 (cross)
# must not drop box 4 (star). `torchvision.ops.batched_nms` does it with a trick: add
# to every box an offset `label * (max coordinate + 1)`. Boxes of class k then lie in
# the square `[k (m + 1), k (m + 1) + m]` (m the largest coordinate), which no box of
# another class reaches, so one class-agnostic NMS of the shifted boxes is a
# per-class NMS. It needs coordinates >= 0. (On a CPU, torchvision uses the trick up
# to 1000 boxes and a loop over classes above; the check below runs both.)


# %%
def batched_nms_by_hand(boxes, scores, labels, iou_thr):
    """Per-class NMS by the coordinate-offset trick -> (K,) int64 kept indices, best first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    offsets = labels.to(boxes) * (boxes.max() + 1)  # (N,) one region per class
    return nms_by_hand(boxes + offsets[:, None], scores, iou_thr)


# %%
per_class = {
    iou_thr: batched_nms_by_hand(example_boxes, example_scores, example_labels, iou_thr)
    for iou_thr in (0.3, 0.5, 0.85)
}
# By hand from the IoU table (star boxes 0, 1, 2, 4, 5; cross box 3):
# 0.3:  0 drops 1 (0.796) and 2 (0.365) and 5 (0.328); 3 and 4 are of different classes
# 0.5:  0 drops 1; 2 drops 5 (0.905); 3 and 4 both stay
# 0.85: nothing drops 1 (0.796) or 2; 2 still drops 5 (0.905)
assert per_class[0.3].tolist() == [0, 3, 4]
assert per_class[0.5].tolist() == [0, 2, 3, 4]
assert per_class[0.85].tolist() == [0, 1, 2, 3, 4]
labels_random = torch.randint(0, 4, (300,), generator=generator)
many = torch.cat([random_boxes] * 5) + torch.rand(1500, 4, generator=generator)  # > 1000 boxes
many_scores, many_labels = torch.rand(1500, generator=generator), torch.randint(0, 4, (1500,))
for iou_thr in (0.3, 0.5, 0.85):
    expected = tv_ops.batched_nms(example_boxes, example_scores, example_labels, iou_thr)
    assert torch.equal(per_class[iou_thr], expected)
    mine = batched_nms_by_hand(random_boxes, random_scores, labels_random, iou_thr)
    expected = tv_ops.batched_nms(random_boxes, random_scores, labels_random, iou_thr)
    assert torch.equal(mine, expected)
    mine = batched_nms_by_hand(many, many_scores, many_labels, iou_thr)
    assert torch.equal(mine, tv_ops.batched_nms(many, many_scores, many_labels, iou_thr))
print("per-class NMS by hand = torchvision.ops.batched_nms (both of its code paths)")

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))
draw_boxes((130, 200), example_boxes, example_labels, example_scores, class_names, ax=axes[0],
           title="raw: 6 boxes")  # fmt: skip
for ax, (iou_thr, kept) in zip(axes[1:], per_class.items(), strict=True):
    draw_boxes((130, 200), example_boxes[kept], example_labels[kept], example_scores[kept],
               class_names, ax=ax, title=f"per-class NMS, iou_thr {iou_thr}")  # fmt: skip
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# Too low a threshold drops real objects that overlap a neighbour of their class
# (object B at 0.3); too high a threshold keeps duplicates (box 1 at 0.85).
#
# ### What `detutils.postprocess` does
#
# Every detector of the course ends its `predict` with
# `detutils.postprocess.select_detections(boxes, scores, score_thr, iou_thr, max_det)`,
# per image, on the decoded boxes `(A, 4)` and class scores `(A, C)` of all A priors:
#
# 1. every (prior, class) pair with a score **above** `score_thr` is a candidate, so a
#    prior may give detections of several classes (`multi_label=True`, as mmdet's
#    `multiclass_nms`);
# 2. at most `max_candidates` (10000) best candidates go on, to bound NMS's cost;
# 3. per-class NMS, `torchvision.ops.batched_nms`;
# 4. the `max_det` best survivors: at most `max_det` detections **per image**, all
#    classes together.
#
# It also drops boxes with a NaN or infinite coordinate before NMS. By hand:


# %%
def postprocess_by_hand(boxes, scores, score_thr, iou_thr, max_det):
    """(A, 4) boxes and (A, C) scores -> {"boxes", "scores", "labels"}, best first."""
    prior_index, labels = torch.nonzero(scores > score_thr, as_tuple=True)  # (N,), (N,)
    candidate_boxes = boxes[prior_index]  # (N, 4)
    candidate_scores = scores[prior_index, labels]  # (N,)
    kept = batched_nms_by_hand(candidate_boxes, candidate_scores, labels, iou_thr)[:max_det]
    return {
        "boxes": candidate_boxes[kept],  # (K, 4)
        "scores": candidate_scores[kept],  # (K,)
        "labels": labels[kept],  # (K,)
    }


# %% [markdown]
# On a made-up head output, 400 priors and 3 classes with mostly low scores, both give
# the same detections, in the same order, for three settings:

# %%
head_boxes = torch.cat([corner, corner + 5 + torch.rand(300, 2, generator=generator) * 60], 1)
shifts = 3 * torch.randn(100, 2, generator=generator).repeat(1, 2)  # (100, 4) moved boxes
head_boxes = torch.cat([head_boxes, head_boxes[:100] + shifts])  # (400, 4)
head_scores = torch.rand(400, 3, generator=generator) ** 4  # (A, C), most near 0
rows = []
for score_thr, iou_thr, max_det in [(0.001, 0.6, 100), (0.05, 0.6, 100), (0.3, 0.5, 10)]:
    mine = postprocess_by_hand(head_boxes, head_scores, score_thr, iou_thr, max_det)
    theirs = select_detections(head_boxes, head_scores, score_thr, iou_thr, max_det)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(mine[key], theirs[key]), key
    rows.append(
        {
            "score_thr": score_thr, "iou_thr": iou_thr, "max_det": max_det,
            "candidates": int((head_scores > score_thr).sum()), "detections": len(mine["scores"]),
        }
    )  # fmt: skip
pd.DataFrame(rows)

# %% [markdown]
# At `score_thr = 0.001` almost every (prior, class) pair is a candidate; per-class NMS
# thins them, and `max_det = 100` cuts the rest.
#
# ## 2. Precision, recall and AP by hand
#
# Evaluation turns detections into true and false positives. In one image and one
# class, go through the detections by decreasing score; each takes the ground-truth
# box of highest IoU among those **not yet matched**, if that IoU is at least the
# threshold (0.5 here): a true positive (TP). A detection that finds none is a false
# positive (FP): a duplicate of a matched object, a box on the background, a box too
# loose. Each ground-truth box is matched at most once.
#
# After the k best detections,
#
# $$\text{precision}_k = \frac{\mathrm{TP}_k}{k}, \qquad
# \text{recall}_k = \frac{\mathrm{TP}_k}{\text{number of ground-truth boxes}}.$$
#
# Three 10 × 10 ground-truth squares and six detections, listed best first: a square
# shifted by d px along x has IoU (10 − d) / (10 + d) with its own square.

# %%
gt_boxes_2 = torch.tensor(
    [[10.0, 10.0, 20.0, 20.0], [40.0, 10.0, 50.0, 20.0], [70.0, 10.0, 80.0, 20.0]]
)  # (3, 4): G1, G2, G3
det_boxes_2 = torch.tensor(
    [
        [11.0, 10.0, 21.0, 20.0],  # d1: G1 shifted 1 px, IoU 9/11
        [8.0, 10.0, 18.0, 20.0],  # d2: G1 shifted 2 px, IoU 8/12: a duplicate
        [42.0, 10.0, 52.0, 20.0],  # d3: G2 shifted 2 px, IoU 8/12
        [40.0, 40.0, 50.0, 50.0],  # d4: background
        [73.0, 10.0, 83.0, 20.0],  # d5: G3 shifted 3 px, IoU 7/13
        [65.0, 10.0, 75.0, 20.0],  # d6: G3 shifted 5 px, IoU 5/15
    ]
)  # (6, 4)
det_scores_2 = torch.tensor([0.95, 0.9, 0.8, 0.6, 0.5, 0.3])  # (6,)


def match_detections(det_boxes, det_scores, gt_boxes, iou_thr):
    """Greedy matching in one image and class -> (order (D,), matched gt (D,) or -1, IoU (D, G))."""
    order = torch.argsort(det_scores, descending=True, stable=True)  # (D,)
    iou = box_ops.box_iou(det_boxes[order], gt_boxes)  # (D, G)
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)  # (G,)
    matched = []
    for row in iou:
        free = torch.where(taken | (row < iou_thr), -1.0, row)  # (G,) -1: taken or too low
        best = int(free.argmax()) if len(free) else -1
        if best >= 0 and free[best] >= 0:
            taken[best] = True
            matched.append(best)
        else:
            matched.append(-1)
    return order, torch.tensor(matched), iou


order_2, matched_2, iou_2 = match_detections(det_boxes_2, det_scores_2, gt_boxes_2, 0.5)
is_tp = (matched_2 >= 0).numpy()  # (6,) in score order
cum_tp, cum_fp = np.cumsum(is_tp), np.cumsum(~is_tp)
precision_2 = cum_tp / (cum_tp + cum_fp)
recall_2 = cum_tp / len(gt_boxes_2)
envelope_2 = np.maximum.accumulate(precision_2[::-1])[::-1]  # max precision at this or more recall
table_2 = pd.DataFrame(
    {
        "score": det_scores_2[order_2].numpy().astype(float).round(2),
        "best IoU": iou_2.max(dim=1).values.numpy().astype(float),
        "gt": [f"G{g + 1}" if g >= 0 else "-" for g in matched_2.tolist()],
        "TP": is_tp.astype(int), "FP": (~is_tp).astype(int),
        "cum TP": cum_tp, "cum FP": cum_fp,
        "precision": precision_2, "recall": recall_2, "envelope": envelope_2,
    },
    index=[f"d{i + 1}" for i in order_2.tolist()],
)  # fmt: skip
significant(table_2, 3)

# %% [markdown]
# d2 overlaps G1 enough, but d1 took G1 first: a duplicate is a false positive. d6
# overlaps G3 too little (1/3). The precision zigzags: it falls at every FP and rises
# at every TP. The **envelope** replaces each precision by the best precision at this
# recall or more, the running maximum from the right: it is monotone, and it answers
# "what precision can I get if I want at least this recall?".

# %%
# By hand: TP/FP = T F T F T F, 3 gt
#   precision 1, 1/2, 2/3, 1/2, 3/5, 1/2
#   recall    1/3, 1/3, 2/3, 2/3, 1, 1
#   envelope  1, 2/3, 2/3, 3/5, 3/5, 1/2
np.testing.assert_allclose(precision_2, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5, 1 / 2])
np.testing.assert_allclose(recall_2, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
np.testing.assert_allclose(envelope_2, [1, 2 / 3, 2 / 3, 3 / 5, 3 / 5, 1 / 2])
# AP as the area under the envelope: each step of recall times the envelope there.
recall_steps = np.diff(recall_2, prepend=0.0)  # 1/3, 0, 1/3, 0, 1/3, 0
ap_area = float((recall_steps * envelope_2).sum())
# = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
assert np.isclose(ap_area, 34 / 45)
print(f"AP (area under the envelope) = {ap_area:.4f} = 34/45")

# %%
fig, ax = plt.subplots(figsize=(4.6, 3.4))
steps_recall = np.concatenate([[0.0], recall_2])
steps_envelope = np.concatenate([[envelope_2[0]], envelope_2])
ax.fill_between(steps_recall, steps_envelope, step="pre", alpha=0.2, color="tab:blue",
                label=f"area = AP = {ap_area:.3f}")  # fmt: skip
ax.step(steps_recall, steps_envelope, where="pre", color="tab:blue", label="envelope")
ax.plot(recall_2, precision_2, "o--", color="tab:orange", label="precision after each detection")
for name, x, y in zip(table_2.index, recall_2, precision_2, strict=True):
    ax.annotate(name, (x, y), xytext=(4, -11), textcoords="offset points", fontsize=8)
ax.set_xlabel("recall")
ax.set_ylabel("precision")
ax.set_xlim(0, 1.05)
ax.set_ylim(0, 1.1)
ax.set_title("precision-recall at IoU 0.5")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ## 3. COCO's AP
#
# ### 3.1 101 recall points
#
# COCO does not integrate the area exactly: it samples the envelope at the 101 recall
# points r = 0, 0.01, ..., 1, taking at each r the envelope at the **first** detection
# whose recall reaches r (0 if none does), and averages the 101 values. PASCAL VOC 2007
# used 11 points (0, 0.1, ..., 1); VOC 2010 and later the exact area of section 2.

# %%
rec_thrs = np.linspace(0.0, 1.0, 101)  # as pycocotools: linspace, not arange
first = np.searchsorted(recall_2, rec_thrs, side="left")  # (101,) first index with recall >= r
sampled_2 = np.where(first < len(recall_2), envelope_2[np.minimum(first, len(recall_2) - 1)], 0)
ap101_2 = float(sampled_2.mean())
# By hand: r = 0 .. 0.33 (34 points) -> 1; r = 0.34 .. 0.66 (33) -> 2/3;
# r = 0.67 .. 1 (34) -> 3/5: (34 + 22 + 20.4) / 101 = 76.4 / 101
assert np.isclose(ap101_2, 76.4 / 101)
print(f"101-point AP = {ap101_2:.4f}; exact area {ap_area:.4f}")

# %% [markdown]
# pycocotools works on COCO files; a tiny ground truth can be built in memory:
# `COCO()`, then a dataset dict with `images`, `categories` and `annotations`
# (`bbox` as `xywh`, an `area`, `iscrowd`), then `createIndex()`. Detections are result
# records `{"image_id", "category_id", "bbox", "score"}` that `loadRes` turns into a
# second `COCO` object. `COCOeval` prints as it goes; the two functions below keep it quiet.


# %%
def make_coco(images, categories, annotations):
    """A pycocotools COCO ground truth from lists of dicts, in memory."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        coco.createIndex()
    return coco


def run_cocoeval(coco_gt, records, summarize=True, **params):
    """COCOeval (bbox) of result records (at least one); params override COCOeval.params."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in records]), "bbox")
        for name, value in params.items():
            setattr(evaluator.params, name, value)
        evaluator.evaluate()
        evaluator.accumulate()
        if summarize:
            evaluator.summarize()
    return evaluator


def to_xywh(boxes):
    """(N, 4) xyxy tensor -> list of COCO [x, y, w, h] lists."""
    return box_ops.xyxy_to_xywh(boxes).tolist()


coco_2 = make_coco(
    [{"id": 1, "width": 100, "height": 60}],
    [{"id": 1, "name": "square"}],
    [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100.0, "iscrowd": 0}
        for i, box in enumerate(to_xywh(gt_boxes_2))
    ],
)
records_2 = [
    {"image_id": 1, "category_id": 1, "bbox": box, "score": float(score)}
    for box, score in zip(to_xywh(det_boxes_2), det_scores_2, strict=True)
]
eval_2 = run_cocoeval(coco_2, records_2)
# precision: (T IoU thresholds, R recall points, K categories, A area ranges, M maxDets)
print("COCOeval precision:", eval_2.eval["precision"].shape)
np.testing.assert_allclose(eval_2.eval["precision"][0, :, 0, 0, 2], sampled_2)  # IoU .5, all, 100
assert np.isclose(eval_2.stats[1], 76.4 / 101)  # stats[1] is AP50
print(f"COCOeval AP50 = {eval_2.stats[1]:.4f}, the 101-point AP above")

# %% [markdown]
# **Ten IoU thresholds.** COCO's headline AP ("AP@[.50:.95]") averages the 101-point
# AP over the IoU thresholds 0.50, 0.55, ..., 0.95, so it rewards tight boxes. AP50 and
# AP75 are single thresholds. For the six detections, by hand: at 0.55 to 0.65 d5
# (IoU 7/13 = 0.538) fails, at 0.70 to 0.80 d3 (2/3) fails too, from 0.85 even d1
# (9/11 = 0.818) fails.

# %%
per_threshold_2 = eval_2.eval["precision"][:, :, 0, 0, 2].mean(axis=1)  # (T,)
# By hand, in units of 1/101: 76.4; 56 three times (34 * 1 + 33 * 2/3); 34 three times; 0
by_hand_2 = np.array([76.4, 56, 56, 56, 34, 34, 34, 0, 0, 0]) / 101
np.testing.assert_allclose(per_threshold_2, by_hand_2)
assert np.isclose(eval_2.stats[0], by_hand_2.mean())  # AP = 346.4 / 1010
assert np.isclose(eval_2.stats[2], 34 / 101)  # AP75
print(f"AP {eval_2.stats[0]:.4f}  AP50 {eval_2.stats[1]:.4f}  AP75 {eval_2.stats[2]:.4f}")
significant(
    pd.DataFrame({"IoU threshold": eval_2.params.iouThrs, "AP": per_threshold_2})
    .set_index("IoU threshold")
    .T,
    3,
)

# %% [markdown]
# ### 3.2 The rules of `COCOeval`, exactly
#
# `COCOeval.evaluate` and `accumulate` (pycocotools `cocoeval.py`) do this for boxes:
#
# 1. **Per image and category.** Detections are matched only to ground truth of their
#    own image and category.
# 2. **Detections** of an image and category are sorted by decreasing score (a stable
#    sort) and cut to `maxDets[-1] = 100`: the limit is **per image and category**,
#    unlike `max_det` of `select_detections`, which is per image.
# 3. **Area range.** A ground-truth box is *ignored* when its annotation's `area` (not
#    its box's w × h; for the shapes set, its visible pixels) lies outside the range;
#    the ranges are all, small [0, 32²], medium [32², 96²], large [96², 10¹⁰], bounds
#    included on both sides. Ground truth is sorted with the ignored boxes last.
# 4. **Matching**, for each IoU threshold t: each detection in score order takes, among
#    the ground-truth boxes not yet matched, the one of highest IoU >= t (on a tie, the
#    later one), but once it holds a regular box it stops at the first ignored one, so
#    it prefers a regular box to an ignored box of higher IoU. A detection matched to
#    an ignored box is ignored; so is an unmatched detection whose w × h lies outside
#    the area range. Every other detection is a TP (matched) or an FP.
# 5. **Accumulate**, per category, area range and `maxDets` (1, 10, 100): each image's
#    first `maxDets` detections, concatenated in image order, sorted stably by score;
#    cumulative TP and FP; recall = TP / (non-ignored ground truth), precision =
#    TP / (TP + FP + ε); the envelope; the 101 samples. A category without non-ignored
#    ground truth gets −1 and is left out of every mean: detections of a class that is
#    absent from the set cost nothing.
# 6. **Summarize**: AP is the mean of the precision array over thresholds, recall
#    points and categories (area all, 100 detections), leaving out the −1; AP50, AP75,
#    APs, APm, APl likewise; AR1, AR10, AR100 average the last recall reached.
#
# Left out here: crowd annotations (`iscrowd = 1`), which are always ignored, may be
# matched by any number of detections, and use intersection over the detection's
# area as IoU. The shapes set has none. The code follows the rules one by one.

# %%
IOU_THRS = np.linspace(0.5, 0.95, 10)  # (T,) as pycocotools
REC_THRS = np.linspace(0.0, 1.0, 101)  # (R,)
AREA_RANGES = {"all": (0, 1e5**2), "small": (0, 32**2), "medium": (32**2, 96**2),
               "large": (96**2, 1e5**2)}  # fmt: skip
MAX_DETS = (1, 10, 100)


def coco_iou(dt_xywh, gt_xywh):
    """(D, 4) and (G, 4) xywh -> (D, G) IoU, in the order of pycocotools' C code."""
    d, g = dt_xywh[:, None, :], gt_xywh[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    return inter / (d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter)


def evaluate_image(gts, dts, area_range, max_det=MAX_DETS[-1]):
    """Rules 2 to 4 for one image and category: the TP / FP of each detection per threshold.

    gts: annotation dicts; dts: result records. Returns None when both are empty, else
    {"scores" (D,), "matched" (T, D) annotation id or -1, "tp" (T, D), "fp" (T, D),
    "num_gt": non-ignored ground truth}.
    """
    if not gts and not dts:
        return None
    assert not any(g.get("iscrowd", 0) for g in gts), "crowd annotations are left out here"
    low, high = area_range
    ignore = np.array([not low <= g["area"] <= high for g in gts], dtype=bool)  # (G,)
    gt_order = np.argsort(ignore, kind="stable")  # ignored last
    gts, ignore = [gts[i] for i in gt_order], ignore[gt_order].tolist()
    dt_order = np.argsort([-d["score"] for d in dts], kind="stable")[:max_det]
    dts = [dts[i] for i in dt_order]
    boxes = lambda items: np.array([x["bbox"] for x in items], dtype=np.float64).reshape(-1, 4)
    ious = coco_iou(boxes(dts), boxes(gts)).tolist()  # (D, G) as lists: fast to index
    matched = np.full((len(IOU_THRS), len(dts)), -1)  # (T, D) annotation id
    match_ignored = np.zeros((len(IOU_THRS), len(dts)), dtype=bool)  # (T, D)
    for t, thr in enumerate(IOU_THRS):
        taken = [False] * len(gts)
        for d in range(len(dts)):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(len(gts)):
                if taken[g]:
                    continue
                if m > -1 and not ignore[m] and ignore[g]:
                    break  # holds a regular box: ignored boxes come last
                if ious[d][g] < best:
                    continue
                best, m = ious[d][g], g
            if m > -1:
                taken[m] = True
                matched[t, d], match_ignored[t, d] = gts[m]["id"], ignore[m]
    area = np.array([d["bbox"][2] * d["bbox"][3] for d in dts])  # (D,) w * h
    outside = (area < low) | (area > high)  # (D,)
    is_matched = matched > -1  # (T, D)
    dt_ignore = np.where(is_matched, match_ignored, outside[None, :])  # (T, D)
    return {
        "scores": np.array([d["score"] for d in dts], dtype=np.float64),
        "matched": matched,
        "tp": is_matched & ~dt_ignore,
        "fp": ~is_matched & ~dt_ignore,
        "num_gt": len(ignore) - sum(ignore),
    }


def accumulate(per_image, max_det):
    """Rule 5 for one category and area range -> precision (T, R) and recall (T,), or -1."""
    per_image = [r for r in per_image if r is not None]
    num_gt = sum(r["num_gt"] for r in per_image)
    if num_gt == 0:
        return -np.ones((len(IOU_THRS), len(REC_THRS))), -np.ones(len(IOU_THRS))
    scores = np.concatenate([r["scores"][:max_det] for r in per_image])  # (N,)
    order = np.argsort(-scores, kind="stable")
    tp = np.concatenate([r["tp"][:, :max_det] for r in per_image], axis=1)[:, order]  # (T, N)
    fp = np.concatenate([r["fp"][:, :max_det] for r in per_image], axis=1)[:, order]
    tp_sum, fp_sum = np.cumsum(tp, axis=1, dtype=float), np.cumsum(fp, axis=1, dtype=float)
    recall = tp_sum / num_gt  # (T, N)
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(IOU_THRS), len(REC_THRS)))
    for t in range(len(IOU_THRS)):
        first = np.searchsorted(recall[t], REC_THRS, side="left")  # (R,)
        reached = first < recall.shape[1]
        sampled[t, reached] = envelope[t, first[reached]]
    last_recall = recall[:, -1] if recall.shape[1] else np.zeros(len(IOU_THRS))
    return sampled, last_recall


def coco_eval_by_hand(dataset, records, image_ids=None):
    """precision (T, R, K, A, M) and recall (T, K, A, M), as COCOeval.eval, by hand."""
    image_ids = sorted(image_ids or [image["id"] for image in dataset["images"]])
    cat_ids = sorted(category["id"] for category in dataset["categories"])
    gts, dts = defaultdict(list), defaultdict(list)
    for annotation in dataset["annotations"]:
        gts[annotation["image_id"], annotation["category_id"]].append(annotation)
    for record in records:
        dts[record["image_id"], record["category_id"]].append(record)
    shape = (len(cat_ids), len(AREA_RANGES), len(MAX_DETS))
    precision = -np.ones((len(IOU_THRS), len(REC_THRS), *shape))
    recall = -np.ones((len(IOU_THRS), *shape))
    for k, cat_id in enumerate(cat_ids):
        for a, area_range in enumerate(AREA_RANGES.values()):
            per_image = [
                evaluate_image(gts[i, cat_id], dts[i, cat_id], area_range) for i in image_ids
            ]
            for m, max_det in enumerate(MAX_DETS):
                precision[:, :, k, a, m], recall[:, k, a, m] = accumulate(per_image, max_det)
    return precision, recall


STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]  # fmt: skip


def summarize_by_hand(precision, recall):
    """Rule 6: the twelve numbers of COCOeval.stats (-1 where nothing is measured)."""

    def mean(values):
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    assert IOU_THRS[0] == 0.5 and IOU_THRS[5] == 0.75
    ap = [mean(precision[..., 0, 2]), mean(precision[0, ..., 0, 2]), mean(precision[5, ..., 0, 2])]
    ap += [mean(precision[..., a, 2]) for a in (1, 2, 3)]  # small, medium, large
    ar = [mean(recall[..., 0, m]) for m in (0, 1, 2)]  # maxDets 1, 10, 100
    ar += [mean(recall[..., a, 2]) for a in (1, 2, 3)]
    return dict(zip(STAT_NAMES, ap + ar, strict=True))


# %% [markdown]
# ### 3.3 A tiny COCO set, by hand and by pycocotools
#
# Two 200 × 200 images, three categories (ellipse, star, cross; the ids of the shapes
# set), seven boxes of every size, eleven detections. Cross 7 (31 × 31, small) sits
# almost on cross 6 (33 × 33, medium), and one detection lies between them: IoU 0.89
# with cross 6 and 0.94 with cross 7. No ellipse is in the set, but one detection says
# "ellipse".


# %%
def annotation(ann_id, image_id, category_id, bbox):
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": float(w * h), "iscrowd": 0}  # fmt: skip


def result(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


ELLIPSE, STAR, CROSS = 1, 4, 5
tiny_images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in (1, 2)]
tiny_categories = [{"id": ELLIPSE, "name": "ellipse"}, {"id": STAR, "name": "star"},
                   {"id": CROSS, "name": "cross"}]  # fmt: skip
tiny_annotations = [
    annotation(1, 1, STAR, [20, 20, 40, 40]),  # medium (1600 px²)
    annotation(2, 1, STAR, [70, 20, 20, 20]),  # small (400)
    annotation(3, 1, CROSS, [100, 90, 100, 100]),  # large (10000)
    annotation(4, 2, STAR, [10, 100, 120, 90]),  # large (10800)
    annotation(5, 2, CROSS, [150, 10, 28, 28]),  # small (784)
    annotation(6, 2, CROSS, [30, 20, 33, 33]),  # medium (1089)
    annotation(7, 2, CROSS, [33, 22, 31, 31]),  # small (961), on top of cross 6
]
tiny_records = [
    result(1, STAR, [22, 21, 40, 40], 0.9),  # star 1, IoU 0.86
    result(1, STAR, [70, 22, 20, 20], 0.8),  # star 2, IoU 0.82
    result(1, STAR, [25, 25, 40, 40], 0.7),  # a duplicate of star 1
    result(1, CROSS, [105, 95, 95, 100], 0.85),  # cross 3, IoU 0.86
    result(1, ELLIPSE, [100, 90, 100, 100], 0.6),  # cross 3 named ellipse
    result(1, STAR, [150, 20, 30, 30], 0.4),  # background, 900 px²
    result(2, CROSS, [150, 12, 28, 28], 0.95),  # cross 5, IoU 0.87
    result(2, CROSS, [32, 21, 32, 32], 0.75),  # between cross 6 (0.89) and cross 7 (0.94)
    result(2, CROSS, [29, 19, 34, 34], 0.65),  # cross 6 (0.94), cross 7 (0.83)
    result(2, STAR, [10, 100, 100, 90], 0.5),  # star 4, IoU 0.83
    result(2, STAR, [0, 90, 140, 110], 0.3),  # a loose duplicate of star 4
]
tiny_dataset = {"images": tiny_images, "categories": tiny_categories,
                "annotations": tiny_annotations}  # fmt: skip
tiny_coco = make_coco(tiny_images, tiny_categories, tiny_annotations)
tiny_eval = run_cocoeval(tiny_coco, tiny_records)
precision_tiny, recall_tiny = coco_eval_by_hand(tiny_dataset, tiny_records)
np.testing.assert_array_equal(precision_tiny, tiny_eval.eval["precision"])
np.testing.assert_array_equal(recall_tiny, tiny_eval.eval["recall"])
stats_tiny = summarize_by_hand(precision_tiny, recall_tiny)
np.testing.assert_array_equal(list(stats_tiny.values()), tiny_eval.stats)
print("by hand = COCOeval: precision (T, R, K, A, M), recall (T, K, A, M) and the 12 stats")

# %% [markdown]
# The rule of step 4 at work: the detection of score 0.75 between crosses 6 and 7.
# Over all areas it takes cross 7 (higher IoU). In the medium range cross 7 is
# ignored and sorted last, so the detection takes cross 6, a regular box, and stops
# there; in the small range cross 6 is the ignored one.

# %%
cross_gts = [a for a in tiny_annotations if a["image_id"] == 2 and a["category_id"] == CROSS]
cross_dts = [r for r in tiny_records if r["image_id"] == 2 and r["category_id"] == CROSS]


def outcome_at_50(outcome):
    """Per detection at IoU 0.5: the cross it takes and TP / ignored, or FP / ignored."""
    words = []
    for gt, tp, fp in zip(outcome["matched"][0], outcome["tp"][0], outcome["fp"][0], strict=True):
        state = "TP" if tp else "FP" if fp else "ignored"
        words.append(f"cross {gt}, {state}" if gt > 0 else state)
    return words


pd.DataFrame(
    {
        name: outcome_at_50(evaluate_image(cross_gts, cross_dts, AREA_RANGES[name]))
        for name in ("all", "medium", "small")
    },
    index=[f"score {d['score']}" for d in cross_dts],
).rename_axis("detection")

# %%
assert evaluate_image(cross_gts, cross_dts, AREA_RANGES["all"])["matched"][0].tolist() == [5, 7, 6]
assert evaluate_image(cross_gts, cross_dts, AREA_RANGES["medium"])["matched"][0, 1] == 6
assert evaluate_image(cross_gts, cross_dts, AREA_RANGES["small"])["matched"][0, 1] == 7
# The ellipse has no ground truth: its precision is -1 everywhere, left out of every mean.
assert (tiny_eval.eval["precision"][:, :, 0] == -1).all()

# %% [markdown]
# The twelve numbers, and the course's evaluator on the same records:
# `detutils.engine.evaluator.coco_evaluate` runs the same `COCOeval` and reports seven of
# them (NaN where COCOeval prints −1), plus AP, AP50 and AP75 per class, read from
# `eval["precision"]` at area all and 100 detections. `evaluate(model, loader)` runs
# the model, undoes the letterbox of each image, and calls `detections_to_coco` and
# `coco_evaluate`.

# %%
tiny_result = coco_evaluate(tiny_coco, tiny_records, [1, 2], ["ellipse", "star", "cross"],
                            [ELLIPSE, STAR, CROSS])  # fmt: skip
stats_table = pd.DataFrame(
    {
        "by hand": stats_tiny,
        "COCOeval": dict(zip(STAT_NAMES, tiny_eval.stats, strict=True)),
        "detutils": tiny_result.metrics,
    }
)
for name, value in tiny_result.metrics.items():
    assert np.isclose(value, stats_tiny[name]), name
significant(stats_table, 4)

# %%
tiny_names = ["ellipse", "star", "cross"]
per_class_by_hand = {  # mean of (T, R) at area all, 100 detections; -1 without ground truth
    name: precision_tiny[:, :, k, 0, 2].mean() for k, name in enumerate(tiny_names)
}
print(tiny_result.per_class.round(4).to_string())
assert np.isnan(tiny_result.per_class.loc["ellipse", "AP"])  # -1 by hand: no ground truth
for name in ("star", "cross"):
    assert np.isclose(tiny_result.per_class.loc[name, "AP"], per_class_by_hand[name])
star_and_cross = (per_class_by_hand["star"] + per_class_by_hand["cross"]) / 2
assert np.isclose(tiny_result.metrics["AP"], star_and_cross)

# %% [markdown]
# AP over the set is the mean of the per-class APs of the classes that have ground
# truth; the ellipse detection cost nothing. AR1 counts one detection per image **and
# category**: image 2 keeps its best cross and its best star.

# %%
# By hand, AR1: the best star of each image finds star 1 (IoU 0.86) and star 4 (0.83):
# recall 2/3 at the seven thresholds 0.50 .. 0.80, 1/3 at 0.85, 0 above -> mean 0.5.
# The best cross of each image finds cross 3 (0.86) and cross 5 (0.87) of 4 crosses:
# 1/2 at 0.50 .. 0.85, 0 above -> 0.4. AR1 = (0.5 + 0.4) / 2.
assert np.isclose(stats_tiny["AR1"], 0.45)
print(f"AR1 {stats_tiny['AR1']:.4f}, AR100 {stats_tiny['AR100']:.4f}")

# %% [markdown]
# ## 4. `score_thr`, `iou_thr` and `max_det`
#
# A network is not needed to see what the three knobs do: synthetic head outputs on
# the shapes validation set will do, with the failure modes of a real detector. For
# each ground-truth box, with seeded generators:
#
# - 8 % of the objects are missed (no candidate at all);
# - the others get 1 + Poisson(3) candidates: the box jittered by 2 % to 25 % of its
#   size (the neighbouring priors, the duplicates NMS must remove);
# - a candidate's score is `quality × IoU² + noise`, so better boxes score higher
#   (quality: how sure the detector is about this object, 0.5 to 1);
# - 10 % of the objects get their score under a wrong class (and 0.3 of it under the
#   right one); every other class gets a near-zero score (exponential, mean 0.0005);
# - about 15 boxes per image on the background, mostly with low scores.
#
# The sweeps use the first 100 validation images, to keep the notebook fast.

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
val_set = CocoDetection(*find_split(root, "val"))
image_ids = val_set.image_ids[:100]
num_classes = val_set.num_classes


def ground_truth(dataset, image_id):
    """(M, 4) xyxy float64 boxes and (M,) labels of an image, from a COCO dataset dict."""
    anns = [a for a in dataset["annotations"] if a["image_id"] == image_id]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    return boxes, np.array([val_set.cat_id_to_label[a["category_id"]] for a in anns])


def raw_outputs(gt_boxes, gt_labels, rng, size=320):
    """Synthetic head output of one image.

    Returns boxes (A, 4) and scores (A, C), float32 tensors, and each prior's IoU with its
    own object (A,), 0 on the background.
    """
    boxes, scores, ious = [], [], []
    for box, label in zip(gt_boxes, gt_labels, strict=True):
        if rng.random() < 0.08:  # missed
            continue
        count = 1 + rng.poisson(3)
        wh = np.tile(box[2:] - box[:2], 2)  # (4,) w, h, w, h
        spread = rng.uniform(0.02, 0.25, (count, 1))
        jittered = box + rng.normal(0.0, 1.0, (count, 4)) * spread * wh  # (n, 4)
        xy1 = np.minimum(jittered[:, :2], jittered[:, 2:])
        xy2 = np.maximum(jittered[:, :2], jittered[:, 2:])
        candidates = np.concatenate([xy1, xy2], axis=1).clip(0, size)  # (n, 4)
        iou = box_ops.box_iou(torch.from_numpy(candidates), torch.from_numpy(box[None]))[:, 0]
        iou = iou.numpy()  # (n,)
        quality = rng.uniform(0.5, 1.0)
        score = np.clip(quality * iou**2 + rng.normal(0.0, 0.05, count), 0.002, 0.99)
        row = rng.exponential(0.0005, (count, num_classes))  # (n, C) near zero
        named = label  # the class the head names; 10 %: another one
        if rng.random() < 0.1:
            named = (label + rng.integers(1, num_classes)) % num_classes
        row[:, named] = score
        if named != label:
            row[:, label] = 0.3 * score
        boxes.append(candidates)
        scores.append(row)
        ious.append(iou)
    count = rng.poisson(15)  # background
    centre = rng.uniform(0, size, (count, 2))
    side = 8 + 150 * rng.uniform(0, 1, (count, 2)) ** 2
    boxes.append(np.concatenate([centre - side / 2, centre + side / 2], axis=1).clip(0, size))
    row = rng.exponential(0.0005, (count, num_classes))
    row[np.arange(count), rng.integers(0, num_classes, count)] = np.minimum(
        rng.exponential(0.05, count), 0.9
    )
    scores.append(row)
    ious.append(np.zeros(count))
    as_tensor = lambda parts: torch.from_numpy(np.concatenate(parts)).float()
    return as_tensor(boxes), as_tensor(scores), np.concatenate(ious)


def make_outputs(dataset, seed):
    """Synthetic head outputs of the images `image_ids`, each from its own seeded generator."""
    return {
        image_id: raw_outputs(
            *ground_truth(dataset, image_id), np.random.default_rng([seed, image_id])
        )
        for image_id in image_ids
    }


val_dataset = val_set.coco.dataset
assert not any(a["iscrowd"] for a in val_dataset["annotations"])  # no crowd boxes
outputs = make_outputs(val_dataset, seed=3)
prior_scores = np.concatenate([s.max(dim=1).values.numpy() for _, s, iou in outputs.values()])
prior_ious = np.concatenate([iou for _, _, iou in outputs.values()])
on_objects = prior_ious > 0
correlation = np.corrcoef(prior_scores[on_objects], prior_ious[on_objects])[0, 1]
print(f"{len(image_ids)} images, {sum(len(b) for b, _, _ in outputs.values())} priors; "
      f"correlation of score and IoU on objects: {correlation:.3f}")  # fmt: skip
assert correlation > 0.5

# %%
image_id = image_ids[1]
image = val_set.load_image(image_id)
boxes, scores, _ = outputs[image_id]
best_scores = scores.max(dim=1).values  # (A,) the best class score of each prior
shown = best_scores > 0.05
after = select_detections(boxes, scores, score_thr=0.05, iou_thr=0.6, max_det=100)
gt_xyxy, gt_labels = ground_truth(val_dataset, image_id)
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
draw_boxes(image, gt_xyxy, gt_labels, class_names=val_set.class_names, ax=axes[0],
           linewidth=1, title="ground truth")  # fmt: skip
draw_boxes(image, boxes[shown], ax=axes[1], linewidth=1,
           title=f"{int(shown.sum())} raw boxes scoring > 0.05")  # fmt: skip
draw_boxes(image, after["boxes"], after["labels"], after["scores"], val_set.class_names,
           ax=axes[2], linewidth=1, title=f"{len(after['boxes'])} after NMS 0.6")  # fmt: skip
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The course's pipeline then runs as after a real network: `select_detections` per
# image, `detections_to_coco`, `coco_evaluate`. With the evaluator's defaults
# (`score_thr = 0.001`, `iou_thr = 0.6`, `max_det = 100`), and once more by hand:


# %%
def shapes_records(outputs, score_thr=0.001, iou_thr=0.6, max_det=100):
    """COCO result records of the synthetic outputs after postprocessing."""
    detections = [
        {"image_id": image_id, **select_detections(boxes, scores, score_thr, iou_thr, max_det)}
        for image_id, (boxes, scores, _) in outputs.items()
    ]
    return detections_to_coco(detections, val_set.label_to_cat_id)


baseline = shapes_records(outputs)
baseline_result = coco_evaluate(val_set.coco, baseline, image_ids, val_set.class_names,
                                val_set.label_to_cat_id)  # fmt: skip
baseline_by_hand = summarize_by_hand(*coco_eval_by_hand(val_dataset, baseline, image_ids))
for name, value in baseline_result.metrics.items():
    assert np.isclose(value, baseline_by_hand[name]), name
print(f"{len(baseline)} detections on {len(image_ids)} images")
print("detutils:", baseline_result)
print("by hand: ", "  ".join(f"{n} {baseline_by_hand[n]:.4f}" for n in baseline_result.metrics))

# %% [markdown]
# ### 4.1 The sweeps
#
# Each knob is moved alone, the others at the evaluator's defaults. The sweeps need
# only AP, AP50 and AR100, so they run `COCOeval` on the area range "all" with 100
# detections only, which skips three quarters of its matching; at the defaults that
# gives the numbers above.


# %%
def quick_metrics(records, coco_gt=val_set.coco):
    """AP, AP50, AR100 of COCOeval restricted to area "all" and 100 detections."""
    evaluator = run_cocoeval(coco_gt, records, summarize=False, imgIds=image_ids,
                             areaRng=[[0, 1e5**2]], areaRngLbl=["all"], maxDets=[100])  # fmt: skip
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]  # (T, R, K, 1, 1)
    mean = lambda values: float(values[values > -1].mean())
    return {"AP": mean(precision), "AP50": mean(precision[0]), "AR100": mean(recall)}


for name, value in quick_metrics(baseline).items():
    assert np.isclose(value, baseline_result.metrics[name]), name

defaults = {"score_thr": 0.001, "iou_thr": 0.6, "max_det": 100}
sweeps = {
    "score_thr": [0.001, 0.01, 0.05, 0.1, 0.25, 0.5],
    "iou_thr": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "max_det": [1, 3, 10, 30, 100, 300],
}
rows = []
for knob, values in sweeps.items():
    for value in values:
        records = shapes_records(outputs, **(defaults | {knob: value}))
        metrics = quick_metrics(records)
        rows.append({"knob": knob, "value": value, "detections": len(records), **metrics})
sweep = pd.DataFrame(rows)
significant(sweep.set_index(["knob", "value"]), 4)

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, knob in zip(axes, sweeps, strict=True):
    part = sweep[sweep["knob"] == knob]
    for metric, style in (("AP", "o-"), ("AP50", "s--"), ("AR100", "^:")):
        ax.plot(part["value"], part[metric], style, label=metric)
    ax.axvline(defaults[knob], color="0.7", linewidth=1)
    ax.set_xlabel(knob + (" (log)" if knob != "iou_thr" else ""))
    ax.set_xscale("linear" if knob == "iou_thr" else "log")
    ax.set_ylim(0, 1)
    ax.set_title(f"moving {knob}")
axes[0].set_ylabel("metric (grey: evaluator default)")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **`score_thr`.** Lowering the threshold only *adds* detections, and they come last
# in every ranking: NMS visits boxes best first, so a low-scored box never removes a
# better one, and COCO matches best first, so the matches of the better boxes stay.
# The precision-recall curve keeps its points and gains some at the high-recall end;
# the envelope can only rise. So AP can only grow as `score_thr` falls, here by almost
# nothing below 0.05, while the number of detections, and the time NMS and the
# evaluation take, keep growing. A display threshold (0.25 to 0.5, what a demo draws)
# cuts the curve short: the recall points it never reaches count as precision 0. That
# is why evaluation uses 0.001 (ultralytics, this course) or 0.05 (torchvision, mmdet,
# detectron2), never the display threshold.

# %%
by_score = sweep[sweep["knob"] == "score_thr"]
for metric in ("AP", "AP50", "AR100"):
    assert (np.diff(by_score[metric]) <= 1e-12).all(), metric  # never rises with score_thr
assert by_score["detections"].is_monotonic_decreasing
low, evaluation, display = (by_score.set_index("value").loc[v] for v in (0.001, 0.05, 0.25))
assert low["AP"] - evaluation["AP"] < 0.002 < evaluation["AP"] - display["AP"]
print(f"score_thr 0.001 -> 0.05: AP {low['AP']:.4f} -> {evaluation['AP']:.4f}, "
      f"detections {low['detections']:.0f} -> {evaluation['detections']:.0f}")  # fmt: skip
print(f"score_thr 0.25 (display): AP {display['AP']:.4f}")

# %%
# NBVAL_IGNORE_OUTPUT
# (times differ from machine to machine)
for score_thr in (0.001, 0.05):
    durations = []
    for _ in range(2):
        start = time.perf_counter()
        quick_metrics(shapes_records(outputs, score_thr=score_thr))
        durations.append(time.perf_counter() - start)
    print(f"score_thr {score_thr}: postprocessing and evaluation take {min(durations):.2f} s")

# %% [markdown]
# **`max_det`.** Keeping the best k detections of each image is a prefix of the
# ranking, so AP can only grow with k. One detection per image finds at most one of
# up to twelve objects; beyond about 30 the detections left are low-scored ones that
# change almost nothing. COCO's own cap, 100 per image and category, comes after it.
#
# **`iou_thr`.** At 0.9 most duplicates survive NMS: each is an FP with a high score,
# high up in the ranking, and AP50 falls. Lowering the threshold removes them, but a
# low threshold also removes a *real* object whose box overlaps a better-scored box of
# its class by more than `iou_thr`: recall (AR100) falls as the threshold does. In the
# shapes set that costs little, because few objects of one class overlap much:

# %%
by_max_det = sweep[sweep["knob"] == "max_det"]
for metric in ("AP", "AP50", "AR100"):
    assert (np.diff(by_max_det[metric]) >= -1e-12).all(), metric  # never falls with max_det
by_iou = sweep[sweep["knob"] == "iou_thr"].set_index("value")
assert by_iou.loc[0.9, "AP50"] < by_iou.loc[0.6, "AP50"] - 0.1  # duplicates
assert by_iou.loc[0.3, "AR100"] < by_iou.loc[0.9, "AR100"]  # neighbours lost
pairs = []
for image_id in val_set.image_ids:
    gt_xyxy, gt_labels = ground_truth(val_dataset, image_id)
    iou = box_ops.box_iou(torch.from_numpy(gt_xyxy), torch.from_numpy(gt_xyxy))
    same_class = torch.from_numpy(gt_labels[:, None] == gt_labels[None, :]).triu(diagonal=1)
    pairs += iou[same_class].tolist()
pairs = np.array(pairs)
pd.DataFrame(
    {
        "same-class pairs with IoU >": [0.3, 0.4, 0.5, 0.6],
        "of 500 images": [int((pairs > t).sum()) for t in (0.3, 0.4, 0.5, 0.6)],
    }
).set_index("same-class pairs with IoU >").T

# %% [markdown]
# ### 4.2 Touching objects
#
# Crowds are different: people in a queue, cars in a car park. Make the shapes
# crowded: give every object a twin of its class, shifted right by a third of its
# width (IoU 0.5 with the original, less where the image border cuts it), and
# generate the head outputs again. Now the detections of two twins overlap by about
# 0.5 and a low `iou_thr` merges them:


# %%
def with_twins(dataset):
    """A copy of a COCO dataset dict: every box gets a same-class twin, w / 3 to its right."""
    twins, next_id = [], max(a["id"] for a in dataset["annotations"]) + 1
    widths = {image["id"]: image["width"] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        x_twin = x + w / 3
        w_twin = min(x_twin + w, widths[ann["image_id"]]) - x_twin
        twins.append(ann | {"id": next_id + len(twins), "bbox": [x_twin, y, w_twin, h],
                            "area": w_twin * h})  # fmt: skip
    return dataset | {"annotations": dataset["annotations"] + twins}


crowded_dataset = with_twins(val_dataset)
crowded_coco = make_coco(crowded_dataset["images"], crowded_dataset["categories"],
                         crowded_dataset["annotations"])  # fmt: skip
crowded_outputs = make_outputs(crowded_dataset, seed=4)
crowded_rows = []
for iou_thr in sweeps["iou_thr"]:
    records = shapes_records(crowded_outputs, iou_thr=iou_thr)
    metrics = quick_metrics(records, crowded_coco)
    crowded_rows.append({"iou_thr": iou_thr, "detections": len(records), **metrics})
crowded = pd.DataFrame(crowded_rows).set_index("iou_thr")
significant(crowded, 4)

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(by_iou.index, by_iou["AP50"], "s--", color="tab:blue", label="AP50, shapes")
ax.plot(crowded.index, crowded["AP50"], "s-", color="tab:red", label="AP50, crowded")
ax.plot(crowded.index, crowded["AR100"], "^:", color="tab:red", label="AR100, crowded")
ax.set_xlabel("NMS iou_thr")
ax.set_ylabel("metric")
ax.set_ylim(0, 1)
ax.set_title("duplicates vs. touching objects")
ax.legend(fontsize=8)
plt.show()

# %%
best = crowded["AP50"].idxmax()
assert crowded.loc[0.3, "AP50"] < crowded.loc[best, "AP50"] - 0.1  # twins merged
assert crowded.loc[0.3, "AR100"] < crowded.loc[0.9, "AR100"] - 0.1
assert crowded.loc[0.9, "AP50"] < crowded.loc[best, "AP50"]  # duplicates
assert by_iou["AP50"].idxmax() < best  # a crowd wants a higher threshold
print(f"crowded: best AP50 at iou_thr {best}; shapes: at {by_iou['AP50'].idxmax()}")

# %% [markdown]
# The best threshold sits between two failures, duplicates above it and merged
# neighbours below, and depends on how crowded the data are: the course evaluates at
# 0.6, ultralytics at 0.7, torchvision's Faster R-CNN and mmdet's RetinaNet at 0.5.
# Choose it once, on validation data, and leave it; lower the score threshold for
# evaluation as far as time allows, and raise it only for display.
#
# ## Recap
#
# - Greedy NMS: sort by score, keep the best, drop boxes with IoU **>** `iou_thr`,
#   repeat. Per class by offsetting each class's boxes out of reach of the others
#   (`batched_nms`), or by a loop over classes.
# - `select_detections`: (prior, class) pairs above `score_thr`, at most 10000 to NMS,
#   per-class NMS, then the best `max_det` per image.
# - A detection is a TP if it takes an unmatched ground-truth box of its class with
#   IoU >= the threshold, best score first; precision and recall follow the ranking;
#   AP is the area under the precision envelope.
# - COCO samples the envelope at 101 recall points and averages over ten IoU
#   thresholds (AP), at 0.5 (AP50) and 0.75 (AP75), per area range (the annotation's
#   `area`, bounds included, out-of-range ground truth ignored and sorted last), with
#   at most 1, 10 or 100 detections per image and category; categories without ground
#   truth are left out.
# - `score_thr`: lower never hurts AP, it costs time. `max_det`: higher never hurts.
#   `iou_thr`: too high keeps duplicates, too low merges touching objects.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Per-class NMS by a loop over classes. Write
# `nms_per_class(boxes, scores, labels, iou_thr)` that runs `tv_ops.nms` on the boxes
# of each class separately and returns the kept indices into the input, a `(K,)` int64
# tensor sorted by decreasing score: what `tv_ops.batched_nms` returns. An input
# without boxes gives an empty tensor.

# %% tags=["solution"]
nms_per_class = None  # your function (boxes (N, 4), scores (N,), labels (N,), iou_thr) -> (K,)
### BEGIN SOLUTION


def nms_per_class(boxes, scores, labels, iou_thr):
    kept = [torch.zeros(0, dtype=torch.int64)]
    for label in labels.unique():
        index = torch.nonzero(labels == label).flatten()  # (N_c,) the boxes of this class
        kept.append(index[tv_ops.nms(boxes[index], scores[index], iou_thr)])
    kept = torch.cat(kept)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


### END SOLUTION

# %% tags=["check"]
generator = torch.Generator().manual_seed(5)
corner = torch.rand(200, 2, generator=generator) * 150
check_boxes = torch.cat([corner, corner + 5 + torch.rand(200, 2, generator=generator) * 50], 1)
check_scores = torch.rand(200, generator=generator)
check_labels = torch.randint(0, 4, (200,), generator=generator)
check_function(
    "nms_per_class", nms_per_class,
    [(example_boxes, example_scores, example_labels, 0.5),
     (example_boxes, example_scores, example_labels, 0.3),
     (check_boxes, check_scores, check_labels, 0.5)],
    tv_ops.batched_nms,
    hint="for each label: index = (labels == label).nonzero(); keep index[nms(...)]; then "
    "put all kept indices together and sort them by decreasing score.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
many_boxes = torch.cat([check_boxes] * 6) + torch.rand(1200, 4, generator=generator)
many_scores = torch.rand(1200, generator=generator)
many_labels = torch.randint(0, 6, (1200,), generator=generator)
check_function(
    "nms_per_class", nms_per_class,
    [(many_boxes, many_scores, many_labels, 0.6),
     (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)],
    tv_ops.batched_nms,
    hint="1200 boxes of 6 classes, and an input without boxes (an empty int64 tensor).",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** COCO's AP from a ranking. `is_tp` lists, best score first, whether
# each detection is a true positive; `num_gt` is the number of ground-truth boxes.
# Write `ap_101(is_tp, num_gt)` that returns COCO's AP as a float: cumulative precision
# and recall, the envelope, its value at the 101 recall points (0 where the recall is
# never reached), averaged. An empty list gives 0. The check builds each case as a
# tiny COCO set and asks pycocotools (through `coco_evaluate`) for its AP50.

# %% tags=["solution"]
ap_101 = None  # your function (is_tp: list of bool, best first; num_gt: int) -> float
### BEGIN SOLUTION


def ap_101(is_tp, num_gt):
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(np.asarray(is_tp, dtype=float))
    fp = np.cumsum(1.0 - np.asarray(is_tp, dtype=float))
    recall, precision = tp / num_gt, tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    sampled = np.where(first < len(recall), envelope[np.minimum(first, len(recall) - 1)], 0.0)
    return float(sampled.mean())


### END SOLUTION


# %% tags=["check"]
def coco_ap50(is_tp, num_gt):
    """pycocotools' AP50 for a ranking: TPs copy the next ground-truth box, FPs lie apart."""
    gts = [[40.0 * i, 0.0, 30.0, 30.0] for i in range(num_gt)]
    coco_gt = make_coco([{"id": 1, "width": 4000, "height": 400}], [{"id": 1, "name": "thing"}],
                        [annotation(i + 1, 1, 1, box) for i, box in enumerate(gts)])  # fmt: skip
    records, next_gt = [], 0
    for rank, tp in enumerate(is_tp):
        box = gts[next_gt] if tp else [40.0 * rank, 200.0, 30.0, 30.0]
        next_gt += bool(tp)
        records.append(result(1, 1, box, 1.0 - rank / 1000))
    return coco_evaluate(coco_gt, records, [1], ["thing"], [1]).metrics["AP50"]


check_function(
    "ap_101", ap_101,
    [([True, False, True, False, True, False], 3), ([False, True, True, False, False, True], 5),
     ([True, True], 4)],
    coco_ap50,
    hint="the first case is section 2's (76.4 / 101); precision and recall after each "
    "detection, the running maximum from the right, np.searchsorted(recall, r, 'left') "
    "for r in np.linspace(0, 1, 101), 0 past the last recall, then the mean.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
flags = np.random.default_rng(7).random((3, 12)) < 0.5
check_function(
    "ap_101", ap_101,
    [(row.tolist(), int(row.sum()) + 2) for row in flags] + [([], 2), ([False, False], 1)],
    coco_ap50,
    hint="random rankings, an empty one (AP 0) and one without a TP (AP 0).",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Predict, by hand, AP50 of the six detections of section 2 (3 ground
# truth boxes) after each change, and assign the three numbers:
#
# - `ap50_score_055`: with `score_thr = 0.55` (d5 and d6 go);
# - `ap50_max_det_2`: with `max_det = 2` (only d1 and d2 stay);
# - `ap50_nms_05`: after NMS at `iou_thr = 0.5` (d1 and d2 have IoU 7/13; no other
#   pair overlaps more than 0.5).

# %% tags=["solution"]
ap50_score_055 = ap50_max_det_2 = ap50_nms_05 = None  # three numbers
### BEGIN SOLUTION
# score_thr 0.55: T F T F, recall 2/3 at most: 34 points at 1, 33 at 2/3 -> 56 / 101
ap50_score_055 = (34 + 33 * 2 / 3) / 101
# max_det 2: T F, recall 1/3: 34 points at 1 -> 34 / 101
ap50_max_det_2 = 34 / 101
# NMS drops d2: T T F T F, precision 1, 1, 2/3, 3/4, 3/5; recall 1/3, 2/3, 2/3, 1, 1;
# envelope 1, 1, 3/4, 3/4, 3/5: 67 points (0 .. 0.66) at 1, 34 at 3/4 -> 92.5 / 101
ap50_nms_05 = (67 + 34 * 3 / 4) / 101
### END SOLUTION
print(ap50_score_055, ap50_max_det_2, ap50_nms_05)


# %% tags=["check"]
def ap50_of(keep):
    """detutils' AP50 of the section-2 detections whose indices are in keep."""
    kept_records = [records_2[i] for i in keep]
    return coco_evaluate(coco_2, kept_records, [1], ["square"], [1]).metrics["AP50"]


check_close(
    "ap50_score_055", ap50_score_055, ap50_of(torch.nonzero(det_scores_2 > 0.55).flatten()),
    hint="four detections stay: T F T F; the recall never passes 2/3, so the recall points "
    "0.67 .. 1 count 0.",
)  # fmt: skip
check_close(
    "ap50_max_det_2", ap50_max_det_2, ap50_of(range(2)),
    hint="two detections stay: T F; count the recall points up to 1/3.",
)  # fmt: skip
check_close(
    "ap50_nms_05", ap50_nms_05, ap50_of(tv_ops.nms(det_boxes_2, det_scores_2, 0.5)),
    hint="without the duplicate d2 the ranking is T T F T F; write precision, recall and "
    "the envelope, then count the recall points at each envelope value.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** From the IoU table of section 1 (six boxes, boxes 0, 1, 2, 4, 5 are
# stars, box 3 a cross), work out which boxes per-class NMS keeps at `iou_thr = 0.35`
# and at `iou_thr = 0.8`, and assign the two lists of indices, best score first, to
# `kept_035` and `kept_080`. Careful: a dropped box drops nothing.

# %% tags=["solution"]
kept_035 = kept_080 = None  # lists of box indices
### BEGIN SOLUTION
# 0.35: 0 drops 1 (0.796) and 2 (0.365), not 5 (0.328); 2 is gone, so 5 survives.
kept_035 = [0, 3, 4, 5]
# 0.8: 0 keeps 1 (0.796) and 2; 2 drops 5 (0.905).
kept_080 = [0, 1, 2, 3, 4]
### END SOLUTION
print(kept_035, kept_080)

# %% tags=["check"]
check_true(kept_035 is not None, "`kept_035` is still None: assign a list of box indices.",
           hint="go through the boxes by score; section 1's table gives every IoU.")  # fmt: skip
check_equal(
    "kept_035", [int(i) for i in kept_035],
    tv_ops.batched_nms(example_boxes, example_scores, example_labels, 0.35).tolist(),
    hint="box 2 overlaps box 0 by 0.365 > 0.35; once box 2 is dropped it cannot drop box 5, "
    "whose IoU with box 0 is only 0.328.",
)  # fmt: skip
check_true(kept_080 is not None, "`kept_080` is still None: assign a list of box indices.",
           hint="at 0.8 only pairs with IoU above 0.8 suppress each other.")  # fmt: skip
check_equal(
    "kept_080", [int(i) for i in kept_080],
    tv_ops.batched_nms(example_boxes, example_scores, example_labels, 0.8).tolist(),
    hint="which pairs of the same class have IoU above 0.8? Box 3 is the only cross.",
)  # fmt: skip
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - M. Everingham et al., *The PASCAL Visual Object Classes (VOC) Challenge*, IJCV 2010
#   (AP, 11-point interpolation):
#   <http://host.robots.ox.ac.uk/pascal/VOC/pubs/everingham10.pdf>
# - T.-Y. Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014,
#   <https://arxiv.org/abs/1405.0312>; the detection metrics:
#   <https://cocodataset.org/#detection-eval>
# - pycocotools `cocoeval.py`, the reference of section 3:
#   <https://github.com/cocodataset/cocoapi/blob/master/PythonAPI/pycocotools/cocoeval.py>
# - torchvision `nms` and `batched_nms` (`ops/boxes.py`) and the CPU kernel
#   (`csrc/ops/cpu/nms_kernel.cpp`): <https://github.com/pytorch/vision/tree/main/torchvision>
# - ultralytics `non_max_suppression`:
#   <https://github.com/ultralytics/ultralytics/blob/main/ultralytics/utils/nms.py>
# - N. Bodla et al., *Soft-NMS: Improving Object Detection With One Line of Code*,
#   ICCV 2017, <https://arxiv.org/abs/1704.04503> (decay the scores instead of dropping)
# - J. Hosang, R. Benenson, B. Schiele, *Learning non-maximum suppression*, CVPR 2017,
#   <https://arxiv.org/abs/1705.02950>
# - R. Padilla et al., *A Comparative Analysis of Object Detection Metrics with a
#   Companion Open-Source Toolkit*, Electronics 2021 (VOC and COCO AP side by side):
#   <https://github.com/rafaelpadilla/review_object_detection_metrics>
# - D. Bolya et al., *TIDE: A General Toolbox for Identifying Object Detection Errors*,
#   ECCV 2020, <https://arxiv.org/abs/2008.08115> (which error costs how much AP)
