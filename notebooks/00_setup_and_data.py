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
# # 00 · Set-up and data
#
# Before a detector can learn anything, three things must be in place: an environment
# that runs the same everywhere, a data set whose difficulty we know, and a pipeline
# that turns its files into tensors without losing a box on the way. This notebook
# checks the first, builds the course's synthetic *shapes* set, explores it with the
# tools used for real COCO, and follows one image through the dataset and its
# transforms.
#
# **Learning goals**
#
# 1. Check the environment: versions, device, and the training schedule of this run.
# 2. Read a COCO-format annotation file with pycocotools and pandas: images, boxes in
#    `xywh`, categories, `area`, `iscrowd`.
# 3. Describe a detection set by numbers: objects per class and per image, box sizes
#    and the COCO small / medium / large bins.
# 4. Load images and targets with `CocoDetection` and the letterbox transforms, and
#    map a box on the network input back to the pixels of the file.
# 5. Point the course at real COCO: download, cut a subset, find a split.
#
# **Prerequisites**: Python, NumPy and pandas basics, PyTorch tensors.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torchvision import tv_tensors

from detutils import SCHEDULES, current_schedule
from detutils import boxes as box_ops
from detutils.data import (
    CLASS_NAMES,
    CocoDetection,
    build_transforms,
    collate,
    download,
    ensure_shapes,
    find_split,
    shapes,
    undo_letterbox,
)
from detutils.data.subset import subset_coco
from detutils.data.transforms import Letterbox
from detutils.viz import draw_boxes

# %% [markdown]
# ## 1. The environment
#
# The set-up cell above seeded Python's, NumPy's and torch's random generators, set
# one torch thread (small tensor work is then fast and bit-identical run to run), and
# printed the versions, the device and the *schedule*. The schedule says how long the
# training notebooks train:
#
# | schedule | where | training |
# | --- | --- | --- |
# | `ci` | the tests | seconds per notebook, only checks that everything runs |
# | `cpu` | a laptop | minutes, results worth looking at |
# | `gpu` | a CUDA machine | full schedules |
#
# It comes from the environment variable `DETUTILS_SCHEDULE`, and defaults to `gpu`
# where CUDA is available, else `cpu`. The code never names a device: it runs on
# `device`, whichever it is.

# %%
schedule = current_schedule()
assert schedule in SCHEDULES
ones = torch.ones(4, device=device)
assert ones.sum().item() == 4.0
print(f"schedules: {', '.join(SCHEDULES)}; this run: {schedule}")

# %% [markdown]
# ## 2. The shapes set
#
# The course trains on a synthetic set that a laptop makes in under a minute, yet
# holds what makes label assignment hard: objects of every size, touching and
# overlapping, on cluttered backgrounds. `ensure_shapes()` writes it to `data/shapes`
# on first use and returns at once afterwards (it rebuilds only when the stored
# parameters differ from the ones asked for).

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
print("root:", Path(root.parent.name) / root.name)
for path in sorted(root.glob("*/*")):
    detail = f"{len(list(path.iterdir()))} files" if path.is_dir() else "COCO annotations"
    print(f"  {path.relative_to(root)}: {detail}")

# %% [markdown]
# Its difficulty is fixed in `detutils/data/shapes.py`, so later work cannot make it
# easier without changing this table:

# %%
pd.DataFrame(
    {
        "value": [
            len(CLASS_NAMES),
            shapes.MAX_OBJECTS,
            shapes.MIN_SIDE,
            shapes.MAX_SIDE_FRACTION,
            shapes.MIN_VISIBLE,
            shapes.NEAR_PROBABILITY,
        ]
    },
    dtype=object,
    index=[
        "classes",
        "objects per image, at most",
        "smallest box side (px)",
        "largest box side / image side",
        "visible fraction, at least",
        "chance to be placed against another object",
    ],
)

# %% [markdown]
# Each image is drawn from its own seed `(seed, split, index)`: a textured background,
# distractor strokes that belong to no class (lines, arcs, thin rings and frames),
# then the objects, largest first. `render_sample` draws one image again and also
# returns the *owner map*: for each pixel, the index of the object that owns it
# (-1 for background). Later objects cover earlier ones, so an object owns only the
# pixels that stay visible.

# %%
image, owner, objects = shapes.render_sample(seed=0, split="train", index=3, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([o["bbox"] for o in objects], dtype=torch.float32))
gt_labels = torch.tensor([o["label"] for o in objects])
figure, (left, right) = plt.subplots(1, 2, figsize=(7, 3.5))
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES, ax=left, title="image and boxes")
right.imshow(np.ma.masked_less(owner, 0), cmap="tab20", interpolation="nearest")
right.set_title("owner map (background blank)")
right.axis("off")
plt.show()

# %%
table = pd.DataFrame(
    {
        "class": [CLASS_NAMES[o["label"]] for o in objects],
        "bbox (x, y, w, h)": [tuple(o["bbox"]) for o in objects],
        "visible px": [o["area"] for o in objects],
        "shape px": [o["full_area"] for o in objects],
    }
)
table["visible"] = table["visible px"] / table["shape px"]
table

# %% [markdown]
# A box is the *tight box of the visible pixels*. A placement that would leave any
# object less than half visible (behind later objects, or past the image border) is
# tried elsewhere, so no box surrounds an object that is mostly hidden. Both claims,
# checked on this image:

# %%
for index, obj in enumerate(objects):
    ys, xs = np.nonzero(owner == index)  # the object's visible pixels
    tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert obj["bbox"] == [int(v) for v in tight]
    assert obj["area"] == len(xs) >= shapes.MIN_VISIBLE * obj["full_area"]
print(f"{len(objects)} boxes are tight; least visible object: {table['visible'].min():.4f}")

# %% [markdown]
# ## 3. The annotation file
#
# The set is stored in COCO format, the format of most detection data. One JSON file
# per split lists the `images`, the `annotations` (one per object, `bbox` as
# `[x, y, width, height]` in pixels, `area` in pixels, `iscrowd` 0 or 1) and the
# `categories`. `CocoDetection` reads it, checks every entry, and indexes it with
# pycocotools; its `.coco` is the pycocotools `COCO` object that the evaluator uses.

# %%
train_set = CocoDetection(*find_split(root, "train"))
coco = train_set.coco
first_entries = {
    "image": coco.dataset["images"][0],
    "annotation": coco.dataset["annotations"][0],
    "category": coco.dataset["categories"][0],
}
for kind, entry in first_entries.items():
    print(f"{kind:10s} {json.dumps(entry)}")
print(f"{len(coco.imgs)} images, {len(coco.anns)} annotations, {len(coco.cats)} categories")

# %% [markdown]
# pycocotools answers the usual questions with ids: `getCatIds` by name,
# `getImgIds` of the images holding a category, `getAnnIds` and `loadAnns` for the
# annotations of an image.

# %%
(star_id,) = coco.getCatIds(catNms=["star"])
star_images = coco.getImgIds(catIds=[star_id])
first_anns = coco.loadAnns(coco.getAnnIds(imgIds=[star_images[0]]))
print(f"category id of 'star': {star_id}; images with a star: {len(star_images)}")
print(f"image {star_images[0]} has {len(first_anns)} annotations")

# %% [markdown]
# For statistics, one row per annotation in a pandas DataFrame:

# %%
annotations = pd.DataFrame(coco.dataset["annotations"])
names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
annotations["class"] = annotations["category_id"].map(names)
annotations[["x", "y", "w", "h"]] = annotations["bbox"].tolist()
annotations[["image_id", "class", "x", "y", "w", "h", "area"]].head()

# %%
per_class = annotations.groupby("class").agg(
    objects=("id", "size"), images=("image_id", "nunique"), median_area=("area", "median")
)
per_class.loc[list(CLASS_NAMES)]

# %%
per_image = annotations.groupby("image_id").size().reindex(coco.getImgIds(), fill_value=0)
assert per_image.min() >= 1 and per_image.max() <= shapes.MAX_OBJECTS
per_image.describe().to_frame("objects per image").T

# %% [markdown]
# COCO's evaluator reports AP separately for *small* (area < 32² px), *medium*
# (< 96² px) and *large* objects, by the annotation's `area`. Here `area` counts the
# visible pixels of the object, as COCO's does for its masks. The shapes set puts
# each bin above 15 % of the objects:

# %%
bins = pd.cut(
    annotations["area"], [0, 32**2, 96**2, np.inf], right=False, labels=["small", "medium", "large"]
)
size_bins = bins.value_counts(normalize=True).sort_index().to_frame("fraction")
assert size_bins["fraction"].min() >= 0.15
size_bins

# %%
figure, axis = plt.subplots(figsize=(6, 3))
axis.hist(np.sqrt(annotations["area"]), bins=np.geomspace(2, 320, 40), color="tab:blue")
for edge in (32, 96):
    axis.axvline(edge, color="black", linestyle="--")
for middle, name in ((10, "small"), (55, "medium"), (180, "large")):
    axis.text(middle, axis.get_ylim()[1] * 0.92, name, horizontalalignment="center")
axis.set_xscale("log")
axis.set_xlabel("sqrt(area), px")
axis.set_ylabel("objects")
axis.set_title("object sizes in the training split")
plt.show()

# %% [markdown]
# ## 4. Images with their boxes

# %%
figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
for index, axis in enumerate(axes.flat):
    image, target = train_set[index]
    draw_boxes(image, target["boxes"], target["labels"], class_names=train_set.class_names, ax=axis)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Dataset and transforms
#
# An item of `CocoDetection` is an image, (3, H, W) float in [0, 1], and a target
# dict. Category ids become contiguous labels `0 .. C-1` (`label_to_cat_id` maps
# back for the evaluator), COCO `xywh` boxes become `xyxy` pixels, and crowd boxes
# never become targets.

# %%
image, target = train_set[0]
print("image", tuple(image.shape), image.dtype)
for key, value in target.items():
    print(f"{key:9s}", tuple(value.shape) if torch.is_tensor(value) else value)
print("labels -> category ids:", train_set.label_to_cat_id)

# %% [markdown]
# The `xywh -> xyxy` step inline, then the same from `detutils` from now on
# (`box_ops.xywh_to_xyxy`):

# %%
anns = coco.loadAnns(coco.getAnnIds(imgIds=[target["image_id"]]))
xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)  # (M, 4)
xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)  # (M, 4)
torch.testing.assert_close(xyxy, target["boxes"])
torch.testing.assert_close(box_ops.xywh_to_xyxy(xywh), target["boxes"])
print(xyxy[:3])

# %% [markdown]
# A network takes a batch of one size, so every image is *letterboxed* to a square:
# resized until its longer side fits, keeping its aspect ratio, then padded with
# grey. The target records `scale` and `pad` = (left, top), so a box predicted on the
# square maps back to the file as `(box - [left, top, left, top]) / scale`.
#
# The shapes images are square already, so take a wide strip of one, 320 × 200,
# and letterbox it to 256: scale 256 / 320 = 0.8, the strip becomes 256 × 160, and
# (256 − 160) / 2 = 48 rows of padding go above and below.

# %%
strip = tv_tensors.Image(image[:, 60:260, :])  # (3, 200, 320)
strip_boxes = (target["boxes"] - torch.tensor([0.0, 60.0, 0.0, 60.0])).clamp(min=0)
strip_boxes[:, 1::2] = strip_boxes[:, 1::2].clamp(max=200)
strip_target = {
    "boxes": tv_tensors.BoundingBoxes(strip_boxes, format="XYXY", canvas_size=(200, 320)),
    "labels": target["labels"],
}
square, square_target = Letterbox(256)(strip, strip_target)
print("square", tuple(square.shape), "scale", f"{square_target['scale']:.4f}")
print("pad (left, top)", square_target["pad"].tolist())

# %%
inline = strip_boxes * 0.8 + torch.tensor([0.0, 48.0, 0.0, 48.0])
torch.testing.assert_close(square_target["boxes"].as_subclass(torch.Tensor), inline)
back = undo_letterbox(
    square_target["boxes"].as_subclass(torch.Tensor), square_target["scale"], square_target["pad"]
)
torch.testing.assert_close(back, strip_boxes)
print("letterboxed boxes map back to the strip's pixels")

# %%
figure, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.3))
keep = (strip_boxes[:, 2] > strip_boxes[:, 0]) & (strip_boxes[:, 3] > strip_boxes[:, 1])
names = train_set.class_names
draw_boxes(strip, strip_boxes[keep], target["labels"][keep], class_names=names, ax=left)
left.set_title("strip, 320 x 200")
square_boxes = square_target["boxes"][keep]
draw_boxes(square, square_boxes, target["labels"][keep], class_names=names, ax=right)
right.set_title("letterboxed to 256 x 256")
plt.show()

# %% [markdown]
# `build_transforms(img_size, train)` chains the whole pipeline on
# `torchvision.transforms.v2`, whose `BoundingBoxes` move with the pixels:
#
# - evaluation: letterbox only, deterministic;
# - training: letterbox (with an optional random scale and position), horizontal
#   flip, colour jitter.
#
# Both end by clipping boxes to the square and dropping boxes narrower or shorter
# than 1 px, with their labels. Three draws of the training transforms on one image:

# %%
augment = build_transforms(256, train=True, scale_range=(0.6, 1.4))
figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
for axis in axes:
    square, square_target = augment(tv_tensors.Image(image), target)
    draw_boxes(square, square_target["boxes"], square_target["labels"], class_names=names, ax=axis)
    assert square.shape == (3, 256, 256)
    assert len(square_target["boxes"]) == len(square_target["labels"])
plt.tight_layout()
plt.show()

# %% [markdown]
# With transforms, the dataset yields squares, and `collate` stacks them into a
# batch `(B, 3, S, S)` plus a list of `B` target dicts (each image has its own number
# of boxes, so targets stay a list):

# %%
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(256, train=False))
loader = torch.utils.data.DataLoader(val_set, batch_size=4, collate_fn=collate)
images, targets = next(iter(loader))
print("images", tuple(images.shape), images.dtype)
print("boxes per image", [len(t["boxes"]) for t in targets])
print("scale", [f"{t['scale']:.4f}" for t in targets])

# %% [markdown]
# ## 6. Real COCO
#
# Everything above works for any COCO-format set. COCO 2017 itself is about 19 GB of
# training images; three commands, run from the course root, fetch it and cut a set
# small enough to study on one GPU:
#
# ```
# python -m detutils.data.download coco2017 --root data/coco --split val
# python -m detutils.data.download coco2017 --root data/coco
# python -m detutils.data.subset --src data/coco --out data/coco-animals \
#     --classes cat,dog,horse --train-images 4000 --val-images 500 --seed 0
# ```
#
# The download resumes a transfer cut short (HTTP `Range`), checks each archive's
# size and MD5 before extracting it, and refuses a corrupt one. Its table:

# %%
pd.DataFrame(
    {
        "url path": [a.path for a in download.COCO2017_ARCHIVES.values()],
        "GB": [a.size / 1e9 for a in download.COCO2017_ARCHIVES.values()],
        "MD5": [a.md5 for a in download.COCO2017_ARCHIVES.values()],
    },
    index=list(download.COCO2017_ARCHIVES),
)

# %% [markdown]
# `find_split(root, split)` accepts both layouts, the shapes one
# (`images/{split}/`, `annotations/instances_{split}.json`) and COCO 2017's
# (`{split}2017/`, `annotations/instances_{split}2017.json`), and says what is
# missing when neither is there:

# %%
try:
    find_split("data/coco", "val")
except FileNotFoundError as error:
    print(error)

# %% [markdown]
# The subset tool keeps the images that hold a chosen class, samples some of them with
# a seed, and keeps only the chosen categories (with their original ids). Its core is
# `subset_coco`, here on the shapes set:

# %%
small = subset_coco(coco.dataset, ["star", "cross"], num_images=100, seed=0)
print(f"{len(small['images'])} images, {len(small['annotations'])} annotations")
print("categories:", [(c["id"], c["name"]) for c in small["categories"]])
again = subset_coco(coco.dataset, ["star", "cross"], num_images=100, seed=0)
assert [i["id"] for i in again["images"]] == [i["id"] for i in small["images"]]

# %% [markdown]
# ## Recap
#
# - `setup()` seeds everything, sets one thread and prints versions, device and
#   schedule (`ci`, `cpu` or `gpu`, from `DETUTILS_SCHEDULE`).
# - `ensure_shapes()` makes the shapes set once: six classes, 1 to 12 objects, sizes
#   from 6 px to 80 % of the image, every COCO size bin above 15 %, touching and
#   overlapping objects, cluttered backgrounds; boxes are tight around the visible
#   pixels and no object is mostly hidden.
# - A COCO file lists images, annotations (`xywh` pixels, `area`, `iscrowd`) and
#   categories; pycocotools indexes it, pandas summarises it.
# - `CocoDetection` gives `(image, target)` with `xyxy` boxes and labels `0 .. C-1`;
#   `build_transforms` letterboxes (and augments), recording `scale` and `pad` so that
#   `undo_letterbox` maps boxes back; `collate` makes batches.
# - Real COCO arrives with `detutils.data.download`, shrinks with
#   `detutils.data.subset`, and loads through the same `find_split` and `CocoDetection`.
#
# ## Exercises
#
# **Exercise 1.** Which class has the largest share of *small* objects in the
# training split? Compute the fraction of small objects per class with pandas and
# check that the per-class counts add up to the number of small objects.

# %% tags=["solution"]
small_objects = annotations["area"] < 32**2
share = small_objects.groupby(annotations["class"]).mean().sort_values(ascending=False)
counts = small_objects.groupby(annotations["class"]).sum()
assert counts.sum() == small_objects.sum()
print(share.round(4).to_string())
print("largest share of small objects:", share.index[0])

# %% [markdown]
# **Exercise 2.** A detector's output on the letterboxed square must be turned into
# COCO results for the evaluator: `xyxy` on the square → `xyxy` on the file →
# `[x, y, w, h]` with the category id. Do it for the targets of the first batch of
# `loader` above, and check that you get back the annotation file's boxes.

# %% tags=["solution"]
for target in targets:
    file_boxes = undo_letterbox(target["boxes"], target["scale"], target["pad"])
    results = [
        {
            "image_id": target["image_id"],
            "category_id": val_set.label_to_cat_id[label],
            "bbox": box_ops.xyxy_to_xywh(box).tolist(),
        }
        for box, label in zip(file_boxes, target["labels"].tolist(), strict=True)
    ]
    anns = val_set.coco.loadAnns(val_set.coco.getAnnIds(imgIds=[target["image_id"]]))
    torch.testing.assert_close(
        torch.tensor([r["bbox"] for r in results]),
        torch.tensor([a["bbox"] for a in anns], dtype=torch.float32),
        atol=1e-4,
        rtol=0,
    )
    assert [r["category_id"] for r in results] == [a["category_id"] for a in anns]
print(f"{len(targets)} images: boxes and category ids match the annotation file")

# %% [markdown]
# **Exercise 3.** A COCO image is 640 × 480 (W × H). Letterboxed to 320, what are the
# scale, the resized size and the padding (left, top)? Work it out, then check with
# `Letterbox(320)` on a blank image with one box `(64, 48, 576, 432)`.

# %% tags=["solution"]
# Longer side 640 -> 320: scale 0.5, resized to 320 x 240, (320 - 240) / 2 = 40 rows on top.
blank = tv_tensors.Image(torch.zeros(3, 480, 640))
one_box = {
    "boxes": tv_tensors.BoundingBoxes(
        torch.tensor([[64.0, 48.0, 576.0, 432.0]]), format="XYXY", canvas_size=(480, 640)
    ),
    "labels": torch.tensor([0]),
}
square, square_target = Letterbox(320)(blank, one_box)
assert square.shape == (3, 320, 320)
assert square_target["scale"] == 0.5 and square_target["pad"].tolist() == [0.0, 40.0]
expected = torch.tensor([[32.0, 64.0, 288.0, 256.0]])  # x * 0.5, y * 0.5 + 40
torch.testing.assert_close(square_target["boxes"].as_subclass(torch.Tensor), expected)
print(square_target["boxes"].as_subclass(torch.Tensor).tolist())

# %% [markdown]
# **Exercise 4.** Cut a validation subset of 20 images holding a `triangle` or a
# `hexagon` with `subset_coco`, and check that every kept image has at least one
# non-crowd annotation of those classes, and that a different seed picks different
# images.

# %% tags=["solution"]
val_coco = val_set.coco.dataset
chosen = subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=0)
kept_ids = {c["id"] for c in chosen["categories"]}
holding = {a["image_id"] for a in chosen["annotations"] if not a["iscrowd"]}
assert len(chosen["images"]) == 20
assert all(image["id"] in holding for image in chosen["images"])
assert {a["category_id"] for a in chosen["annotations"]} <= kept_ids
other = subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=1)
assert [i["id"] for i in other["images"]] != [i["id"] for i in chosen["images"]]
print(f"20 images, {len(chosen['annotations'])} annotations of {sorted(kept_ids)}")

# %% [markdown]
# ## Further reading
#
# - T.-Y. Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014,
#   <https://arxiv.org/abs/1405.0312>; the data format:
#   <https://cocodataset.org/#format-data>
# - pycocotools, the COCO API and evaluator: <https://github.com/cocodataset/cocoapi>
#   (`PythonAPI/pycocotools/coco.py`, `cocoeval.py`)
# - torchvision transforms v2 and `tv_tensors`:
#   <https://docs.pytorch.org/vision/stable/transforms.html>, and the end-to-end
#   detection example:
#   <https://docs.pytorch.org/vision/stable/auto_examples/transforms/plot_transforms_e2e.html>
# - torchvision's detection reference data pipeline:
#   <https://github.com/pytorch/vision/blob/main/references/detection/coco_utils.py>
# - The letterbox of the YOLO family, ultralytics `LetterBox`:
#   <https://github.com/ultralytics/ultralytics/blob/main/ultralytics/data/augment.py>
