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
# # 23 · NanoDet: training NanoDet-m on the shapes set
#
# Notebooks 20 to 22 took NanoDet apart: the ShuffleNetV2 + PAN + GFL head network, the
# ATSS assigner on its grid cells, and the quality focal, distribution focal and GIoU
# losses. This notebook trains NanoDet-m from scratch on the shapes set with the
# course's engine, on a schedule sized for ten minutes of a laptop CPU, and measures it
# with COCO mAP. It then checks the promise of the quality focal loss: a trained
# NanoDet's class score should rise with the IoU of its box.
#
# **Learning goals**
#
# 1. Read NanoDet-m's three schedules and say why the `cpu` one differs from the
#    reference's recipe.
# 2. Train with `detutils.engine.train`; read the QFL, GIoU and DFL curves.
# 3. Read the COCO mAP table, overall, by size, by class and with the classes merged.
# 4. Measure how well the class score of each positive predicts the IoU of its box,
#    before and after training.
#
# **Prerequisites**: notebooks 20 (outputs), 21 (ATSS), 22 (GFL losses); notebook 13
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
from detutils.assigners import assign_atss_batched, pad_ground_truth
from detutils.data import (
    CocoDetection,
    build_train_set,
    build_transforms,
    collate,
    ensure_shapes,
    find_split,
)
from detutils.engine import evaluate, plot_training_log, read_training_log, train
from detutils.engine.presets import nanodet_schedules
from detutils.models import build_detector
from detutils.viz import compare_detections

# %% [markdown]
# ## 1. Three schedules
#
# NanoDet-m's config carries a `TrainSchedule` per schedule name; `DETUTILS_SCHEDULE`
# picks one (notebook 00). The fields where they differ:

# %%
schedules = nanodet_schedules()
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** follows the recipe of NanoDet's `config/nanodet-m.yml`: SGD with momentum
#   0.9 at learning rate 0.14 for batches of 192 images, weight decay 1e-4, a linear
#   warm-up (300 steps from a tenth of the rate there; half an epoch here), 280 epochs at
#   320 px with the rate divided by ten at epochs 240, 260 and 275. It is not NanoDet's
#   run: NanoDet starts from a ShuffleNetV2 trained on ImageNet (here every weight starts
#   random), clips the gradient at a norm of 35 (here 10), and augments with random
#   scales from 0.6 to 1.4, brightness, contrast and saturation (here flips and colour
#   jitter).
# - **`cpu`** has ten minutes of a 2-core CPU, evaluation included, and is designed for
#   float32, the arithmetic every CPU has: 500 steps of 16 images at 384 px (four
#   passes over the 2,000 training images), AdamW at 0.008 after half an epoch of
#   warm-up, a cosine planned in iterations, the weights laid out channels-last
#   (`channels_last`, notebook 13, section 1). NanoDet-m's steps are cheap, so it can
#   afford images larger than the set's 320 px: enlarged, the smallest shapes cover more
#   cells of the stride-8 level. What each choice buys was measured in steps, not
#   minutes, with `benchmarks/sample_efficiency.py` (AP50 after 500 steps, the same on
#   every CPU): at 320 px the same 500 steps scored 0.39; at 320 px with lr 0.004,
#   0.37; at 320 px with an exponential moving average of the weights, 0.38. Section 8
#   has the curve of the recipe as it is.
#   Unlike YOLOv3-tiny and YOLOv8n, NanoDet-m gains nothing from bfloat16 (`amp`): its
#   depthwise convolutions wait on memory, not on arithmetic.
# - **`ci`** only checks that everything runs: three steps of four 64 px images.

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
train_data = build_train_set(train_set, schedule)
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
torch.manual_seed(0)
model = build_detector("nanodet-m", num_classes=train_set.num_classes)
untrained = build_detector("nanodet-m", num_classes=train_set.num_classes)
untrained.load_state_dict(model.state_dict())  # kept for section 6
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course (`detutils.engine.train`), with
# NanoDet's `loss` (notebook 22). The command line does the same:
#
# ```
# python -m detutils.train --model nanodet-m --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "23_nanodet_m"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: QFL, GIoU (`bbox`) and DFL with NanoDet-m's weights (1, 2, 0.25), and their
# sum; right: the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["qfl", "bbox", "dfl", "loss"]
]

# %% [markdown]
# The GIoU and DFL terms are weighted by the positives' best class score and normalised
# by the sum of those weights (notebook 22): they measure the boxes of the priors the
# network already believes in. The QFL term is normalised by the number of positives
# and its targets are the IoUs of the predicted boxes, so, as with YOLOv8's class term,
# it chases a target that grows while the boxes improve.
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
# ## 6. Does the score know the IoU?
#
# The quality focal loss trains the class score of a positive towards the IoU of its
# predicted box, not towards 1 (notebook 22). If it worked, a detection's score is
# also an estimate of how well it is located, and NMS, which keeps the highest score,
# keeps the best box. Take the positives that ATSS gives the first 16 validation
# images, and compare each one's score for its box's class with the IoU of its
# predicted box, before and after training.

# %%
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))


def score_and_iou(detector) -> pd.DataFrame:
    """Per positive prior: its class score and the IoU of its predicted box."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        assignment, gt_boxes = detector.assign(outputs, targets)
        pred_boxes, scores = detector.decode(outputs)  # (B, A, 4) px, (B, A, C)
    image, prior = torch.nonzero(assignment.gt_index >= 0, as_tuple=True)  # (P,), (P,)
    gt = gt_boxes[image, assignment.gt_index[image, prior]]  # (P, 4)
    iou = box_ops.box_iou_aligned(pred_boxes[image, prior], gt)  # (P,)
    score = scores[image, prior, assignment.labels[image, prior]]  # (P,)
    return pd.DataFrame({"score": score.cpu().numpy(), "iou": iou.cpu().numpy()})


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
pairs = {"untrained": score_and_iou(untrained), "trained": score_and_iou(model)}
figure, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharex=True, sharey=True)
for ax, (name, frame) in zip(axes, pairs.items(), strict=True):
    ax.scatter(frame["iou"], frame["score"], s=4, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    ax.set(xlabel="IoU of the predicted box", ylabel="class score", title=name)
figure.tight_layout()
plt.show()
pd.DataFrame(
    {
        name: {
            "positives": len(frame),
            "mean IoU": frame["iou"].mean(),
            "mean score": frame["score"].mean(),
            "correlation": frame["score"].corr(frame["iou"]),
        }
        for name, frame in pairs.items()
    }
).round(4)

# %% [markdown]
# Untrained, every score sits at 0.01 (the prior-probability bias of notebook 20)
# whatever the box: the scores of the positives are equal to float32 precision, so
# their correlation with the IoU is undefined, which pandas prints as NaN. After the
# `cpu` run the scores spread out and follow the IoU: the correlation is clearly
# positive, and the scores lie below the diagonal, since a ten-minute network is not
# yet sure of its classes. With a plain one-hot target
# (focal loss, as in ATSS or RetinaNet) nothing would tie the two; GFL's paper
# measures this correlation on COCO to make the same point.
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
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --models nanodet-m` trains
# NanoDet-m on its `cpu` schedule in float32 for exactly 500 steps, keeps its weights
# every 100 steps and scores them on the 500 validation images. AP50 after a number of
# steps hardly depends on the CPU (float32 sums taken in another order move it by a
# few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | NanoDet-m | 0.093 | 0.205 | 0.290 | 0.383 | 0.417 | 0.323 |
#
# What the CPU changes is the time of a step: 0.97 s on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included); the whole
# benchmark run, with its five evaluations, took 10.8 minutes.
#
# **In ten minutes, on this CPU.** The run whose outputs this notebook stores, the
# schedule as it is (2 torch threads, nothing else running):
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 500 | 8.4 training | 0.324 | 0.420 | 0.363 | 0.165 | 0.441 | 0.412 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. A ten-minute
# NanoDet-m is far from trained: the loss is still falling when the budget ends
# (section 4).
#
# **`gpu`** (280 epochs): not run for this course, so no figure is promised. For scale,
# NanoDet's README gives NanoDet-m 20.6 AP on COCO val2017 at 320 px, trained from an
# ImageNet-pretrained backbone, which this schedule does not have.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule keeps NanoDet's network, assigner and losses and changes only
#   how it is optimised: AdamW, a short warm-up, a cosine planned in iterations, and
#   384 px images, which NanoDet-m's cheap steps can afford.
# - The quality focal loss makes the class score an estimate of the box's IoU; the
#   correlation is measurable after minutes of training.
# - `evaluate(..., class_agnostic=True)` tells localisation from naming.
#
# ## Exercises
#
# **Exercise 1.** ATSS looks at geometry only, so a box's positives do not change as
# the network trains (unlike YOLOv8's, notebook 33). At the `cpu` schedule's image
# size, count the positives of every box of the first 64 validation images with
# `assign_atss_batched` on NanoDet's grid cells, by COCO size bin (areas in pixels of
# the network input), and count the boxes with none.

# %% tags=["solution"]
size = schedules["cpu"].img_size
sized = CocoDetection(*find_split(root, "val"), transforms=build_transforms(size, False))
gt_boxes, gt_labels, gt_mask = pad_ground_truth([sized[index][1] for index in range(64)])
feature_sizes = [(size // stride, size // stride) for stride in model.config.strides]
cells, num_per_level, _ = model.priors(feature_sizes, torch.device("cpu"))
assignment = assign_atss_batched(cells, num_per_level, gt_boxes, gt_labels, gt_mask)
positives = torch.zeros_like(gt_mask, dtype=torch.long)  # (B, M)
for image in range(len(positives)):
    indices = assignment.gt_index[image][assignment.gt_index[image] >= 0]
    positives[image] += torch.bincount(indices, minlength=positives.shape[1])
areas = box_ops.box_area(gt_boxes)[gt_mask]
frame = pd.DataFrame({"area": areas.numpy(), "positives": positives[gt_mask].numpy()})
bins = [0, 32**2, 96**2, math.inf]
frame["size"] = pd.cut(frame["area"], bins, labels=["small", "medium", "large"])
print(f"{len(cells)} grid cells at {size} px")
frame.groupby("size", observed=True)["positives"].agg(
    boxes="count", mean="mean", none=lambda n: int((n == 0).sum())
).round(4)

# %% [markdown]
# **Exercise 2.** The distribution focal loss makes each side's distance a
# distribution over 8 bins (notebook 22). How sharp are the trained distributions? For
# the positives of section 6, compute the largest bin probability of each side's
# distribution, and compare its mean before and after training (uniform: 1/8).


# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
def sharpness(detector) -> float:
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        assignment, _ = detector.assign(outputs, targets)
        _, dist_logits = detector.flatten(outputs)  # (B, A, 4 (R + 1))
    positive = assignment.gt_index >= 0  # (B, A)
    bins = model.config.reg_max + 1
    probabilities = dist_logits[positive].reshape(-1, 4, bins).softmax(dim=-1)  # (P, 4, R+1)
    return probabilities.amax(dim=-1).mean().item()


pd.Series({"uniform": 1 / 8, "untrained": sharpness(untrained), "trained": sharpness(model)}).round(
    4
)

# %% [markdown]
# **Exercise 3.** NMS keeps the highest-scoring box of a cluster. Using the first 16
# validation images, for each ground-truth box take all positives of section 6 that
# predict it, and check how often the positive with the highest score is also the one
# with the highest IoU, before and after training. Compare with chance: a positive
# picked at random is the best one with probability 1 / (its box's positives).


# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
def best_score_is_best_box(detector) -> tuple[float, float]:
    """How often the best-scoring positive of a box is its best box; and chance."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        assignment, gt_boxes = detector.assign(outputs, targets)
        pred_boxes, scores = detector.decode(outputs)
    agree = total = 0
    chance = 0.0
    for image in range(len(images)):
        for box in assignment.gt_index[image].unique():
            if box < 0:
                continue
            prior = torch.nonzero(assignment.gt_index[image] == box).squeeze(1)
            if len(prior) < 2:
                continue
            label = assignment.labels[image, prior[0]]
            iou = box_ops.box_iou_aligned(
                pred_boxes[image, prior], gt_boxes[image, box].expand(len(prior), 4)
            )
            agree += int(scores[image, prior, label].argmax() == iou.argmax())
            chance += 1 / len(prior)
            total += 1
    return agree / total, chance / total


(before, chance), (after, _) = best_score_is_best_box(untrained), best_score_is_best_box(model)
pd.Series({"untrained": before, "trained": after, "chance": chance}).round(4)

# %% [markdown]
# Untrained, the positives' scores are equal to float32 precision (the prior of 0.01:
# section 6), so `argmax` in effect returns a box's first positive, the one of lowest
# index, on the finest level it has positives on. The untrained figure measures that
# tie-break, not the score: an untrained network predicts about the same box size on
# every point of a level, and the finest level's boxes happen to fit these shapes best
# more often than chance would. After training the ties are gone, but the highest
# score picks the best box about as often as a random positive would (in another run
# of the same schedule, 0.31 against the same chance of 0.20: 107 boxes make a noisy
# sample). Across boxes the score follows the IoU (section 6); among the handful of
# positives of one box, whose predicted boxes are all good and close in IoU, the
# scores of a ten-minute network do not yet rank them.

# %% [markdown]
# ## Further reading
#
# - RangiLyu, *NanoDet*, 2020, <https://github.com/RangiLyu/nanodet>:
#   `config/nanodet-m.yml` (the training recipe).
# - X. Li et al., *Generalized Focal Loss: Learning Qualified and Distributed Bounding
#   Boxes for Dense Object Detection*, NeurIPS 2020, <https://arxiv.org/abs/2006.04388>
#   (the score-IoU correlation, its figure 2 and section 4).
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020, <https://arxiv.org/abs/1912.02424>
# - N. Ma et al., *ShuffleNet V2*, ECCV 2018, <https://arxiv.org/abs/1807.11164>
