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
# # 63 · Deformable DETR: training on the shapes set, from a pre-trained backbone
#
# Notebooks 60 to 62 took Deformable DETR apart: deformable attention over a pyramid of
# flattened maps, the queries and the Hungarian matching that gives each box exactly one
# of them, and the set loss on every decoder layer and on the encoder's proposals. This
# notebook trains the CPU preset `deformable-detr-r18half-d128` with the course's
# engine, starting, as the reference starts from ImageNet weights, from the backbone
# the course pre-trained on the shapes set (notebook 04). DETRs are known to converge
# slowly; the notebook keeps a copy of the network every 100 steps and measures two
# things on each: AP50, and how many queries end up on the same object. Then it scores
# the final network with COCO mAP and sets its AP50 curve beside those of the course's
# other detectors, against the number of images seen.
#
# **Learning goals**
#
# 1. Read Deformable DETR's three schedules beside mmdet's recipe, and say what the
#    `cpu` one keeps (the optimizer, the tenth of the rate, the clipping) and what it
#    changes.
# 2. Find which parameters learn at a tenth of the rate (`schedule.lr_multipliers`),
#    and train with `detutils.engine.train`.
# 3. Read the loss curves: the focal, L1 and GIoU terms of the last decoder layer, and
#    `aux`, the same terms of the earlier layers and of the encoder's proposals.
# 4. Count the queries that land on the same object as training goes on, with and
#    without NMS, and say why the one-to-one matching makes NMS unnecessary.
# 5. Read the COCO mAP table and the detections.
# 6. Set AP50 against images seen beside YOLOv8n, NanoDet-m, YOLOv3-tiny, ATSS and
#    Faster R-CNN, and say why a DETR converges slowly.
#
# **Prerequisites**: notebooks 60 (deformable attention), 61 (queries, references and
# the Hungarian matching), 62 (the set loss and the two-stage proposals), 04 (the
# pre-trained backbone), 43 and 52 (the same engine, schedules and evaluation for ATSS
# and Faster R-CNN).
#
# **Notation**: the letters of the shapes (B, S, Q, D, M, C, P, ...), the box formats
# and the flat prior index are those of [notebook 09](09_notation.ipynb). As in
# notebook 62, L counts the decoder layers, the first axis of the model's outputs.
#
# **The stored outputs come from a run on the `cpu` schedule** (about half an hour on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations of four
# small images, seconds), so every cell whose output depends on the schedule is marked
# to be left out of the comparison; run it yourself to see your own numbers.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import copy
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from torchvision.ops import nms

from detutils import current_schedule
from detutils.boxes import box_iou, cxcywh_norm_to_xyxy
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import significant
from detutils.data import (
    CocoDetection,
    build_train_set,
    build_transforms,
    collate,
    ensure_shapes,
    find_split,
)
from detutils.engine import evaluate, postprocess_detections, read_training_log, train
from detutils.engine.presets import schedules_for
from detutils.engine.pretrain import load_pretrained
from detutils.engine.schedule import build_optimizer
from detutils.engine.trainer import intra_op_threads, move_targets
from detutils.models import build_detector
from detutils.viz import compare_detections, plot_losses

# %% [markdown]
# ## 1. Three schedules
#
# Deformable DETR's schedules, by name (`DETUTILS_SCHEDULE` picks one, notebook 00); the
# fields where they differ:

# %%
schedules = schedules_for("deformable-detr-r18half-d128")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** is mmdet's recipe for `deformable-detr_r50_16xb2-50e_coco` on the R50
#   builds (`deformable-detr-r50`, and `deformable-detr-r50-refine-two-stage` with box
#   refinement and two stages): AdamW at 2e-4 for 32 images a step (16 GPUs x 2), weight
#   decay 1e-4, a tenth of the rate for the backbone, the sampling offsets and the
#   reference points (`lr_multipliers`, mmdet's `custom_keys` with `lr_mult`), the
#   gradient's norm clipped at 0.1, 50 epochs with the rate divided by 10 after epoch 40,
#   no warm-up, and ImageNet weights for the ResNet-50 with its stem and first stage
#   frozen and its batch norms fixed. Where it differs from mmdet: square 800 px
#   letterboxed images (mmdet: the shorter side resized to one of 480 to 800 px, and
#   random crops), colour jitter beside the flips, mixed precision, and weight decay on
#   weights only (mmdet decays every parameter, norms and biases included).
# - **`cpu`** trains the preset `deformable-detr-r18half-d128`: the half-width
#   ResNet-18 of ATSS's and Faster R-CNN's presets, from the course's pre-training
#   (notebook 04), trained whole; a transformer of width D = 128 (FFN 512), 3 encoder
#   and 3 decoder layers, Q = 100 queries, box refinement and two stages, no dropout.
#   It keeps the reference's optimizer: AdamW at the reference's rate, its weight decay,
#   the tenth for the same parameters and the clipping at 0.1. DETRs are trained at
#   1e-4 to 2e-4 with AdamW in every reference (Carion et al.: 1e-4, and a tenth for the
#   backbone; Zhu et al.: 2e-4), well below the rate of the course's `cpu` schedules
#   for ATSS and Faster R-CNN. Batch, image size, length, warm-up, cosine and
#   time guard are the rows below; images are decoded into memory once, as for the
#   other `cpu` schedules.
# - **`ci`** only checks that everything runs: three steps of four small images, with
#   the same factors and clipping.
#
# Clipping at 0.1 is tight: the norm of the whole gradient, over all the parameters,
# is far larger (section 3 measures it), so nearly every step is scaled down. With
# AdamW that changes less than it seems: Adam divides each step by a running root mean
# square of the gradients, so a gradient scaled down at every step by the same factor
# gives the same update. What the clipping does is weigh the steps alike: every
# clipped gradient enters Adam's moments with the same norm, so that a step with a huge
# gradient (early on, or after a matching that changed) moves them no more than
# another.
#
# mmdet's recipe (`configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py` with
# `coco_detection.py`), the `gpu` schedule and the `cpu` one; the two course columns are
# read from the schedules:

# %%
reference = {
    "optimizer": "AdamW, beta1 0.9",
    "learning rate": "0.0002; x 0.1 for backbone, sampling_offsets, reference_points",
    "weight decay": "0.0001, on every parameter",
    "images per step": "32 (16 GPUs x 2)",
    "length": "50 epochs",
    "image size": "multi-scale: shorter side 480 to 800 (longer at most 1333), random crops",
    "warm-up": "none",
    "decay": "x 0.1 at epoch 40",
    "EMA of the weights": "no",
    "mixed precision": "no (float32)",
    "augmentation": "flip, random resize and crop",
    "gradient clipping": "norm 0.1",
    "time guard": "none",
    "initial weights": "ResNet-50 trained on ImageNet",
}
recipes = pd.DataFrame(
    {
        "reference": reference,
        "gpu": schedules["gpu"].recipe() | {"initial weights": "ResNet-50 trained on ImageNet"},
        "cpu": schedules["cpu"].recipe()
        | {"initial weights": "half-width ResNet-18 pre-trained on shapes crops"},
    }
)
recipes

# %% [markdown]
# ## 2. Data and model
#
# `build_detector` builds the network from its initialisation; the backbone weights
# that `config.pretrained` names are loaded by the trainer when a new run starts
# (notebook 04).

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
torch.manual_seed(0)
model = build_detector("deformable-detr-r18half-d128", num_classes=train_set.num_classes)


def num_tokens(size: int) -> int:
    """S, the encoder's tokens at a square input of ``size`` px (levels at strides 8 ...)."""
    return sum(math.ceil(size / (8 * 2**level)) ** 2 for level in range(model.config.num_levels))


train_data = build_train_set(train_set, schedule)
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %% [markdown]
# With two stages the decoder's Q queries are the encoder's Q best tokens, so the input
# must give at least Q tokens: at 64 px the four levels give 8² + 4² + 2² + 1 = 85,
# fewer than the preset's 100 queries (the model says so with an error), which is why
# this detector's `ci` schedule uses 128 px images (340 tokens).

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
steps_per_epoch = len(train_set) // schedule.batch_size
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px ({schedule.iterations / steps_per_epoch:.3g} epochs "
    f"of {steps_per_epoch} steps), {schedule.optimizer} lr {schedule.lr:g}"
)
print(f"S = {num_tokens(schedule.img_size)} tokens for Q = {model.config.num_queries} queries")
print(f"backbone weights to load: {model.config.pretrained}")

# %% [markdown]
# The parameters by part, at the set's six classes. The backbone holds more than half;
# the transformer at width 128 is small. With box refinement every decoder layer has
# its own class and box heads, and two stages add one more pair for the encoder's
# proposals.

# %%
parts = {
    "backbone": [model.backbone],
    "channel mapper": [model.neck],
    "encoder": [model.encoder, model.level_embed],
    "decoder": [model.decoder],
    "class and box heads": [model.cls_branches, model.reg_branches],
    "two stages (proposal embedding)": [
        model.memory_trans_fc, model.memory_trans_norm, model.pos_trans_fc, model.pos_trans_norm
    ],
}  # fmt: skip


def count(items) -> int:
    return sum(
        item.numel() if isinstance(item, torch.nn.Parameter) else
        sum(p.numel() for p in item.parameters())
        for item in items
    )  # fmt: skip


counts = pd.Series({name: count(items) for name, items in parts.items()})
counts["total"] = sum(p.numel() for p in model.parameters())
counts.to_frame("parameters")

# %% [markdown]
# Which parameters learn at a tenth of the rate? `build_optimizer` splits the two usual
# groups (weights that decay, norms and biases that do not) by the factor of
# `schedule.lr_multipliers`: a parameter whose name contains a listed part (the first
# that matches) trains at that factor times the rate. The groups it makes, with their
# starting rates (the trainer's scheduler then multiplies each by the warm-up and the
# cosine), and what each listed part matches:

# %%
# NBVAL_IGNORE_OUTPUT
# (the rates of this run's schedule)
optimizer = build_optimizer(model, schedule)
pd.DataFrame(
    [
        {
            "group": group["name"],
            "lr": group["lr"],
            "weight decay": group["weight_decay"],
            "tensors": len(group["params"]),
            "parameters": sum(p.numel() for p in group["params"]),
        }
        for group in optimizer.param_groups
    ]
).set_index("group")

# %%
names = [name for name, _ in model.named_parameters()]
pd.DataFrame(
    [
        {
            "name contains": part,
            "factor": factor,
            "tensors": sum(part in name for name in names),
            "parameters": sum(p.numel() for n, p in model.named_parameters() if part in n),
        }
        for part, factor in schedule.lr_multipliers
    ]
).set_index("name contains")

# %% [markdown]
# `reference_points` matches nothing here: with two stages the reference boxes come
# from the encoder's best proposals (notebook 62), and the linear layer that makes
# reference points from the query embeddings (`reference_points_fc` in the single-stage
# build) does not exist. The sampling offsets of every deformable attention, in the
# encoder and in the decoder, learn at a tenth: a step on them moves where every head
# samples, and the reference lets them leave their initial star of directions
# (notebook 60) slowly while the rest learns.
#
# ## 3. Training
#
# The same loop as every detector of the course, with Deformable DETR's `loss`: the
# forward pass gives every decoder layer's classes and boxes and the encoder's
# proposals; `loss` matches each of them with the Hungarian algorithm and sums the set
# losses (notebook 62). The callback keeps a copy of the network every 100 steps (every
# step on the `ci` schedule, whose run has three); the copy at step 0 is the network
# the trainer starts from, the initialisation with the pre-trained backbone loaded. The
# command line trains the same way:
#
# ```
# python -m detutils.train --model deformable-detr-r18half-d128 --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
every = 100 if schedule.iterations >= 100 else 1
snapshots = {0: copy.deepcopy(model)}
load_pretrained(snapshots[0], verbose=False)  # what train() does first: step 0


def keep(step: int, network: torch.nn.Module) -> None:
    if step % every == 0:
        snapshots[step] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)


run_dir = root.parents[1] / "runs" / "63_deformable_detr"
start = time.monotonic()
result = train(
    model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False,
    on_step=keep,
)  # fmt: skip
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
print(f"{60 * minutes / result.iterations:.3g} s a step, data loading included")
model = result.model.eval()
snapshots[result.iterations] = model  # the last step, also when the time guard ended the run
print("networks kept after steps", sorted(snapshots))

# %% [markdown]
# What the clipping compares: the norm of the whole gradient, over every parameter, of
# the loss of one batch of validation images, for the network at step 0 and at the
# end (a copy in training mode, as the trainer sees it).

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
probe_images, probe_targets = collate([val_set[index] for index in range(schedule.batch_size)])


def gradient_norm(network: torch.nn.Module) -> float:
    network = copy.deepcopy(network).to(device).train()
    losses = network.loss(network(probe_images.to(device)), move_targets(probe_targets, device))
    losses["loss"].backward()
    return float(torch.nn.utils.clip_grad_norm_(network.parameters(), math.inf))


with intra_op_threads(device, schedule.threads):
    for step in (0, result.iterations):
        norm = gradient_norm(snapshots[step])
        print(f"step {step}: gradient norm {norm:.3g}, {norm / schedule.grad_clip:.3g} times "
              f"the limit {schedule.grad_clip:g}")  # fmt: skip

# %% [markdown]
# ## 4. The loss curves
#
# The trainer's log has one row per step: `cls`, `l1` and `giou`, the three terms of
# the last decoder layer (the one `predict` reads) with their weights 2, 5 and 2;
# `aux`, the sum of the same three terms for every earlier decoder layer and for the
# encoder's proposals (exercise 4 counts them); and `loss`, everything. Every term is
# divided by the number of boxes of the batch (notebook 62). Left: the last layer's
# terms; middle: `aux` and `loss`; right: the learning rate of the plain parameters
# and of those at a tenth.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
smooth = max(1, len(train_log) // 20)
tenth = min(factor for _, factor in schedule.lr_multipliers)
figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
plot_losses(train_log, x="iteration", columns=["cls", "l1", "giou"], ax=axes[0], smooth=smooth,
            title="last decoder layer")  # fmt: skip
plot_losses(train_log, x="iteration", columns=["aux", "loss"], ax=axes[1], smooth=smooth,
            title="earlier layers and proposals; total")  # fmt: skip
axes[2].plot(train_log["iteration"], train_log["lr"], label="lr")
axes[2].plot(train_log["iteration"], tenth * train_log["lr"], label=f"x {tenth:g}")
axes[2].set(xlabel="iteration", ylabel="learning rate", title="schedule")
axes[2].legend(fontsize=8)
figure.tight_layout()
plt.show()
copies = model.config.num_decoder_layers - 1 + int(model.config.as_two_stage)
train_log["cls + l1 + giou"] = train_log["cls"] + train_log["l1"] + train_log["giou"]
train_log[f"aux / {copies} copies"] = train_log["aux"] / copies
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
columns = ["cls", "l1", "giou", "cls + l1 + giou", "aux", f"aux / {copies} copies", "loss"]
pd.DataFrame(
    {"first step": train_log.iloc[0], "first fifth": first.mean(), "last fifth": last.mean()}
).loc[columns]

# %% [markdown]
# How to read them:
#
# - **Where `cls` starts.** A matched query whose class probability is the prior 0.01
#   costs 2 × 0.25 × 0.99² × ln 100 ≈ 2.26 in the focal term, and an unmatched one next
#   to nothing (the focal loss of p = 0.01 against 0 is 0.75 × 0.01² × ln(1/0.99)), so
#   `cls`, divided by the number of boxes, starts near 2.26 per box. The first row of
#   the table is somewhat lower: the logits of the untrained class heads scatter around
#   the prior, and the matching picks for each box the queries that already give its
#   class the most probability (the focal cost, notebook 61). It falls as the matched
#   queries learn their class.
# - **`l1` and `giou` measure the matched boxes.** Early in training the matching
#   itself changes from step to step (the cheapest query for a box today may not be
#   tomorrow's), so these terms are noisy: a box whose query changed is measured on a
#   query that has not learnt it.
# - **`aux` is several copies of the same three terms**, one for each earlier decoder
#   layer and one for the encoder's proposals; the table divides it by the number of
#   copies, to set it beside the last layer's `cls + l1 + giou`. Each decoder layer
#   refines the boxes of the one before, so the earlier layers' terms usually stay above
#   the last one's; the proposals' copy scores one class, "object" (notebook 62).
# - **The learning rate** rises over the warm-up from 1 % of the rate, then follows
#   the cosine; the backbone and the sampling offsets follow a tenth of it.
#
# ## 5. How many queries land on one object
#
# A dense detector gives each object many positives and needs NMS to remove the boxes
# they all predict (notebooks 21, 41, 50). A DETR gives each object one query per
# layer; every other query, however close its box, is taught "no object" (notebook
# 61). Does the trained network then report each object once? With two stages the
# question is real: the decoder's 100 queries start from the encoder's 100 best
# proposals, and neighbouring tokens on one object propose nearly the same box, so
# several queries start on each object.
#
# Each network kept in section 3 runs once over the first 100 validation images (16 on
# the `ci` schedule). From that single pass come AP50 on those images (`evaluate`, the
# COCO metrics of notebook 13) and, for each ground-truth box, the number of queries
# that *find* it: queries whose best class score is at least 0.3 (and, looser, 0.1)
# and whose box overlaps it with an IoU of 0.5 or more. A wrapper keeps each query's
# best score and box of the last decoder layer while `evaluate` runs the network, as
# section 6 of notebook 43 wrapped ATSS to change its scores. The evaluations run on
# the schedule's threads, as training does.

# %%
# NBVAL_IGNORE_OUTPUT
# (the number of images depends on the schedule)
num_snap = 16 if schedule_name == "ci" else 100
snap_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_snap)), collate_fn=collate, num_workers=0
)
snap_boxes = [target["boxes"] for _, targets in snap_loader for target in targets]  # (M_i, 4)
print(f"{num_snap} images, {sum(len(boxes) for boxes in snap_boxes)} objects")


class KeepQueries(torch.nn.Module):
    """The same detector; keeps each query's best class score and its box, last layer."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.scores, self.boxes = [], []  # per image: (Q,), (Q, 4) xyxy input px

    def forward(self, images: torch.Tensor):
        outputs = self.detector(images)
        image_size = self.detector.image_size(outputs)
        self.scores += list(outputs.cls_logits[-1].float().sigmoid().amax(dim=-1).cpu())
        self.boxes += list(cxcywh_norm_to_xyxy(outputs.boxes[-1].float(), image_size).cpu())
        return outputs

    def predict(self, outputs, **settings):
        return self.detector.predict(outputs, **settings)


def queries_per_object(
    scores: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, score_thr: float,
    iou_thr: float = 0.5,
) -> torch.Tensor:  # fmt: skip
    """(M,) for each ground-truth box, the queries that score ``score_thr`` or more and
    overlap it by ``iou_thr`` or more; ``scores`` (Q,), ``boxes`` (Q, 4) xyxy px."""
    confident = boxes[scores >= score_thr]  # (K, 4)
    return (box_iou(gt_boxes, confident) >= iou_thr).sum(dim=1)


def duplicates(kept: KeepQueries, score_thr: float, nms_thr: float | None = None) -> dict:
    """Queries per object over the kept images; with ``nms_thr``, after NMS."""
    counts, confident = [], 0
    for scores, boxes, gt_boxes in zip(kept.scores, kept.boxes, snap_boxes, strict=True):
        if nms_thr is not None:
            keep_index = nms(boxes, scores, nms_thr)  # class-agnostic, best score first
            scores, boxes = scores[keep_index], boxes[keep_index]
        counts.append(queries_per_object(scores, boxes, gt_boxes, score_thr))
        confident += int((scores >= score_thr).sum())
    counts = torch.cat(counts).float()  # (objects,)
    found = counts >= 1
    return {
        "queries per object": counts.mean().item(),
        "queries per found object": counts[found].mean().item() if found.any() else math.nan,
        "found": found.float().mean().item(),
        "found more than once": (counts >= 2).float().mean().item(),
        "queries at or above the score, per image": confident / len(kept.scores),
    }


# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
start = time.monotonic()
snap_metrics, kept_queries = {}, {}
with intra_op_threads(device, schedule.threads):
    for step, network in sorted(snapshots.items()):
        kept_queries[step] = KeepQueries(network.to(device))
        snap_metrics[step] = evaluate(kept_queries[step], snap_loader, device).metrics
print(f"{len(snapshots)} networks on {num_snap} images in {time.monotonic() - start:.0f} s")
rows = {}
for step, kept in kept_queries.items():
    row = {("", "AP50"): snap_metrics[step]["AP50"]}
    for score_thr in (0.3, 0.1):
        row |= {(f"score >= {score_thr:g}", k): v for k, v in duplicates(kept, score_thr).items()}
        after = duplicates(kept, score_thr, nms_thr=0.6)["found more than once"]
        row[(f"score >= {score_thr:g}", "found more than once, after NMS 0.6")] = after
    rows[step] = row
found_table = pd.DataFrame(rows).rename_axis(columns="step")
significant(found_table.T, 3).T

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
steps = list(found_table.columns)
figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for score_thr, style in [(0.3, "-"), (0.1, "--")]:
    part = found_table.loc[f"score >= {score_thr:g}"]
    axes[0].plot(steps, part.loc["queries per found object"], style, marker="o",
                 label=f"score >= {score_thr:g}")  # fmt: skip
    axes[1].plot(steps, part.loc["found"], style, marker="o", color="C0",
                 label=f"found, score >= {score_thr:g}")  # fmt: skip
    axes[1].plot(steps, part.loc["found more than once"], style, marker="o", color="C1",
                 label=f"found more than once, score >= {score_thr:g}")  # fmt: skip
axes[0].axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
axes[0].set(xlabel="training step", ylabel="queries", title="queries per found object")
axes[1].set(xlabel="training step", ylabel="share of the objects", ylim=(0, 1.02),
            title="objects found, and found more than once")  # fmt: skip
for axis in axes:
    axis.legend(fontsize=8)
figure.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
loose = found_table.loc["score >= 0.1"]
for step in steps:
    per_found = loose.loc["queries per found object", step]
    print(
        f"step {step:4d}: at score >= 0.1, {loose.loc['found', step]:.0%} of the objects found, "
        f"{loose.loc['found more than once', step]:.0%} more than once"
        + (f", {per_found:.3g} queries per found object" if per_found == per_found else "")
    )

# %% [markdown]
# What to look for in the table and the curves:
#
# - **At step 0** the class heads still give every query about the prior 0.01, so
#   hardly a query reaches 0.1 and hardly an object is found; the encoder's proposals,
#   and with them the queries' boxes, are chosen by untrained scores.
# - **Early in training, duplicates grow.** The class heads first learn what a shape
#   looks like, for every query that looks at one; with several queries starting on
#   each object (neighbouring proposals), an object is found by more than one query, at
#   0.1 more often than at 0.3. This is what a dense detector looks like before NMS. In
#   the `cpu` run stored here the share of objects found more than once rose with the
#   share found, from the first snapshot to the last (the lines printed above): 500
#   steps of 8 images are two passes over the training set, and all of them belong to
#   this first phase.
# - **Over many epochs, they fall.** Only the one query the matching picks for a box
#   learns its class; every other query on it is pushed towards "no object" at every
#   step. To obey, a query must know that another one already covers its object: the
#   decoder's self-attention shows each query the others, and the queries learn to
#   stand down. That takes far longer than learning the shapes (Carion et al. train
#   DETR for 500 epochs, the Deformable DETR reference for 50); once it is done,
#   `predict` can take the best 100 (query, class) pairs without NMS.
# - **After NMS at 0.6** (class-agnostic, on each query's best score; the last row of
#   each block) the only duplicates left are pairs of boxes on one object that overlap
#   each other by 0.6 or less (exercise 3). The gap to the row "found more than once"
#   is what NMS would still remove.
#
# Does NMS still buy anything at the end? The last network on the same images, scored
# once more with NMS per class at 0.6 on its (query, class) pairs, as the course's
# dense detectors are post-processed (`postprocess_detections`), beside its scores
# without NMS from the table above:


# %%
class QueriesWithNMS(torch.nn.Module):
    """The same detector, its queries post-processed as a dense detector's priors."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor):
        return self.detector(images)

    def predict(self, outputs, score_thr: float = 0.001, iou_thr: float = 0.6, max_det=100):
        image_size = self.detector.image_size(outputs)
        boxes = cxcywh_norm_to_xyxy(outputs.boxes[-1].float(), image_size)  # (B, Q, 4)
        scores = outputs.cls_logits[-1].float().sigmoid()  # (B, Q, C)
        return postprocess_detections(boxes, scores, score_thr, iou_thr, max_det)


# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
with intra_op_threads(device, schedule.threads):
    with_nms = evaluate(QueriesWithNMS(model), snap_loader, device).metrics
columns = ["AP", "AP50", "AP75", "AR100"]
nms_table = pd.DataFrame(
    [snap_metrics[result.iterations], with_nms], index=["top 100, no NMS (predict)", "NMS 0.6"]
)[columns]
nms_table.loc["difference"] = nms_table.iloc[1] - nms_table.iloc[0]
significant(nms_table, 3)

# %% [markdown]
# Carion et al. measured the same on DETR (their section 4.2): NMS helps the
# predictions of the first decoder layers, which still hold duplicates, and costs a
# little on the last layer's, where it removes true positives that happen to overlap;
# once the queries have learnt to stand down, it has nothing left to do. A network
# stopped as early as a `cpu` run still holds many duplicates, and the difference row
# says what NMS buys it; the course's `predict` keeps the reference's rule (no NMS),
# which is what the training teaches towards.
#
# ## 6. COCO mAP
#
# `evaluate` runs the model over the validation images, maps the detections back to
# each image file and scores them with pycocotools (notebook 13, section 5). For
# Deformable DETR its `score_thr` (0.001) and `max_det` (100) apply and its `iou_thr` is
# ignored: `predict` takes the 100 best (query, class) pairs, no NMS. The `ci` run
# evaluates 16 images only.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
with intra_op_threads(device, schedule.threads):
    evaluation = evaluate(model, val_loader, device)
print(f"{evaluation.num_images} images, {evaluation.num_detections} detections")
pd.DataFrame([evaluation.metrics], index=["six classes"])

# %%
# NBVAL_IGNORE_OUTPUT
# (per-class AP of this run)
evaluation.per_class

# %% [markdown]
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, under the ground truth; no NMS.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
batch = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(batch), score_thr=0.3, max_det=100)
compare_detections(samples, detections, val_set.class_names)
plt.show()

# %% [markdown]
# ## 8. Convergence beside the course's other detectors
#
# DETRs converge slowly: DETR needed 500 epochs on COCO, and most of the papers that
# followed it set out to shorten that. The README records how fast the course's other
# detectors learn the shapes set: AP50 on the 500 validation images after 100 to 500
# steps of 16 images, each on its own `cpu` schedule, in float32, on a 2-core CPU,
# measured by `benchmarks/sample_efficiency.py` (YOLOv8n, NanoDet-m and YOLOv3-tiny,
# from random weights), `benchmarks/atss_peer.py` (ATSS, seed 0) and
# `benchmarks/faster_rcnn_peer.py` (Faster R-CNN), the last two from the same
# pre-trained backbone as this run. Steps of different batch sizes compare fairly by the
# images seen, steps × batch. Beside them, this run's AP50 from section 5 (the first 100
# validation images, or 16 on `ci`: a noisier estimate) and its final AP50 on all the
# validation images from section 6:

# %%
readme_steps = [100, 200, 300, 400, 500]
measured = pd.DataFrame(
    {
        "YOLOv8n (random init)": [0.012, 0.148, 0.244, 0.306, 0.333],
        "NanoDet-m (random init)": [0.093, 0.205, 0.290, 0.383, 0.417],
        "YOLOv3-tiny (random init)": [0.008, 0.152, 0.287, 0.397, 0.441],
        "ATSS (pre-trained backbone)": [0.240, 0.447, 0.557, 0.650, 0.671],
        "Faster R-CNN (pre-trained backbone)": [0.291, 0.527, 0.636, 0.715, 0.726],
    },
    index=pd.Index([16 * step for step in readme_steps], name="images seen"),
)  # the README's tables: AP50 after 100 to 500 steps of 16 images

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
this_run = pd.Series(
    {step * schedule.batch_size: snap_metrics[step]["AP50"] for step in steps},
    name="Deformable DETR, this run",
)
convergence = measured.join(this_run, how="outer").rename_axis("images seen")
significant(convergence, 3)

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
figure, axis = plt.subplots(figsize=(7, 4))
for position, name in enumerate(measured.columns):
    style = "--" if "random" in name else "-"
    axis.plot(measured.index, measured[name], style, marker="o", color=f"C{position}",
              label=name, linewidth=1)  # fmt: skip
axis.plot(this_run.index, this_run.values, "-", marker="s", color="black", linewidth=2,
          label=f"{this_run.name} (first {num_snap} val images)")  # fmt: skip
images_done = result.iterations * schedule.batch_size
axis.plot([images_done], [evaluation.metrics["AP50"]], "*", color="black", markersize=12,
          label=f"this run, all {evaluation.num_images} val images")  # fmt: skip
axis.set(xlabel="images seen (steps x batch)", ylabel="AP50", ylim=(0, 1),
         title="AP50 against images seen")  # fmt: skip
axis.legend(fontsize=7)
figure.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
final_ap50 = evaluation.metrics["AP50"]
print(f"this run: AP50 {final_ap50:.3f} after {images_done:,} images "
      f"({result.iterations} steps of {schedule.batch_size})")  # fmt: skip
for name in ["ATSS (pre-trained backbone)", "Faster R-CNN (pre-trained backbone)"]:
    curve = measured[name]
    if curve.index[0] <= images_done <= curve.index[-1]:
        at_same = np.interp(images_done, curve.index, curve.values)
        print(f"{name}: AP50 {at_same:.3f} after as many images (interpolated)")
    reached = curve[curve >= final_ap50]
    if len(reached):
        print(f"{name}: first measured at or above {final_ap50:.3f} after {reached.index[0]:,} "
              f"images (AP50 {reached.iloc[0]:.3f})")  # fmt: skip
    else:
        print(f"{name}: below {final_ap50:.3f} up to {curve.index[-1]:,} images")

# %% [markdown]
# Read the curves at the same number of images. ATSS and Faster R-CNN start from the
# same pre-trained backbone as this run, so the gap to them is what the detector and
# its recipe cost (the batch and the rate differ too, section 1); YOLOv8n, NanoDet-m
# and YOLOv3-tiny start from random weights, which costs them the first thousands of
# images. Why does a DETR learn slower?
#
# - **Set prediction must first break the symmetry among the queries.** Many queries
#   start alike, near the same object, and the matching gives the object to whichever
#   is cheapest at that step. While they are alike that choice flips from step to
#   step: a query is taught "this box" at one step and "no object" at the next, and
#   the two lessons cancel. Li et al. (DN-DETR, 2022) name this instability of the
#   bipartite matching as a cause of DETR's slow convergence, and feed the decoder
#   noised copies of the ground-truth boxes, whose targets do not depend on any
#   matching, to make training faster.
# - **One positive per box.** The one-to-one matching gives each object one query per
#   layer (and one encoder proposal) to learn from; ATSS gives it every anchor whose
#   IoU passes the mean + std of its candidates', usually several, and Faster R-CNN
#   every anchor above 0.7 and every proposal above 0.5 (notebooks 41, 50, 51). Each
#   image teaches the DETR's heads less about each object, and most of its queries
#   learn only "no object".
# - **The reference recipes say the same on COCO.** mmdet trains ATSS and Faster R-CNN
#   for 12 epochs (the 1x schedule, 39.4 and 37.4 box AP with a ResNet-50), Deformable
#   DETR for 50 (44.3; 46.2 with box refinement, 47.0 with two stages too), and DETR
#   needed 500 epochs (Carion et al.); deformable attention, which looks at a few
#   points instead of the whole map, is what cut DETR's 500 to 50 (Zhu et al.).
# - **What came next attacks exactly this.** DN-DETR and DINO (Zhang et al., 2022) add
#   denoising queries; Co-DETR (Zong et al., 2023), the course's next detector, keeps
#   the one-to-one matching for the decoder that predicts, and adds auxiliary heads
#   with one-to-many assignments during training only (an ATSS head and a Faster
#   R-CNN head on the encoder's output), so that the encoder learns from many positives
#   per object as a dense detector does; their positives also become extra queries for
#   the decoder.
#
# ## 9. What to expect
#
# **In half an hour, on one CPU.** The run stored above, the schedule as it is
# (float32, 2 torch threads); its minutes, step time and metrics are printed in
# sections 3, 6 and 8. A slower CPU takes longer per step; the time guard ends the run
# early there, the cosine ending at the deadline (`lr_by_time`, notebook 92), and the
# tables of section 5 then end at the last step reached.
#
# **`gpu`** (mmdet's recipe on the R50 builds): not run for this course, so no figure
# is promised. For scale, mmdet's model zoo gives `deformable-detr_r50_16xb2-50e_coco`
# 44.3 box AP on COCO val2017 after 50 epochs of 32 images a step (46.2 with box
# refinement, 47.0 with box refinement and two stages), from ImageNet weights; its
# README warns that the results fluctuate by about 0.3 AP from run to run. 50 epochs
# of COCO's 118k images at 32 a step are about 185,000 steps, four times ATSS's 1x
# schedule in images.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule keeps Deformable DETR's matching, losses and optimizer (AdamW
#   at the reference's rate and weight decay, a tenth of the rate for the backbone and
#   the sampling offsets, the gradient clipped at 0.1), shrinks the transformer and
#   starts from the course's pre-trained backbone.
# - The loss is the set loss of the last decoder layer (`cls`, `l1`, `giou`) plus the
#   same terms of every earlier layer and of the encoder's proposals (`aux`).
# - Several queries can find the same object, early in training most of all; the
#   one-to-one matching teaches all but one of them "no object", and the decoder's
#   self-attention lets them learn to stand down, so that a trained DETR needs no NMS.
# - DETRs learn slower per image seen than dense and two-stage detectors (on COCO, 50
#   epochs against 12): the queries must break their symmetry through a matching that
#   keeps changing, and each object gives one positive. Section 8 sets this run beside
#   the course's other detectors, against images seen.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Steps of different batch sizes compare by the images they show.
# Write `images_seen(steps, batch_size)`, the number of images (an int) that `steps`
# optimizer steps of `batch_size` images show the network, and
# `steps_for(images, batch_size)`, the smallest number of steps (an int) that shows at
# least `images` images. Then set `matching_steps`, the steps of this notebook's
# `schedule` that show as many images as ATSS's 500 steps of 16.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the batch size of the schedule)
images_seen = None  # your function (int, int) -> int
steps_for = None  # your function (int, int) -> int
matching_steps = None  # int
### BEGIN SOLUTION


def images_seen(steps: int, batch_size: int) -> int:
    return steps * batch_size


def steps_for(images: int, batch_size: int) -> int:
    return -(-images // batch_size)  # ceil without floats


matching_steps = steps_for(images_seen(500, 16), schedule.batch_size)
### END SOLUTION
if matching_steps is not None:
    print(f"{matching_steps} steps of {schedule.batch_size} images")

# %% tags=["check"]
check_function(
    "images_seen", images_seen, [(100, 16), (600, 8), (0, 8), (3, 4)],
    lambda steps, batch: steps * batch, hint="every step shows batch_size images",
)  # fmt: skip
check_function(
    "steps_for", steps_for, [(8000, 8), (8000, 16), (1600, 16), (12, 4)],
    lambda images, batch: images // batch, hint="images / batch_size when it divides",
)  # fmt: skip
check_equal(
    "matching_steps", matching_steps, math.ceil(500 * 16 / schedule.batch_size),
    hint="steps_for(images_seen(500, 16), schedule.batch_size)",
)  # fmt: skip
### BEGIN HIDDEN TESTS
for images, batch, expected in [(10, 4, 3), (1, 8, 1), (17, 16, 2), (0, 8, 0)]:
    check_equal(
        f"steps_for({images}, {batch})", steps_for(images, batch), expected,
        hint="round up: a step that shows some of the images still counts (math.ceil)",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `lr_of(name, schedule)`: the peak learning rate (a float) of the
# parameter called `name` (as `model.named_parameters()` names it) under `schedule`:
# `schedule.lr` times the factor of the first `(part, factor)` of
# `schedule.lr_multipliers` whose part occurs in `name`, or times 1 when none does.
# The check compares it with the groups `build_optimizer` makes for `model`.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the learning rate of the schedule)
lr_of = None  # your function (str, TrainSchedule) -> float
### BEGIN SOLUTION


def lr_of(name: str, schedule) -> float:
    factor = next((f for part, f in schedule.lr_multipliers if part in name), 1.0)
    return schedule.lr * factor


### END SOLUTION
if lr_of is not None:
    rates = pd.Series([lr_of(name, schedule) for name, _ in model.named_parameters()])
    print(rates.value_counts().rename("tensors"))

# %% tags=["check"]
check_true(
    callable(lr_of), f"`lr_of` should be a function, got {type(lr_of).__name__}",
    hint="def lr_of(name, schedule): ...",
)  # fmt: skip
group_lr = {
    id(parameter): group["lr"]
    for group in build_optimizer(model, schedule).param_groups
    for parameter in group["params"]
}
sample = [
    name for name, _ in model.named_parameters()
    if any(part in name for part in ("backbone.", "sampling_offsets", "attention_weights",
                                     "cls_branches.0", "neck.convs.0"))
][::7]  # fmt: skip
parameters = dict(model.named_parameters())
check_function(
    "lr_of", lr_of, [(name, schedule) for name in sample],
    lambda name, _: group_lr[id(parameters[name])],
    hint="schedule.lr times the factor of the first part found in the name, else 1",
)  # fmt: skip
### BEGIN HIDDEN TESTS
ordered = schedule.replace(lr=1.0, lr_multipliers=(("attn", 0.5), ("sampling_offsets", 0.1)))
for name, expected in [
    ("encoder.0.self_attn.sampling_offsets.weight", 0.5),  # the first match wins
    ("decoder.1.ffn.layers.0.weight", 1.0),
    ("decoder.2.cross_attn.value_proj.bias", 0.5),
]:
    check_close(
        f"lr_of({name!r}, <lr 1, multipliers (('attn', 0.5), ('sampling_offsets', 0.1))>)",
        lr_of(name, ordered), expected,
        hint="the first (part, factor) whose part is in the name decides, as in mmdet",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Duplicates, by hand, and what NMS leaves of them. Two ground-truth
# boxes, `gt_by_hand`, and six detections, one per query, with their scores
# (`boxes_by_hand`, `scores_by_hand`, xyxy px). Set `before`, a list of two ints: for
# each ground-truth box, the detections scoring 0.3 or more whose box overlaps it with
# an IoU of 0.5 or more; and `after`, the same counts after class-agnostic NMS at 0.6
# on the detections (`torchvision.ops.nms` removes a box whose IoU with a better one is
# above the threshold). Work it out with `box_iou` and `nms`, or on paper.

# %%
gt_by_hand = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 260.0, 260.0]])
boxes_by_hand = torch.tensor(
    [
        [0.0, 0.0, 100.0, 100.0],  # 0
        [5.0, 5.0, 105.0, 105.0],  # 1
        [0.0, 0.0, 100.0, 55.0],  # 2
        [0.0, 0.0, 100.0, 100.0],  # 3
        [202.0, 198.0, 262.0, 258.0],  # 4
        [150.0, 0.0, 190.0, 40.0],  # 5
    ]
)
scores_by_hand = torch.tensor([0.9, 0.6, 0.5, 0.2, 0.35, 0.8])

# %% tags=["solution"]
before = None  # list of 2 ints
after = None  # list of 2 ints
### BEGIN SOLUTION
confident = scores_by_hand >= 0.3
before = (box_iou(gt_by_hand, boxes_by_hand[confident]) >= 0.5).sum(dim=1).tolist()
kept = nms(boxes_by_hand[confident], scores_by_hand[confident], 0.6)
after = (box_iou(gt_by_hand, boxes_by_hand[confident][kept]) >= 0.5).sum(dim=1).tolist()
### END SOLUTION
print("before NMS:", before, " after NMS:", after)

# %% tags=["check"]
check_true(
    isinstance(before, list) and isinstance(after, list),
    f"`before` and `after` should be lists of two ints, got {type(before).__name__} and "
    f"{type(after).__name__}",
    hint="(box_iou(gt_by_hand, confident_boxes) >= 0.5).sum(dim=1).tolist()",
)
# Detection 3 scores below 0.3 and detection 5 overlaps nothing. On box 0: detection 0
# (IoU 1), 1 (95² / (2 x 100² - 95²) = 0.822) and 2 (5500 / 10000 = 0.55): 3. On box 1:
# detection 4 (58² / (2 x 60² - 58²) = 0.877): 1. NMS keeps 0, removes 1 (IoU 0.822
# with 0), keeps 2 (IoU 0.55 with 0, below 0.6), keeps 4: 2 and 1.
check_equal(
    "before", before, [3, 1],
    hint="leave out detection 3 (score 0.2); a detection can overlap a box by 0.5 without "
    "being the same box",
)  # fmt: skip
check_equal(
    "after", after, [2, 1],
    hint="nms on the detections that pass the score, then count again; IoU 0.55 between "
    "two boxes is not above 0.6, so both stay",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "queries_per_object(scores_by_hand, boxes_by_hand, gt_by_hand, 0.3).tolist()",
    queries_per_object(scores_by_hand, boxes_by_hand, gt_by_hand, 0.3).tolist(), before,
    hint="the lesson's function counts the same",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# So a duplicate that overlaps the better box by less than the NMS threshold survives
# NMS and still lands on the object; a dense detector lives with such pairs, a DETR
# must learn not to make them.
#
# **Exercise 4.** How many terms does the loss sum? Write
# `count_loss_terms(num_decoder_layers, two_stage)`: the number of terms (an int) that
# `loss_terms` returns for a Deformable DETR with that many decoder layers, with or
# without two stages (three terms, focal, L1 and GIoU, for each set of predictions that
# is matched; notebook 62). Then set `aux_terms`, the number of those terms that `aux`
# sums for this notebook's `model` (read its `config`).

# %% tags=["solution"]
count_loss_terms = None  # your function (int, bool) -> int
aux_terms = None  # int
### BEGIN SOLUTION


def count_loss_terms(num_decoder_layers: int, two_stage: bool) -> int:
    return 3 * (num_decoder_layers + int(two_stage))


aux_terms = count_loss_terms(model.config.num_decoder_layers, model.config.as_two_stage) - 3
### END SOLUTION
if aux_terms is not None:
    print(f"{aux_terms} terms in aux")

# %% tags=["check"]
check_function(
    "count_loss_terms", count_loss_terms, [(6, False), (6, True), (3, True), (1, False)],
    lambda layers, two_stage: 3 * layers + 3 * two_stage,
    hint="3 per decoder layer, and 3 for the encoder's proposals with two stages",
)  # fmt: skip
torch.manual_seed(0)
tiny_model = build_detector("deformable-detr-r18half-d128", num_classes=train_set.num_classes)
tiny_targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
with torch.no_grad():
    tiny_terms = tiny_model.loss_terms(tiny_model(torch.rand(1, 3, 128, 128)), tiny_targets)
check_equal(
    "aux_terms", aux_terms, len(tiny_terms) - 3,
    hint="every term but the last layer's cls, l1 and giou",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "count_loss_terms(3, True)", count_loss_terms(3, True), len(tiny_terms),
    hint="the preset: 3 decoder layers and two stages",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, *Deformable DETR: Deformable
#   Transformers for End-to-End Object Detection*, ICLR 2021,
#   <https://arxiv.org/abs/2010.04159> (convergence against DETR; the training recipe).
# - N. Carion, F. Massa, G. Synnaeve, N. Usunier, A. Kirillov, S. Zagoruyko, *End-to-End
#   Object Detection with Transformers* (DETR), ECCV 2020,
#   <https://arxiv.org/abs/2005.12872> (500 epochs; section 4.2: NMS and the decoder
#   layers).
# - F. Li, H. Zhang, S. Liu, J. Guo, L. M. Ni, L. Zhang, *DN-DETR: Accelerate DETR
#   Training by Introducing Query DeNoising*, CVPR 2022,
#   <https://arxiv.org/abs/2203.01305> (the instability of the matching early in
#   training).
# - H. Zhang, F. Li, S. Liu, L. Zhang, H. Su, J. Zhu, L. M. Ni, H.-Y. Shum, *DINO: DETR
#   with Improved DeNoising Anchor Boxes for End-to-End Object Detection*, 2022 (ICLR
#   2023), <https://arxiv.org/abs/2203.03605>.
# - Z. Zong, G. Song, Y. Liu, *DETRs with Collaborative Hybrid Assignments Training*
#   (Co-DETR), ICCV 2023, <https://arxiv.org/abs/2211.12860> (one-to-many auxiliary
#   heads for a one-to-one detector).
# - mmdet, `configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py` and its
#   README (the model zoo's box AP).
