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
# # 13 · YOLOv3: training YOLOv3-tiny on the shapes set
#
# Notebooks 10 to 12 took YOLOv3 apart: what the network emits, which predictions each
# box is given to, and what the loss asks of every prediction. This notebook puts the
# pieces back together and trains YOLOv3-tiny from scratch on the shapes set with the
# course's engine, then measures it the way detectors are compared: COCO mAP, computed
# by pycocotools. A training run on a laptop CPU has minutes, not days, so the first
# section is about the *schedule*: how long to train, at which image size, and how to
# plan the learning rate so that it has decayed by the time the budget is spent.
#
# **Learning goals**
#
# 1. Read a training schedule (`ci`, `cpu`, `gpu`) and say what each of its numbers
#    does; plan a learning rate for a fixed time budget.
# 2. Train a detector with `detutils.engine.train` and read its loss curves.
# 3. Compute COCO AP, AP50 and AP by object size and by class with
#    `detutils.engine.evaluate`, and read the table.
# 4. Find where a young detector loses its AP: in finding the objects, or in naming
#    them.
#
# **Prerequisites**: notebooks 10 (outputs), 11 (targets) and 12 (loss); notebook 00
# (the shapes set and the schedules).
#
# **The stored outputs come from a run on the `cpu` schedule** (eight minutes on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations at
# 64 px, seconds), so every cell whose output depends on the schedule (the training
# log, the metrics, the figures of the trained model) is marked to be left out of the
# comparison; run it yourself to see your own numbers.

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
import copy
import io
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import build_yolov3_targets, pad_ground_truth
from detutils.data import (
    CocoDetection,
    build_train_set,
    build_transforms,
    collate,
    ensure_shapes,
    find_split,
)
from detutils.engine import evaluate, plot_training_log, read_training_log, train
from detutils.engine.presets import schedules_for
from detutils.engine.schedule import lr_factor
from detutils.models import build_detector
from detutils.viz import draw_boxes

# %% [markdown]
# ## 1. Three schedules
#
# A `TrainSchedule` holds every number of a run. YOLOv3-tiny's config carries three,
# one per schedule name; `DETUTILS_SCHEDULE` picks one (notebook 00). The fields where
# they differ:

# %%
schedules = schedules_for("yolov3-tiny")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
differs = table.astype(str).nunique(axis=1) > 1
table[differs]

# %% [markdown]
# - **`gpu`** follows the recipe of the reference (ultralytics/yolov3, archive branch,
#   `train.py`): SGD with Nesterov momentum 0.937 at learning rate 0.01, weight decay
#   5e-4, 300 epochs of 64 images per step (the reference accumulates four batches of
#   16), a warm-up of 3 epochs, a cosine decay to 5 % of the rate, mixed precision and
#   an exponential moving average of the weights. It is not the reference's run: the
#   reference trains on several image sizes (320 to 640 px; here 416 px), scales the
#   class gain by C / 80 for C classes (here the COCO gain, notebook 12), ramps `gr`,
#   the momentum, the weight decay and the biases' rate during warm-up (here one ramp
#   of the rate for every group), and does not clip the gradient (here at a norm of
#   10).
# - **`cpu`** must show a detector learning within ten minutes of a 2-core CPU,
#   evaluation included, and is designed for float32, the arithmetic every CPU has: 500
#   steps of sixteen images at the set's 320 px, four passes over the 2,000 training
#   images. Every choice serves learning fast: AdamW (it moves faster than SGD in the
#   first few hundred steps), a warm-up of half an epoch, random flips and colour jitter
#   on images decoded into memory once, and one evaluation, at the end. The weights are
#   laid out *channels-last* (`channels_last`): the channels of each pixel side by side
#   in memory, the layout the CPU's convolution kernels read fastest. On a CPU with
#   native bfloat16 kernels (AVX512-BF16 or AMX), `amp` (`--amp` on the command line)
#   runs the convolutions in *bfloat16*, a 16-bit float with float32's 8-bit exponent
#   and a 7-bit mantissa, so nothing overflows and no loss scaling is needed, while the
#   weights, the loss and the optimizer stay in float32; there a step took half the
#   time, so more steps fit. A CPU without them trains in float32 whatever `amp` says.
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# The `cpu` run is planned in *iterations*, not epochs: the learning rate follows a
# linear warm-up, then a cosine that reaches its floor at the last planned iteration.
# Planned in epochs, a run stopped by its time budget would stop with the rate still
# high, and keep the weights of a noisy mid-training step. `max_minutes` (8.75)
# guards the budget on a slower machine, and `lr_by_time` makes the schedule follow
# whichever clock is further along, the iterations or the minutes: a machine that
# keeps to the plan gets exactly the curve below, a slower one reaches the floor at
# its deadline with fewer steps.

# %%
cpu = schedules["cpu"]
steps_per_epoch = math.ceil(2000 / cpu.batch_size)  # the shapes set: 2,000 training images
warmup = round(cpu.warmup_epochs * steps_per_epoch)
iterations = torch.arange(cpu.iterations)
rates = [cpu.lr * lr_factor(int(i), cpu.iterations, cpu, warmup) for i in iterations]
figure, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(iterations, rates)
ax.set(xlabel="iteration", ylabel="learning rate", title="the cpu schedule")
plt.show()
epochs = cpu.iterations / steps_per_epoch
print(f"warm-up {warmup} iterations, {cpu.iterations} in all = {epochs:.2f} epochs")

# %% [markdown]
# ## 2. Data and model
#
# The shapes set (notebook 00), letterboxed to the schedule's image size.
# `build_train_set` applies the rest of the schedule's data settings: on the `cpu`
# schedule, random flips and colour jitter, and the 2,000 images decoded into memory
# once (a PNG decode costs more than the augmentation). The model is built for its
# six classes, with the prior-probability bias initialisation of notebook 10.

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules_for("yolov3-tiny")[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
train_data = build_train_set(train_set, schedule)  # flip, colour jitter, decoded once
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
model = build_detector("yolov3-tiny", num_classes=train_set.num_classes)
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# `train` runs the loop of `detutils.engine.train`: forward, `model.loss`, backward,
# gradient clipping, optimizer step, learning rate; it writes `train_log.csv` (one row
# per iteration) and `last.pt` into the run folder. The command line does the same:
#
# ```
# python -m detutils.train --model yolov3-tiny --data data/shapes --schedule cpu
# ```
#
# No validation set is passed here: the model is evaluated once, in section 5.

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "13_yolov3_tiny"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: the three terms of notebook 12 and their sum (faint: every iteration; solid: a
# running mean). Right: the learning rate the trainer used at each iteration.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["box", "obj", "cls", "loss"]
]

# %% [markdown]
# On the `cpu` run the three terms move at different paces (the table: their means over
# the first and the last fifth of the run). The box term falls first and does most of
# its fall within 300 steps: a box's place and size can be read off colours and edges.
# The objectness term, averaged over every cell and so noisy from batch to batch,
# falls once the boxes are roughly right. The class term falls steadily, and only
# flattens when the learning rate runs out: telling a hexagon from an ellipse needs
# shape features that a network trained from scratch builds slowly. Section 6 shows
# what that costs in AP.
#
# ## 5. COCO mAP
#
# `evaluate` runs the model over the validation images, maps each detection back to
# the pixels of its image file, and lets pycocotools' `COCOeval` score them. AP is the
# mean over IoU thresholds 0.50 to 0.95 and over classes; AP50 counts a detection as
# right when its IoU with a box of its class is at least 0.5; APs, APm, APl split the
# objects by area (below 32², up to 96², above). The `ci` run evaluates 16 images
# only, to stay fast.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
evaluation = evaluate(model, val_loader, device)
print(f"{evaluation.num_images} images, {evaluation.num_detections} detections")
pd.DataFrame([evaluation.metrics], index=["yolov3-tiny"])

# %%
# NBVAL_IGNORE_OUTPUT
# (per-class AP of this run)
evaluation.per_class

# %% [markdown]
# ## 6. Finding objects, or naming them?
#
# A detection counts for AP only when both its box and its class are right. To see
# which of the two is missing, score the same detections with every class merged into
# one: each box keeps its best class, the label is dropped, and every ground-truth box
# belongs to one class, "object". The gap between the two AP50s is the price of the
# wrong names.
#
# The two helpers below spell the merge out. `evaluate(..., class_agnostic=True)` does
# the same in one call (notebooks 23 and 33 use it), with one difference: it keeps
# every class the model reports for a box and merges them into the best, where
# `OneClass` asks the model for its best class only, before NMS.


# %%
class OneClass(nn.Module):
    """A detector whose detections all carry label 0 (one label per box)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images):
        return self.detector(images)

    def predict(self, outputs, **kwargs):
        detections = self.detector.predict(outputs, multi_label=False, **kwargs)
        return [det | {"labels": torch.zeros_like(det["labels"])} for det in detections]


def merge_classes(dataset: CocoDetection) -> CocoDetection:
    """A shallow copy of ``dataset`` whose COCO ground truth has one category."""
    merged = copy.copy(dataset)
    merged.coco = copy.deepcopy(dataset.coco)
    first = merged.coco.dataset["categories"][0]
    merged.coco.dataset["categories"] = [first]
    for annotation in merged.coco.dataset["annotations"]:
        annotation["category_id"] = first["id"]
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        merged.coco.createIndex()
    merged.class_names, merged.label_to_cat_id = ["object"], [first["id"]]
    return merged


# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
one_class_loader = DataLoader(
    merge_classes(val_set), batch_size=16, sampler=list(range(num_val)), collate_fn=collate
)
one_class = evaluate(OneClass(model), one_class_loader, device)
pd.DataFrame([evaluation.metrics, one_class.metrics], index=["six classes", "one class"])[
    ["AP", "AP50", "AP75", "APs", "APm", "APl"]
]

# %% [markdown]
# On the `cpu` run, merging the classes lifts AP50 from 0.44 to 0.57, and AP from 0.24
# to 0.30: many boxes are in the right place under the wrong name. Localisation and
# naming are learnt at different speeds, and in a ten-minute run the class term is the
# one still far from its floor (section 4). Longer training closes the gap; so does an
# assigner that gives each box more class targets: YOLOv3 gives a box one cell per
# matching anchor, the task-aligned assigner of YOLOv8 (notebook 31) up to ten anchor
# points.
#
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, beside the ground truth.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
images = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(images), score_thr=0.3, iou_thr=0.6, max_det=100)
figure, axes = plt.subplots(2, 4, figsize=(12, 6.4))
for column, ((image, target), found) in enumerate(zip(samples, detections, strict=True)):
    draw_boxes(
        image,
        target["boxes"],
        target["labels"],
        class_names=val_set.class_names,
        ax=axes[0, column],
        linewidth=1.0,
        title="ground truth",
    )
    draw_boxes(
        image,
        found["boxes"].cpu(),
        found["labels"].cpu(),
        found["scores"].cpu(),
        class_names=val_set.class_names,
        ax=axes[1, column],
        linewidth=1.0,
        title=f"{len(found['boxes'])} detections",
    )
for ax in axes.flat:
    ax.axis("off")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 8. What to expect
#
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --models yolov3-tiny`
# trains YOLOv3-tiny on its `cpu` schedule in float32 for exactly 500 steps, keeps its
# weights every 100 steps and scores them on the 500 validation images. AP50 after a
# number of steps hardly depends on the CPU (float32 sums taken in another order move
# it by a few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | YOLOv3-tiny | 0.008 | 0.152 | 0.287 | 0.397 | 0.441 | 0.240 |
#
# What the CPU changes is the time of a step: 1.21 s on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included); the whole
# benchmark run, with its five evaluations, took 11.8 minutes.
#
# **In ten minutes, on this CPU.** The run whose outputs this notebook stores, the
# schedule as it is (2 torch threads, nothing else running):
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 478 | 8.8 training | 0.242 | 0.442 | 0.236 | 0.065 | 0.342 | 0.337 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. With `--amp` on
# a CPU with native bfloat16 kernels a step took about half the time of a float32 one
# (0.53 s against 1.11 s at 256 px on a 2-core CPU with AVX-512), so more steps fit.
# The curve flattens at the end as the cosine comes down, but the network is far from
# trained: the run is limited by its budget.
#
# **`gpu`** (300 epochs at 416 px on one GPU, a few hours):
# not run for this course, so no figure is promised; expect the class gap of section
# 6 to close and AP50 to rise far above the `cpu` run. On COCO, Darknet's YOLOv3-tiny
# reaches an AP50 of 0.331 at 416 px (test-dev, <https://pjreddie.com/darknet/yolo/>).

# %% [markdown]
# ## Recap
#
# - A schedule is every number of a run. For a fixed time budget, plan it in
#   iterations and let the cosine end at the last one; keep a time guard.
# - On a CPU budget, steps are what count. Judge a recipe by what it learns from a
#   number of steps (AP50 after 500 steps is the same on every CPU) and its cost by the
#   time of a step, which depends on the CPU.
# - `detutils.engine.train` trains any detector of the course; `evaluate` gives COCO
#   AP (pycocotools) overall, by size and by class.
# - A young YOLOv3 finds objects before it can name them: scoring with the classes
#   merged shows how much AP the class term still owes.
#
# ## Exercises
#
# **Exercise 1.** Write the `cpu` schedule's learning rate by hand: a linear warm-up
# from 1 % of `lr` at iteration 0 towards `lr` at iteration 62 (half an epoch of 125
# steps, rounded), then a cosine `final + (1 - final) (1 + cos(pi t)) / 2`, with `t`
# going from 0 at iteration 62 to 1 at the last iteration, 499. Check your values at
# iterations 0, 31, 62, 450 and 499 against `lr_factor`, the function the trainer's
# scheduler calls.

# %% tags=["solution"]
cpu = schedules["cpu"]
warmup, total, final = 62, cpu.iterations, cpu.final_lr_fraction


def factor_by_hand(iteration: int) -> float:
    if iteration < warmup:
        return 0.01 + 0.99 * iteration / warmup
    t = (iteration - warmup) / (total - 1 - warmup)
    return final + (1 - final) * (1 + math.cos(math.pi * t)) / 2


checked = [0, 31, 62, 450, cpu.iterations - 1]
by_hand = torch.tensor([factor_by_hand(i) for i in checked], dtype=torch.float64)
library = torch.tensor([lr_factor(i, total, cpu, warmup) for i in checked], dtype=torch.float64)
torch.testing.assert_close(by_hand, library)
pd.DataFrame({"iteration": checked, "learning rate": (cpu.lr * by_hand).tolist()})

# %% [markdown]
# **Exercise 2.** Notebook 11 showed that a box whose shape matches no anchor (wh-IoU
# at most `iou_t`) gets no positive at all. At the schedule's image size, which boxes of
# the first 64 validation images get none? Use `build_yolov3_targets` with the model's
# anchors, count the boxes with and without a positive per COCO size bin (area below
# 32², up to 96², above, in the pixels of the network input), and check that every box
# without a positive is small.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the counts depend on the schedule's image size)
targets = [val_set[index][1] for index in range(64)]
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
layer_targets = build_yolov3_targets(
    gt_boxes,
    gt_labels,
    gt_mask,
    anchors=[head.anchors.cpu() for head in model.heads],
    strides=model.strides,
    feature_sizes=[(schedule.img_size // s, schedule.img_size // s) for s in model.strides],
    iou_t=model.config.iou_t,
)
has_positive = torch.zeros_like(gt_mask)
for layer in layer_targets:
    has_positive[layer.image, layer.gt_index] = True
areas = box_ops.box_area(gt_boxes)[gt_mask]  # (K,)
size_bin = pd.cut(areas.numpy(), [0, 32**2, 96**2, math.inf], labels=["small", "medium", "large"])
counts = pd.crosstab(
    pd.Series(size_bin, name="size"), pd.Series(has_positive[gt_mask].numpy(), name="positive")
)
assert (areas[~has_positive[gt_mask]] < 32**2).all()
counts

# %% [markdown]
# **Exercise 3.** Among the validation boxes that some detection with a score of at
# least 0.1 overlaps at IoU ≥ 0.5, how often does the best-scoring such detection
# carry the right class? (Use the first 32 validation images and `box_ops.box_iou`.)

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
located = correct = 0
with torch.no_grad():
    for start_index in range(0, 32, 16):
        batch = [val_set[index] for index in range(start_index, start_index + 16)]
        images = torch.stack([image for image, _ in batch]).to(device)
        outputs = model.predict(model(images), score_thr=0.1, iou_thr=0.6, max_det=100)
        for (_, target), found in zip(batch, outputs, strict=True):
            iou = box_ops.box_iou(target["boxes"], found["boxes"].cpu())  # (M, N)
            scores = torch.where(iou >= 0.5, found["scores"].cpu(), -1.0)  # (M, N)
            if scores.numel() == 0:
                continue
            best = scores.argmax(dim=1)  # (M,)
            hit = scores.max(dim=1).values >= 0  # (M,)
            located += int(hit.sum())
            correct += int((found["labels"].cpu()[best] == target["labels"])[hit].sum())
assert 0 <= correct <= located
accuracy = correct / located if located else math.nan
print(f"{located} boxes located, {correct} with the right class ({accuracy:.4f})")

# %% [markdown]
# ## Further reading
#
# - J. Redmon, A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018,
#   <https://arxiv.org/abs/1804.02767>
# - ultralytics/yolov3, archive branch: `train.py` (the `hyp` dictionary, warm-up,
#   cosine schedule, EMA) and `test.py` (mAP):
#   <https://github.com/ultralytics/yolov3/tree/archive>
# - T.-Y. Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014, and the
#   COCO detection evaluation: <https://cocodataset.org/#detection-eval>
# - I. Loshchilov, F. Hutter, *Decoupled Weight Decay Regularization* (AdamW), ICLR
#   2019, <https://arxiv.org/abs/1711.05101>; *SGDR: Stochastic Gradient Descent with
#   Warm Restarts* (the cosine schedule), ICLR 2017, <https://arxiv.org/abs/1608.03983>
# - P. Goyal et al., *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*
#   (linear warm-up), 2017, <https://arxiv.org/abs/1706.02677>
