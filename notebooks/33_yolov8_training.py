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
# # 33 · YOLOv8: training YOLOv8n on the shapes set
#
# Notebooks 30 to 32 took YOLOv8 apart: 2100 anchor points at 320 px, the task-aligned
# assigner that picks each box's positives from the network's own predictions, and the
# BCE, CIoU and DFL terms of the loss. This notebook trains YOLOv8n from scratch on the
# shapes set with the course's engine, on a schedule sized for ten minutes of a laptop
# CPU, and measures it with COCO mAP. It then looks at what makes this detector
# different to train: its assigner moves with the predictions, so the targets of the
# last step are not those of the first.
#
# **Learning goals**
#
# 1. Read YOLOv8n's three schedules and say why the `cpu` one differs from the
#    reference's recipe.
# 2. Train with `detutils.engine.train`; read the three loss terms' curves.
# 3. Read the COCO mAP table, overall, by size and by class, and with the classes
#    merged (`evaluate(..., class_agnostic=True)`).
# 4. Measure how the task-aligned targets change between an untrained and a trained
#    network.
#
# **Prerequisites**: notebooks 30 (outputs), 31 (assigner), 32 (loss); notebook 13
# (planning a schedule for a time budget; the same engine and evaluation).
#
# **The stored outputs come from a run on the `cpu` schedule** (about ten minutes on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations at
# 64 px, seconds), so every cell whose output depends on the schedule is marked to be
# left out of the comparison; run it yourself to see your own numbers.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import pad_ground_truth
from detutils.assigners.tal import assign_task_aligned
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
from detutils.models import build_detector
from detutils.priors import anchor_points
from detutils.viz import compare_detections

# %% [markdown]
# ## 1. Three schedules
#
# YOLOv8n's config carries a `TrainSchedule` per schedule name; `DETUTILS_SCHEDULE`
# picks one (notebook 00). The fields where they differ:

# %%
schedules = schedules_for("yolov8n")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** follows ultralytics' default recipe for YOLOv8 on COCO: SGD with Nesterov
#   momentum 0.937 at learning rate 0.01, weight decay 5e-4, 64 images per step, three
#   epochs of warm-up, a decay to 1 % of the rate, mixed precision and an exponential
#   moving average of the weights, 500 epochs at 640 px. It differs in three places:
#   ultralytics decays the rate linearly (here a cosine), trains on mosaics (`mosaic`
#   1.0, off for the last 10 epochs; here off unless `--set mosaic=1.0`), and ramps
#   the biases' rate and the momentum during warm-up (here one ramp for every group).
# - **`cpu`** has ten minutes of a 2-core CPU, evaluation included, and is designed for
#   float32, the arithmetic every CPU has: 500 steps of 16 images at the set's 320 px,
#   four passes over the 2,000 training images. AdamW at 0.002 moves much faster than
#   SGD at the start, half an epoch of warm-up is enough for it, and the plan is in
#   iterations so that the cosine reaches its floor at the last one; `max_minutes` and
#   `lr_by_time` keep it inside the budget on a slower machine (notebook 13, section
#   1). The weights are laid out channels-last (`channels_last`; notebook 13, section
#   1): on a 2-core CPU with AVX2 a float32 step (forward, loss, backward, AdamW) took
#   0.65 s against 0.82 s in the usual layout. On a CPU with native bfloat16 kernels,
#   `--amp` makes each step cheaper still.
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# How many steps fit in ten minutes depends on the CPU; how much a network learns from
# a number of steps does not. That is how the recipe was chosen, with
# `benchmarks/sample_efficiency.py`: AP50 on the validation images after 100, 200, ...
# 500 steps, the same on every CPU (section 8). The same benchmark trains ultralytics'
# own YOLOv8n on this set, with a recipe fitted to the same budget (AdamW at 0.002,
# half an epoch of warm-up, batch 16, 320 px, its augmentation without mosaic, its
# EMA), for the same number of steps: the course's recipe learns at least as much per
# step, and its steps are no slower.

# %% [markdown]
# ## 2. Data and model

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
train_data = build_train_set(train_set, schedule)  # flips and colour jitter (no mosaic)
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
torch.manual_seed(0)
model = build_detector("yolov8n", num_classes=train_set.num_classes)
untrained = build_detector("yolov8n", num_classes=train_set.num_classes)
untrained.load_state_dict(model.state_dict())  # kept for section 6
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course (`detutils.engine.train`): forward,
# `model.loss` (notebook 32), backward, gradient clipping, optimizer step, learning
# rate. The command line does the same:
#
# ```
# python -m detutils.train --model yolov8n --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "33_yolov8n"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: the box (CIoU), class (BCE) and DFL terms with the gains of notebook 32 applied
# (7.5, 0.5, 1.5), and their sum; right: the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["box", "cls", "dfl", "loss"]
]

# %% [markdown]
# The class term behaves unlike YOLOv3's (notebook 13). Its targets are not ones but
# the normalised alignment metric, which is small while the predicted boxes are poor;
# as the boxes improve, the targets grow, so the class term can stall, or even rise for
# a while, although the network is getting better. It is a loss against a moving
# target: compare the runs by AP, not by this term.
#
# ## 5. COCO mAP
#
# `evaluate` runs the model over the validation images, maps the detections back to
# each image file and scores them with pycocotools (notebook 13, section 5). The `ci`
# run evaluates 16 images only. The second row scores boxes only: every class merged
# into one, each box kept once with its best score.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
evaluation = evaluate(model, val_loader, device)
boxes_only = evaluate(model, val_loader, device, class_agnostic=True)
print(f"{evaluation.num_images} images, {evaluation.num_detections} detections")
pd.DataFrame([evaluation.metrics, boxes_only.metrics], index=["six classes", "one class"])

# %%
# NBVAL_IGNORE_OUTPUT
# (per-class AP of this run)
evaluation.per_class

# %% [markdown]
# ## 6. The targets move with the predictions
#
# ATSS (notebook 21) and YOLOv3's anchor matching (notebook 11) give a box the same
# positives at every step: they look at geometry only. The task-aligned assigner looks
# at the predictions: a positive must have a positive alignment metric s^0.5 × u^6, and
# its class target is that metric normalised so that the box's best anchor gets the
# box's best CIoU (notebook 31). Run it on the same validation images with the network
# before and after training:

# %%
images, targets = next(iter(DataLoader(val_set, batch_size=8, collate_fn=collate)))
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device=device)


def task_aligned_targets(detector):
    """The assignment of the first eight validation images under ``detector``."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        dist_logits, cls_logits, points, point_strides = detector.flatten(outputs)
        pred_boxes, pred_scores = detector.decode(outputs)  # (B, A, 4) px, (B, A, C)
    return assign_task_aligned(pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask)


def summary(assignment) -> dict[str, float]:
    positives = assignment.fg_mask  # (B, A)
    per_box = torch.zeros_like(gt_mask, dtype=torch.long)  # (B, M)
    for image in range(len(per_box)):
        indices = assignment.gt_index[image][positives[image]]
        per_box[image] += torch.bincount(indices, minlength=per_box.shape[1])
    target = assignment.scores.amax(dim=2)[positives]  # (P,) soft class targets
    return {
        "positives per box": per_box[gt_mask].float().mean().item(),
        "boxes without a positive": int((per_box[gt_mask] == 0).sum()),
        "mean class target": target.mean().item() if len(target) else 0.0,
        "largest class target": target.max().item() if len(target) else 0.0,
    }


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
before, after = task_aligned_targets(untrained), task_aligned_targets(model)
print(f"{int(gt_mask.sum())} boxes on 8 images")
pd.DataFrame({"untrained": summary(before), "trained": summary(after)}).round(4)

# %% [markdown]
# On the `cpu` run, the number of positives hardly changes: most boxes get nine or
# ten, and the few that get fewer are small boxes with fewer than ten anchor points
# inside them (exercise 2), trained or not. What changes is the class target. The
# untrained network's boxes overlap the objects poorly, so the targets, scaled by the
# best CIoU of each box, are small on average; after training they are larger (0.41
# to 0.48 on the mean) and approach the IoU that the network reaches. A YOLOv8
# network's class score is trained to say "object of this class, *and* this well
# located", like the quality focal loss of NanoDet (notebook 22).
#
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, under the ground truth.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
batch = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(batch), score_thr=0.3, iou_thr=0.6, max_det=100)
compare_detections(samples, detections, val_set.class_names)
plt.show()

# %% [markdown]
# ## 8. What to expect
#
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --peer` trains the
# course's YOLOv8n on its `cpu` schedule in float32 for exactly 500 steps, keeps its
# weights every 100 steps and scores them on the 500 validation images; in the same
# run it trains ultralytics' own YOLOv8n with the recipe of section 1 for the same
# steps and scores its weights (its EMA) with the same evaluator. AP50 after a number
# of steps hardly depends on the CPU (float32 sums taken in another order move it by
# a few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | course YOLOv8n | 0.012 | 0.148 | 0.244 | 0.306 | 0.333 | 0.248 |
# | ultralytics YOLOv8n | 0.037 | 0.105 | 0.200 | 0.232 | 0.248 | 0.172 |
#
# ultralytics' own validator gives its last weights an AP50 of 0.266, close to the
# course's evaluator. ultralytics' training does not repeat bit for bit: an earlier run
# of the same benchmark, on one thread, ended at 0.312 (the course's YOLOv8n at
# 0.328). What the CPU changes is the time of a step: on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included), 0.83 s for the
# course's YOLOv8n and 0.86 s for ultralytics', a ratio of 0.96.
#
# **In ten minutes, on this CPU.** The run whose outputs this notebook stores, the
# schedule as it is (2 torch threads, nothing else running):
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 500 | 6.7 training | 0.248 | 0.333 | 0.279 | 0.105 | 0.390 | 0.279 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. On a CPU with
# native bfloat16 kernels, `--amp` makes each step cheaper (0.53 s against 0.86 s in
# float32, at 256 px on a 2-core CPU with AVX-512). With mosaic augmentation
# (`--set mosaic=1.0`; four images in one, as ultralytics trains) AP50 fell, to 0.119
# in a ten-minute run at 320 px: in a few epochs there is no over-fitting for it to
# prevent, and each mosaic is a harder image. A ten-minute YOLOv8n is far from
# trained: its loss only flattens because the learning rate runs out (section 4).
#
# **`gpu`** (500 epochs at 640 px): not run for this course, so no figure is promised.
# For scale, ultralytics reports 37.3 AP (COCO val2017, 640 px) for YOLOv8n trained
# with its own recipe, mosaics and linear decay included.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule is the `gpu` recipe cut to ten minutes of float32: AdamW, a
#   short warm-up, a cosine planned in iterations, channels-last weights, and a recipe
#   judged by what it learns from 500 steps, which no CPU changes.
# - The three terms of the YOLOv8 loss fall at different paces; the class term chases
#   targets that grow as the boxes improve, so compare runs by AP.
# - The task-aligned assigner is dynamic: the same image gets other positives and
#   larger class targets from a trained network than from an untrained one.
# - `evaluate(..., class_agnostic=True)` tells localisation from naming.
#
# ## Exercises
#
# **Exercise 1.** Which classes does the trained model confuse? On the first 64
# validation images, match every ground-truth box to the highest-scoring detection
# (score ≥ 0.1) that overlaps it at IoU ≥ 0.5, whatever its class, and count the pairs
# (true class, predicted class) in a confusion table.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
names = val_set.class_names
confusion = torch.zeros(len(names), len(names), dtype=torch.long)  # (true, predicted)
with torch.no_grad():
    for first_index in range(0, 64, 16):
        chunk = [val_set[index] for index in range(first_index, first_index + 16)]
        outputs = model(torch.stack([image for image, _ in chunk]).to(device))
        found_all = model.predict(outputs, score_thr=0.1, iou_thr=0.6, max_det=100)
        for (_, target), found in zip(chunk, found_all, strict=True):
            iou = box_ops.box_iou(target["boxes"], found["boxes"].cpu())  # (M, N)
            scores = torch.where(iou >= 0.5, found["scores"].cpu(), -1.0)  # (M, N)
            if scores.numel() == 0:
                continue
            best_score, best = scores.max(dim=1)  # (M,), (M,)
            hit = best_score >= 0
            predicted = found["labels"].cpu()[best[hit]]
            confusion.index_put_((target["labels"][hit], predicted), torch.tensor(1), True)
table = pd.DataFrame(confusion.numpy(), index=names, columns=names)
table.index.name, table.columns.name = "true", "predicted"
assert confusion.sum() <= sum(len(val_set[i][1]["labels"]) for i in range(64))
table

# %% [markdown]
# **Exercise 2.** A box gets at most `topk` = 10 positives. At the `cpu` schedule's
# image size, how many anchor points lie inside each validation box of the first 64
# images, by COCO size bin (areas in the pixels of the network input)? How many
# boxes have fewer than 10, so that the top 10 cannot all be inside?

# %% tags=["solution"]
size = schedules["cpu"].img_size
sized = CocoDetection(*find_split(root, "val"), transforms=build_transforms(size, False))
feature_sizes = [(size // stride, size // stride) for stride in model.config.strides]
flat_points, _ = anchor_points(feature_sizes, model.config.strides)  # (A, 2) x, y px
rows = []
for index in range(64):
    target = sized[index][1]
    for box in target["boxes"]:
        x, y = flat_points[:, 0], flat_points[:, 1]
        inside = (x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])
        rows.append({"area": box_ops.box_area(box[None]).item(), "inside": int(inside.sum())})
frame = pd.DataFrame(rows)
bins = [0, 32**2, 96**2, math.inf]
frame["size"] = pd.cut(frame["area"], bins, labels=["small", "medium", "large"])
print(f"{len(flat_points)} anchor points at {size} px")
frame.groupby("size", observed=True)["inside"].agg(
    boxes="count", median="median", fewer_than_10=lambda n: int((n < 10).sum())
)

# %% [markdown]
# **Exercise 3.** AP integrates over every score threshold; a deployed detector uses
# one. On the first 64 validation images, count true positives (a detection of the
# right class at IoU ≥ 0.5 with a box not yet matched, highest scores first), false
# positives and missed boxes at score thresholds 0.1, 0.3 and 0.5, and give precision
# and recall.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
rows = []
with torch.no_grad():
    chunks = [[val_set[i] for i in range(start, start + 16)] for start in range(0, 64, 16)]
    found_chunks = [
        model.predict(
            model(torch.stack([image for image, _ in chunk]).to(device)),
            score_thr=0.1,
            iou_thr=0.6,
            max_det=100,
        )
        for chunk in chunks
    ]
for threshold in (0.1, 0.3, 0.5):
    tp = fp = fn = 0
    for chunk, found_all in zip(chunks, found_chunks, strict=True):
        for (_, target), found in zip(chunk, found_all, strict=True):
            scores, order = found["scores"].cpu().sort(descending=True)
            order = order[scores >= threshold]
            boxes, labels = found["boxes"].cpu()[order], found["labels"].cpu()[order]
            iou = box_ops.box_iou(boxes, target["boxes"])  # (N, M), detections by score
            iou[labels[:, None] != target["labels"][None, :]] = 0.0
            matched = torch.zeros(len(target["boxes"]), dtype=torch.bool)
            for row in iou:
                row = torch.where(matched, 0.0, row)
                if len(row) and row.max() >= 0.5:
                    matched[row.argmax()] = True
                    tp += 1
                else:
                    fp += 1
            fn += int((~matched).sum())
    rows.append(
        {"score ≥": threshold, "TP": tp, "FP": fp, "missed": fn,
         "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}
    )  # fmt: skip
pd.DataFrame(rows).round(4)

# %% [markdown]
# ## Further reading
#
# - G. Jocher, A. Chaurasia, J. Qiu, *Ultralytics YOLOv8*, 2023,
#   <https://github.com/ultralytics/ultralytics>: `ultralytics/cfg/default.yaml` (the
#   training recipe), `ultralytics/engine/trainer.py` (warm-up, EMA, schedule).
# - C. Feng et al., *TOOD: Task-aligned One-stage Object Detection*, ICCV 2021,
#   <https://arxiv.org/abs/2108.07755>
# - X. Li et al., *Generalized Focal Loss*, NeurIPS 2020 (the DFL term),
#   <https://arxiv.org/abs/2006.04388>
