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
# # 04 · Pre-training a backbone
#
# Every reference recipe of the course's later detectors (ATSS, Faster R-CNN,
# Deformable DETR, Co-DETR) starts from a ResNet-50 that was first trained to classify
# ImageNet; only the neck and the head start from random weights. A CPU cannot repeat
# that, and cannot train these detectors from nothing in minutes either. So the course
# makes its own pre-trained backbone: a half-width ResNet-18 that learns to classify
# crops of the shapes set's objects, in a few minutes, and whose weights the detectors
# of the CPU schedules load before their first step. This notebook builds the crop set,
# the network and the recipe, trains it (or loads the stored file), and looks at what
# the features learned: the first layer's filters, the feature maps of a whole image,
# and how well the pooled features separate the classes before and after.
#
# **Learning goals**
#
# 1. Say why the two-stage and transformer detectors start from a pre-trained backbone,
#    and what training them from random weights gave on a CPU.
# 2. Cut a box into the square crop `ObjectCrops` makes of it, and read the crop set's
#    classes, background included.
# 3. Count the parameters and the arithmetic of a half-width ResNet-18 against the
#    full-width one.
# 4. Read the pre-training recipe, its loss curve, accuracy and confusion matrix.
# 5. Compare the filters, feature maps and pooled features of the pre-trained and the
#    random network.
# 6. Say how a detector's configuration names its backbone weights, and when they are
#    loaded.
#
# **Prerequisites**: notebook 00 (the shapes set, the schedules); convolutions, batch
# normalisation and residual blocks; cross-entropy.
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).
#
# **The stored outputs come from the `cpu` pre-training** (1500 steps, minutes on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule, whose pre-training takes
# seconds and is stored in a file of its own, so every cell whose output depends on
# the trained weights is marked to be left out of the comparison; run it yourself to
# see your own numbers.

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
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

from detutils import current_schedule
from detutils.checks import check_close, check_function, check_passed, check_true
from detutils.data import CocoDetection, ObjectCrops, ensure_shapes, find_split
from detutils.data.crops import crop_squares
from detutils.engine.pretrain import (
    BackboneClassifier,
    ensure_backbone,
    load_pretrained,
    recipe_for,
)
from detutils.models.atss import build_atss_r18half_fpn64, build_atss_r50
from detutils.models.backbones import ResNetBackbone

# %% [markdown]
# ## 1. Why pre-train
#
# The reference configurations of ATSS, Faster R-CNN, Deformable DETR and Co-DETR all
# load ImageNet weights into their ResNet-50 before the first step; in mmdet this is
# one line of the backbone's config, `init_cfg=dict(type="Pretrained",
# checkpoint="torchvision://resnet50")`. Their COCO schedules can be short (12 epochs
# for ATSS and Faster R-CNN) because the backbone already knows edges, textures and
# object parts; the detector mostly has to learn where the objects are.
#
# From random weights, these detectors learn next to nothing in the minutes a CPU
# gives them. Measured for this course on 2 CPU cores, with torchvision's detectors
# on the shapes set:
#
# | detector, from random weights | steps of 8 images | minutes | AP50 |
# | --- | --- | --- | --- |
# | Faster R-CNN, MobileNetV3-FPN | 180 | 9 | 0.067 |
# | FCOS, ResNet-18 FPN | 254 | 9.7 | 0.080 |
#
# (NanoDet-m, trained from scratch in ten minutes in notebook 23, reaches an AP50 of
# about 0.4.) ImageNet weights are a download (98 MB for ResNet-50) that a learner may
# not have, and a network trained on photographs is not the point of a course about
# training. So the course pre-trains its own backbone on the shapes set, in minutes,
# and the CPU presets of the later detectors start from it. The earlier detectors of
# the course (YOLOv3, NanoDet, YOLOv8) are small and quick enough to train from
# scratch, and do.
#
# ## 2. The pre-training task: object crops
#
# A backbone is pre-trained as a classifier. On the shapes set the natural classes are
# the six shapes; each box becomes one image of the classification set.
# `ObjectCrops` cuts every box (whose longer side is at least 4 px) out of its image as
# a square around the box's centre, so the object keeps its aspect ratio, with a side
# of 1.5 times the box's longer side (the *context*), then 1.25 times that again as a
# margin for the random zoom (1.875 times the longer side in all), and resizes it to
# 80 px (1.25 x 64), kept in memory as uint8. Reading a
# crop takes a random sub-square of 0.8 to 1 of it (so 1.5 to 1.875 times the longer
# side), a random shift and a random flip, and resizes it to 64 px; without
# augmentation, the centre 0.9 of it (1.69 times the longer side). Random squares whose
# centre lies in no box, of side 16 px to half the image, are added as a seventh class,
# `background`, about one for every five boxes, so the features also learn to tell an
# object from the clutter around it.

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
val_crops = ObjectCrops(val_set, size=64, augment=False, seed=1)  # as the pre-training cuts it
print(val_crops)
print("classes:", ", ".join(val_crops.class_names))

# %% [markdown]
# The pre-training cuts the 2000 training images the same way (with augmentation);
# counting their boxes from the annotations alone, without cutting them:

# %%
train_boxes = torch.zeros(len(train_set.class_names), dtype=torch.long)
for image_id in train_set.image_ids:
    annotation = train_set.load_target(image_id)
    boxes = annotation["boxes"].as_subclass(torch.Tensor)  # (M, 4) xyxy px
    keep = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) >= 4  # ObjectCrops' min_side
    train_boxes += torch.bincount(annotation["labels"][keep], minlength=len(train_boxes))
val_counts = torch.bincount(val_crops.labels, minlength=len(val_crops.class_names))
counts = pd.DataFrame(
    {
        "train (boxes)": pd.array([*train_boxes.tolist(), None], dtype="Int64"),
        "val (crops)": val_counts.tolist(),
    },
    index=val_crops.class_names,
)
counts.loc["total"] = counts.sum()
counts

# %% [markdown]
# The training set adds its background patches, drawn at random (seed 0): 732 of them,
# 13,133 crops in all. The classes are balanced by construction of the shapes set;
# the background class is smaller, a fifth of the boxes less the squares rejected
# because their centre fell into a box.
#
# Where the crops come from, on a validation image with two boxes: each box (green),
# the square `ObjectCrops` cuts and stores (1.875 x the longer side, dashed) and the part
# a validation crop shows (1.69 x, solid orange); right, the crops of that image as the
# network reads them.

# %%
one_image = copy.copy(val_set)  # the same set, restricted to one image
one_image.image_ids = [val_set.image_ids[7]]
image = one_image.load_image(one_image.image_ids[0])  # (3, 320, 320) in [0, 1]
target = one_image.load_target(one_image.image_ids[0])
boxes = target["boxes"].as_subclass(torch.Tensor)  # (M, 4)
stored_squares = crop_squares(boxes, 1.5 * 1.25)  # (M, 4), what is cut and kept
shown = crop_squares(boxes, 1.5 * 1.25 * 0.9)  # (M, 4), what a validation crop shows
image_crops = ObjectCrops(one_image, size=64, augment=False)
figure, axes = plt.subplots(
    1, 1 + len(image_crops), figsize=(4 + 2 * len(image_crops), 4),
    gridspec_kw={"width_ratios": [2] + [1] * len(image_crops)},
)  # fmt: skip
axes[0].imshow(image.permute(1, 2, 0))
for box, square, view in zip(boxes.tolist(), stored_squares.tolist(), shown.tolist(), strict=True):
    for (x1, y1, x2, y2), style in [
        (box, {"color": "lime"}),
        (square, {"color": "orange", "linestyle": "--"}),
        (view, {"color": "orange"}),
    ]:
        axes[0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))
axes[0].set(xlim=(0, 320), ylim=(320, 0))
for ax, (crop, label) in zip(axes[1:], image_crops, strict=True):
    ax.imshow(crop.permute(1, 2, 0))
    ax.set_title(f"{image_crops.class_names[label]}, 64 px")
for ax in axes:
    ax.set_axis_off()
figure.tight_layout()
plt.show()

# %% [markdown]
# Squares that reach past the image are padded with black, as the first layer of a
# detector sees zeros beyond the border. Four validation crops of each class (left)
# and, for the same crops, what four reads with augmentation give (right):

# %%
augmented = copy.copy(val_crops)  # the same stored crops, read with augmentation
augmented.augment = True
torch.manual_seed(0)
examples = [torch.nonzero(val_crops.labels == label)[:4, 0].tolist() for label in range(7)]
figure, axes = plt.subplots(7, 8, figsize=(8, 7.4))
for row, indices in enumerate(examples):
    for column, index in enumerate(indices + indices):
        crops = val_crops if column < 4 else augmented
        axes[row, column].imshow(crops[index][0].permute(1, 2, 0))
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
    axes[row, 0].set_ylabel(val_crops.class_names[row], rotation=0, ha="right", va="center")
axes[0, 1].set_title("validation crops", loc="left")
axes[0, 5].set_title("augmented", loc="left")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The network
#
# `BackboneClassifier(18, 32, 7)` is torchvision's ResNet-18 at half width: its stem
# and four stages of two residual blocks have 32, 64, 128 and 256 channels instead of
# 64 to 512 (`ResNetBackbone(18, width=32)`), followed by global average pooling and
# one linear layer to the 7 classes. Seeded with 0, it is also the random network the
# pre-training starts from, kept here for the comparisons of section 5.

# %%
torch.manual_seed(0)  # the seed of the pre-training: the same initial weights
random_model = BackboneClassifier(18, 32, len(val_crops.class_names)).eval()
crops = torch.stack([val_crops[index][0] for index in range(4)])  # (B, 3, 64, 64)
rows = []
with torch.no_grad():
    backbone = random_model.backbone
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(crops))))
    stem = [backbone.conv1, backbone.bn1]
    rows.append(("stem (conv1, bn1, max-pool)", tuple(x.shape), stem))
    for stage in (2, 3, 4, 5):
        layer = getattr(backbone, f"layer{stage - 1}")
        x = layer(x)
        rows.append((f"stage {stage} (layer{stage - 1})", tuple(x.shape), [layer]))
    pooled = x.mean(dim=(2, 3))  # (B, 256)
    rows.append(("global average pooling", tuple(pooled.shape), []))
    rows.append(("fc", tuple(random_model.fc(pooled).shape), [random_model.fc]))
pd.DataFrame(
    [
        (name, shape, sum(p.numel() for m in modules for p in m.parameters()))
        for name, shape, modules in rows
    ],
    columns=["part", "output (B, C, H, W)", "parameters"],
).set_index("part")

# %% [markdown]
# A 64 px crop leaves stage 5 as a 2 x 2 map (stride 32). Against torchvision's
# ResNet-18 (without its classifier), and the arithmetic of one 320 px image through
# stages 2 to 5, the work of the backbone in one step of the detector:

# %%
full = {k: v for k, v in resnet18().named_parameters() if not k.startswith("fc.")}
macs = {}
for width in (64, 32):
    network = ResNetBackbone(18, out_stages=(3, 4, 5), width=width).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.rand(1, 3, 320, 320))
    macs[width] = counter.get_total_flops() / 2  # multiply-adds
half_parameters = sum(p.numel() for p in random_model.backbone.parameters())
full_parameters = sum(p.numel() for p in full.values())
pd.DataFrame(
    {
        "parameters": [full_parameters, half_parameters],
        "G multiply-adds at 320 px": [round(macs[64] / 1e9, 3), round(macs[32] / 1e9, 3)],
    },
    index=["ResNet-18 (width 64)", "ResNet-18 half width (32)"],
)

# %% [markdown]
# Halving every channel count divides the weights of each convolution, and its
# multiply-adds, by four (both grow with input x output channels): 2.8 M parameters
# instead of 11.2 M, a quarter of the arithmetic. That quarter is what lets an ATSS
# step run on a CPU (notebook 43): the backbone's share of a step at 320 px drops from
# 3.7 to 0.99 G multiply-adds per image.
#
# The network normalises its input with ImageNet's mean and standard deviation, as
# every detector of the course does with images in [0, 1]: the first layer of a
# detector then sees the same numbers the pre-training showed it, and the weights
# carry over unchanged.

# %%
atss_config = build_atss_r18half_fpn64(6).config
print("classifier mean", [round(v, 3) for v in random_model.pixel_mean.flatten().tolist()])
print("classifier std ", [round(v, 3) for v in random_model.pixel_std.flatten().tolist()])
print("ATSS mean", atss_config.pixel_mean, "std", atss_config.pixel_std)

# %% [markdown]
# ## 4. The recipe and the training
#
# `recipe_for(name, schedule)` gives every number of the run; the stored file records
# it, and a file made with another recipe is rebuilt. The `cpu` recipe trains 1500
# steps of 128 crops (about 15 passes over the 13,133 training crops) with AdamW at
# 0.002, a linear warm-up over the first 5 % of the steps, then a cosine down to 1 %
# of the peak; the `ci` recipe only checks that everything runs, on the crops of 40
# images.

# %%
recipes = {schedule: recipe_for("shapes-resnet18-half", schedule) for schedule in ("cpu", "ci")}
pd.DataFrame([asdict(recipe) for recipe in recipes.values()], index=list(recipes))

# %% [markdown]
# `ensure_backbone` returns the file, `data/backbones/shapes-resnet18-half.pt`
# (`...-ci.pt` on the `ci` schedule), and trains it first when it is missing or was
# made with another recipe. The first run of this cell takes minutes on the `cpu`
# schedule; later runs read the file.

# %%
# NBVAL_IGNORE_OUTPUT
# (trains only when the file is missing; its name depends on the schedule)
path = ensure_backbone("shapes-resnet18-half")
print(f"{path.parent.name}/{path.name}")

# %%
stored = torch.load(path, map_location="cpu", weights_only=True)
print(sorted(stored))
print("recipe as this schedule's:", stored["recipe"] == asdict(recipe_for("shapes-resnet18-half")))
print("classes:", stored["class_names"])
print("backbone tensors:", len(stored["state_dict"]), "| classifier:", list(stored["classifier"]))

# %% [markdown]
# The file holds the backbone's weights with torchvision's names (`conv1.weight`,
# `layer1.0.conv1.weight`, ...), which is what a detector loads, and the classifier's
# apart. The training loss per step, and its mean over windows of 50 steps:

# %%
# NBVAL_IGNORE_OUTPUT
# (the losses of the stored run)
losses = stored["losses"]  # (steps,)
window = max(1, min(50, len(losses) // 10))
smooth = losses.unfold(0, window, 1).mean(dim=1)
figure, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, linewidth=0.5, alpha=0.4, label="per step")
ax.plot(range(window - 1, len(losses)), smooth, label=f"mean of {window}")
ax.set(xlabel="step", ylabel="cross-entropy", ylim=(0, None))
ax.legend()
plt.show()
print(
    f"{len(losses)} steps in {stored['minutes']:.1f} min; loss {losses[:window].mean():.3f} "
    f"over the first {window} steps, {losses[-window:].mean():.3f} over the last"
)

# %% [markdown]
# The validation accuracy, top-1 over every validation crop (without augmentation),
# and the confusion matrix (rows: true class, columns: predicted class), as
# `crop_accuracy` measured them at the end of the run:

# %%
# NBVAL_IGNORE_OUTPUT
# (the accuracy of the stored run)
confusion = stored["confusion"]  # (K, K), rows: true class
names = stored["class_names"]
print(f"validation accuracy {stored['accuracy']:.3f} on {int(confusion.sum())} crops")
figure, ax = plt.subplots(figsize=(4.6, 4.2))
ax.imshow(confusion / confusion.sum(dim=1, keepdim=True), cmap="Blues", vmin=0, vmax=1)
for (row, column), count in zip(torch.cartesian_prod(*[torch.arange(7)] * 2).tolist(),
                                confusion.flatten().tolist(), strict=True):  # fmt: skip
    ax.text(column, row, count, ha="center", va="center", fontsize=7)
ax.set_xticks(range(7), names, rotation=45, ha="right")
ax.set_yticks(range(7), names)
ax.set(xlabel="predicted", ylabel="true")
plt.show()
pd.DataFrame(confusion.numpy(), index=names, columns=names)

# %% [markdown]
# The stored `cpu` run (9.2 minutes on 2 CPU cores) reaches a validation accuracy of
# 0.89. Most of its mistakes mix up ellipses and hexagons, which a small shape blurred
# to a few pixels makes hard to tell apart, and rectangles with their neighbours; the
# background patches are recognised best. A few minutes of training do not make a
# perfect classifier, and need not: what the detector needs is features that respond
# to shapes, their edges and their corners, rather than to noise.
#
# ## 5. What the features learned
#
# The pre-trained classifier, rebuilt from the file, beside the random network it
# started from:

# %%
pretrained = BackboneClassifier(18, 32, len(names)).eval()
pretrained.backbone.load_weights(stored["state_dict"], "the stored file")
pretrained.fc.load_state_dict(stored["classifier"])
models = {"random": random_model, "pre-trained": pretrained}

# %% [markdown]
# **The first layer.** `conv1` has 32 filters of 3 x 7 x 7 that look at the RGB
# pixels; each is shown as a 7 x 7 colour patch, scaled to the range of all 32.

# %%
# NBVAL_IGNORE_OUTPUT
# (the weights of the stored run)
figure, axes = plt.subplots(1, 2, figsize=(9, 4.6))
for ax, (name, model) in zip(axes, models.items(), strict=True):
    weight = model.backbone.conv1.weight.detach()  # (32, 3, 7, 7)
    weight = (weight - weight.min()) / (weight.max() - weight.min())
    grid = F.pad(weight, (1, 1, 1, 1), value=1.0)  # a white frame, (32, 3, 9, 9)
    grid = grid.view(4, 8, 3, 9, 9).permute(0, 3, 1, 4, 2).reshape(4 * 9, 8 * 9, 3)
    ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title(name)
plt.show()

# %% [markdown]
# The random filters are noise. After the pre-training a few have become smooth: light
# against dark along one direction (an edge detector), or one colour against another
# (the shapes set paints every object in flat colours). Most still carry much of their
# initial noise: 1500 steps on small crops are far from the 90 epochs of ImageNet after
# which nearly every filter of the first layer is a clean edge, colour or blob detector.
#
# **Feature maps of a whole image.** The backbone is convolutional, so the weights
# trained on 64 px crops apply to a whole 320 px image, as in a detector. Stages 3, 4
# and 5 (strides 8, 16, 32: what the detectors' necks read), each shown as its mean
# over the channels, scaled to [0, 1] per map:

# %%
# NBVAL_IGNORE_OUTPUT
# (the feature maps of the stored run)
feature_image = val_set.load_image(val_set.image_ids[2])  # (3, 320, 320)
stage_maps = {}
for name, model in models.items():
    stages = ResNetBackbone(18, out_stages=(3, 4, 5), width=32).eval()
    stages.load_weights(model.backbone.state_dict(), name)
    with torch.no_grad():
        normalised = (feature_image[None] - model.pixel_mean) / model.pixel_std
        stage_maps[name] = stages(normalised)  # (1, 64, 40, 40), (1, 128, 20, 20), (1, 256, 10, 10)
figure, axes = plt.subplots(2, 4, figsize=(10, 5))
for row, (name, maps) in enumerate(stage_maps.items()):
    axes[row, 0].imshow(feature_image.permute(1, 2, 0))
    axes[row, 0].set_ylabel(name)
    for column, (stage, feature) in enumerate(zip((3, 4, 5), maps, strict=True), start=1):
        mean = feature[0].mean(dim=0)  # (H, W)
        axes[row, column].imshow((mean - mean.min()) / (mean.max() - mean.min()), cmap="magma")
        channels, height, width = feature.shape[1:]
        axes[row, column].set_title(f"stage {stage}: {channels} x {height} x {width}")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
figure.tight_layout()
plt.show()

# %% [markdown]
# The random network's maps are brightest where the image is brightest (the white
# cross, left): random weights mostly pass the intensity on. The pre-trained maps of
# stages 3 and 4 trace the outlines and corners of the shapes, the borders between flat
# colours that its crops taught it to look at, and stay dark inside flat regions. At
# stage 5, a 10 x 10 map whose cells see hundreds of pixels, neither is easy to read by
# eye; the next measure reads it for us.
#
# **Pooled features, class by class.** A linear probe trains a linear classifier on
# frozen features to measure how much they know. A cruder measure takes seconds: the
# *nearest centroid*. Pool the stage-5 features of half of the validation crops
# (`features`, 256 numbers per crop, each crop's vector scaled to length 1), average
# them per class, and classify the other half by the closest class average. The
# classifier's own layer is not used.

# %%
num_probe = 600 if schedule_name == "ci" else len(val_crops)  # ci: seconds
probe_images = torch.stack([val_crops[index][0] for index in range(num_probe)])  # (N, 3, 64, 64)
probe_labels = val_crops.labels[:num_probe]  # (N,)
fit, test = torch.arange(num_probe) % 2 == 0, torch.arange(num_probe) % 2 == 1


def nearest_centroid_accuracy(model) -> tuple[float, torch.Tensor]:
    """Accuracy on the odd crops of the class centroids of the even ones, and the features."""
    with torch.no_grad():
        features = F.normalize(model.features(probe_images), dim=1)  # (N, 256)
    centroids = torch.stack(
        [features[fit & (probe_labels == label)].mean(dim=0) for label in range(len(names))]
    )  # (K, 256)
    predicted = torch.cdist(features[test], centroids).argmin(dim=1)  # (N / 2,)
    return float((predicted == probe_labels[test]).float().mean()), features


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the stored run)
probe = {name: nearest_centroid_accuracy(model) for name, model in models.items()}
pd.Series({name: accuracy for name, (accuracy, _) in probe.items()}, name="nearest centroid")

# %% [markdown]
# Chance is about 1/7. The random network's features separate the classes hardly
# better than chance (0.22 in the stored run); the pre-trained ones, 0.89, as well as
# the trained classifier itself, with no trained layer on top. A 2-D view of the same
# features, their first two principal components, coloured by class:

# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the stored run)
figure, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, (name, (_, features)) in zip(axes, probe.items(), strict=True):
    centred = features - features.mean(dim=0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ directions[:2].T  # (N, 2)
    for label, class_name in enumerate(names):
        mine = probe_labels == label
        ax.scatter(points[mine, 0], points[mine, 1], s=3, label=class_name)
    ax.set(title=name, xlabel="PC 1", ylabel="PC 2")
axes[1].legend(markerscale=4, fontsize=8, loc="best")
figure.tight_layout()
plt.show()

# %% [markdown]
# The random features are one cloud; the pre-trained ones a cluster per class, with
# ellipses and hexagons overlapping, the pair the confusion matrix mixes up most. These
# are the features the detector's neck and head start from.
#
# ## 6. How a detector uses it
#
# A detector's configuration names the weights its backbone starts from. The CPU
# preset of ATSS (notebook 40 on) names the course's backbone; mmdet's ATSS R50-FPN
# names torchvision's ImageNet weights:

# %%
atss = build_atss_r18half_fpn64(6)
print("atss-r18half-fpn64:", atss.config.pretrained)
print("atss-r50:          ", build_atss_r50(80).config.pretrained)

# %% [markdown]
# Building the model loads nothing. At the start of a new run (not a resumed one),
# `detutils.engine.train` calls `load_pretrained(model)`, which does what mmdet's
# `init_weights` does with `init_cfg`: it reads the name in `model.config.pretrained`
# and loads the weights into the backbone only; the FPN and the head keep their
# initialisation.

# %%
before = copy.deepcopy(atss.state_dict())
source = load_pretrained(atss, verbose=False)
after = atss.state_dict()
changed = sorted({key.split(".")[0] for key in after if not torch.equal(after[key], before[key])})
print("read from:", Path(source).parent.name)
print("changed parts:", changed)
print(
    "conv1 as stored:",
    torch.equal(atss.backbone.conv1.weight, stored["state_dict"]["conv1.weight"]),
)

# %% [markdown]
# - **`train(..., pretrained=False)`** skips the loading: the backbone starts from
#   torchvision's random initialisation. Notebook 43 trains ATSS both ways and
#   compares them.
# - **The `gpu` schedules** keep the references' ResNet-50 and name torchvision's
#   ImageNet weights, `"torchvision:ResNet50_Weights.IMAGENET1K_V1"`. They are read
#   from torch's cache, `$TORCH_HOME/hub/checkpoints` (`~/.cache/torch` by default),
#   or downloaded where the machine is online; offline and not in the cache, the run
#   stops with a message that says which file to put there.
# - **A path** to a file of ResNet weights with torchvision's names works too.
# - **Ahead of time**: `python -m detutils.engine.pretrain` builds the course's file
#   (minutes), so that the first detector run does not wait for it.
# - The file lives in `data/backbones/`, which git ignores, like the shapes set; it is
#   rebuilt when it is missing or was made with another recipe.

# %% [markdown]
# ## Recap
#
# - The references of ATSS, Faster R-CNN, Deformable DETR and Co-DETR start from an
#   ImageNet ResNet-50; from random weights they learn next to nothing in CPU
#   minutes. The course pre-trains its own backbone on the shapes set instead.
# - The task: classify `ObjectCrops`, squares of 1.5 x a box's longer side (plus
#   a quarter for the random zoom) resized to 64 px, six shapes and a background class.
# - The network: ResNet-18 at half width, 2.8 M parameters instead of 11.2 M, a
#   quarter of the arithmetic; ImageNet normalisation, as in the detectors.
# - The recipe: AdamW 0.002, 5 % warm-up, cosine, 1500 steps of 128 crops; minutes on
#   a CPU, stored in `data/backbones/` with its recipe.
# - The pre-trained filters are smooth edge and colour detectors, its feature maps
#   light up on objects, and its pooled features separate the classes far better
#   than random ones.
# - `config.pretrained` names the weights; `train` loads them into the backbone at the
#   start of a new run, unless `pretrained=False`.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write `crop_square(box)`: for one box `(4,)` xyxy in pixels, the
# square `(4,)` xyxy that `ObjectCrops` cuts and stores for it (side 1.5 x 1.25 x the
# box's longer side, centred on the box's centre). By hand first: for the box
# `(40, 60, 100, 80)`, the centre is `(70, 70)` and the side 1.875 x 60 = 112.5. Then
# set `val_context` to how many times the box's longer side a *validation* crop shows
# (the centre `round(0.9 x 80)` px of the 80 px stored crop).

# %% tags=["solution"]
crop_square = None  # your function: (4,) xyxy -> (4,) xyxy
val_context = None  # a number
### BEGIN SOLUTION


def crop_square(box):
    box = torch.as_tensor(box, dtype=torch.float32)
    center = (box[:2] + box[2:]) / 2
    half = (box[2:] - box[:2]).max() * 1.5 * 1.25 / 2
    return torch.cat([center - half, center + half])


val_context = 1.5 * 1.25 * round(0.9 * 80) / 80  # 1.6875
### END SOLUTION
if crop_square is not None:
    print(crop_square(torch.tensor([40.0, 60.0, 100.0, 80.0])), val_context)

# %% tags=["check"]
check_true(
    callable(crop_square),
    "`crop_square` is still None (or not a function): define crop_square(box).",
    hint="the centre is the mean of the two corners; half the side is 1.875 x longer side / 2",
)
check_close(
    "crop_square((40, 60, 100, 80))", crop_square(torch.tensor([40.0, 60.0, 100.0, 80.0])),
    [13.75, 13.75, 126.25, 126.25],
    hint="centre (70, 70), side 1.5 x 1.25 x 60 = 112.5: the corners are 56.25 away.",
)  # fmt: skip
check_close(
    "val_context", val_context, 1.5 * 1.25 * 72 / 80,
    hint="the stored crop spans 1.875 longer sides over 80 px; a validation crop shows "
    "its centre 72 px.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
tall = torch.tensor([10.0, 0.0, 30.0, 100.0])
check_close(
    "crop_square of a tall box", crop_square(tall), crop_squares(tall[None], 1.5 * 1.25)[0],
    hint="the longer side is the height here (100 px)",
)  # fmt: skip
for box in target["boxes"].as_subclass(torch.Tensor):
    check_close(
        "crop_square of a validation box", crop_square(box), crop_squares(box[None], 1.875)[0],
        hint="the same square as ObjectCrops' crop_squares(boxes, 1.5 * 1.25)",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `accuracy_and_recall(confusion)`: for a `(K, K)` confusion
# matrix (rows: true class, columns: predicted), the top-1 accuracy (a number) and the
# recall of each class (a `(K,)` tensor: the fraction of that class's crops predicted
# as it). The cell applies it to the stored run's matrix.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the stored run)
accuracy_and_recall = None  # your function: (K, K) -> (number, (K,))
### BEGIN SOLUTION


def accuracy_and_recall(confusion):
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    accuracy = float(confusion.diag().sum() / confusion.sum())
    return accuracy, confusion.diag() / confusion.sum(dim=1)


### END SOLUTION
if accuracy_and_recall is not None:
    accuracy, recall = accuracy_and_recall(confusion)
    print(f"accuracy {accuracy:.3f}")
    print(pd.Series(recall.tolist(), index=names, name="recall").round(3))

# %% tags=["check"]
check_true(
    callable(accuracy_and_recall),
    "`accuracy_and_recall` is still None (or not a function): define it.",
    hint="accuracy: the diagonal's sum over the total; recall: the diagonal over the row sums",
)
# 25 crops: 8 + 6 + 5 right; rows of 10, 10 and 5 crops.
small = torch.tensor([[8, 1, 1], [2, 6, 2], [0, 0, 5]])
answer = accuracy_and_recall(small)
check_true(
    isinstance(answer, tuple) and len(answer) == 2,
    f"accuracy_and_recall should return a pair (accuracy, recall), got {type(answer).__name__}.",
    hint="return accuracy, recall",
)
check_close(
    "the accuracy of [[8, 1, 1], [2, 6, 2], [0, 0, 5]]", answer[0], 19 / 25,
    hint="the crops on the diagonal (8 + 6 + 5) over all crops (25)",
)  # fmt: skip
check_close(
    "the recall of [[8, 1, 1], [2, 6, 2], [0, 0, 5]]", answer[1], [0.8, 0.6, 1.0],
    hint="rows are the true classes: recall divides the diagonal by the row sums "
    "(dividing by the column sums gives the precision).",
)  # fmt: skip
check_close(
    "the accuracy of the stored confusion matrix", accuracy_and_recall(confusion)[0],
    stored["accuracy"], hint="crop_accuracy stored the diagonal's sum over the total",
)  # fmt: skip
### BEGIN HIDDEN TESTS
diagonal = accuracy_and_recall(torch.diag(torch.tensor([3, 4, 5, 6])))
check_close("the accuracy of a diagonal matrix", diagonal[0], 1.0, hint="every crop right")
check_close("the recall of a diagonal matrix", diagonal[1], torch.ones(4), hint="every crop right")
one_class_wrong = accuracy_and_recall(torch.tensor([[0, 4], [0, 6]]))
check_close(
    "the recall of [[0, 4], [0, 6]]", one_class_wrong[1], [0.0, 1.0],
    hint="class 0's 4 crops were all predicted as class 1",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Count parameters by hand. Write `stage_parameters(in_channels,
# channels, blocks)`: the parameters of a ResNet stage of `blocks` basic blocks (two
# 3 x 3 convolutions without bias, each followed by a batch norm with a scale and a
# shift per channel), whose first block takes `in_channels` and, when
# `in_channels != channels`, adds a shortcut of a 1 x 1 convolution and a batch norm.
# Stage 2 of the half-width ResNet-18 is `stage_parameters(32, 32, 2)`.

# %% tags=["solution"]
stage_parameters = None  # your function: (int, int, int) -> int
### BEGIN SOLUTION


def stage_parameters(in_channels, channels, blocks):
    def block(c_in):
        count = 9 * c_in * channels + 2 * channels + 9 * channels * channels + 2 * channels
        if c_in != channels:
            count += c_in * channels + 2 * channels  # the 1 x 1 shortcut and its batch norm
        return count

    return block(in_channels) + (blocks - 1) * block(channels)


# Stage 2, half width: 2 blocks of 2 x (9 x 32 x 32 + 64) = 2 x 18,560 = 37,120.
### END SOLUTION
if stage_parameters is not None:
    print(stage_parameters(32, 32, 2), stage_parameters(32, 64, 2))

# %% tags=["check"]
check_true(
    callable(stage_parameters),
    "`stage_parameters` is still None (or not a function): define it.",
    hint="a 3 x 3 conv from a to b channels has 9 a b weights; a batch norm 2 b",
)
half = ResNetBackbone(18, width=32)
for stage, arguments in [(2, (32, 32, 2)), (3, (32, 64, 2))]:
    layer = getattr(half, f"layer{stage - 1}")
    check_function(
        "stage_parameters", stage_parameters, [arguments],
        lambda *_, layer=layer: sum(p.numel() for p in layer.parameters()),
        hint="stage 2: 2 blocks x (2 x 9 x 32 x 32 + 2 x 2 x 32) = 37,120; stage 3 adds "
        "a 1 x 1 shortcut 32 -> 64 and its batch norm to its first block",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
resnet34 = ResNetBackbone(34)
for arguments, layer in [((128, 256, 6), resnet34.layer3), ((64, 64, 3), resnet34.layer1)]:
    check_function(
        "stage_parameters", stage_parameters, [arguments],
        lambda *_, layer=layer: sum(p.numel() for p in layer.parameters()),
        hint="ResNet-34's stages have 3, 4, 6 and 3 blocks; only the first has a shortcut",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - K. He, X. Zhang, S. Ren, J. Sun, *Deep Residual Learning for Image Recognition*,
#   CVPR 2016, <https://arxiv.org/abs/1512.03385> (ResNet; table 1 gives the stages).
# - K. He, R. Girshick, P. Dollár, *Rethinking ImageNet Pre-training*, ICCV 2019,
#   <https://arxiv.org/abs/1811.08883>: detectors trained from scratch on COCO catch
#   up with pre-trained ones, but need much longer schedules (and normalisation that
#   works with small batches).
# - torchvision, *Models and pre-trained weights*:
#   <https://pytorch.org/vision/stable/models.html> (the weight enums such as
#   `ResNet50_Weights.IMAGENET1K_V1`, where they are cached).
# - mmdet's ATSS config, `configs/atss/atss_r50_fpn_1x_coco.py`, and its ResNet's
#   `init_cfg`: <https://github.com/open-mmlab/mmdetection/tree/main/configs/atss>
