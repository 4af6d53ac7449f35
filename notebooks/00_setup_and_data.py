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
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torchvision import tv_tensors

from detutils import SCHEDULES, current_schedule
from detutils import boxes as box_ops
from detutils.checks import check_close, check_equal, check_passed, check_true
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
# batch `(B, 3, 256, 256)` plus a list of B target dicts (each image has its own number
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
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Which class has the largest share of *small* objects (area < 32² px)
# in the training split? With pandas and the `annotations` table above, assign
# `small_share`, a Series indexed by class name holding the fraction of that class's
# objects that are small; `small_counts`, a Series indexed by class name holding the
# number of small objects (together they must add up to all the small objects); and
# `most_small`, the name (a `str`) of the class with the largest share.

# %% tags=["solution"]
small_share = small_counts = None  # pandas Series each: class name -> fraction, count
most_small = None  # str, a class name
### BEGIN SOLUTION
is_small = annotations["area"] < 32**2  # one boolean per annotation
small_share = is_small.groupby(annotations["class"]).mean().sort_values(ascending=False)
small_counts = is_small.groupby(annotations["class"]).sum()
most_small = small_share.idxmax()
### END SOLUTION
print(small_share if small_share is None else small_share.round(4).to_string())
print("largest share of small objects:", most_small)

# %% tags=["check"]
# Counted from the annotation file itself, one annotation at a time.
category_name = {c["id"]: c["name"] for c in coco.dataset["categories"]}
small_by_class = dict.fromkeys(CLASS_NAMES, 0)
all_by_class = dict.fromkeys(CLASS_NAMES, 0)
for ann in coco.dataset["annotations"]:
    all_by_class[category_name[ann["category_id"]]] += 1
    small_by_class[category_name[ann["category_id"]]] += int(ann["area"] < 32**2)
expected_share = {n: small_by_class[n] / all_by_class[n] for n in CLASS_NAMES}
check_true(
    isinstance(small_share, pd.Series) and sorted(small_share.index) == sorted(CLASS_NAMES),
    f"`small_share` should be a pandas Series with one value per class {list(CLASS_NAMES)}; "
    f"got {type(small_share).__name__}.",
    hint='group the booleans `annotations["area"] < 32**2` by `annotations["class"]`; '
    "the mean of booleans is the fraction of True.",
)  # fmt: skip
check_close(
    "small_share (in the order of CLASS_NAMES)", small_share.reindex(list(CLASS_NAMES)).tolist(),
    list(expected_share.values()),
    hint="a fraction per class: its small objects divided by all its objects, in [0, 1].",
)  # fmt: skip
check_true(
    isinstance(most_small, str),
    f"`most_small` should be a class name (a str); got {type(most_small).__name__}.",
    hint="the index label of the largest value of `small_share`: `small_share.idxmax()`.",
)  # fmt: skip
check_equal(
    "most_small", most_small, max(expected_share, key=expected_share.get),
    hint="the class name whose share is the largest: `small_share.idxmax()`.",
)  # fmt: skip
check_true(
    isinstance(small_counts, pd.Series),
    f"`small_counts` should be a pandas Series of counts per class; "
    f"got {type(small_counts).__name__}.",
    hint="the same grouping as for the share, with `.sum()` instead of `.mean()`.",
)  # fmt: skip
check_equal(
    "small_counts.sum()", int(small_counts.sum()), sum(small_by_class.values()),
    hint="every annotation with area < 32**2 counts once, in its own class.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "small_counts (in the order of CLASS_NAMES)", small_counts.reindex(list(CLASS_NAMES)).tolist(),
    [small_by_class[n] for n in CLASS_NAMES], hint="the number of small objects of each class",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** A detector's output on the letterboxed square must be turned into
# COCO results for the evaluator: `xyxy` on the square → `xyxy` on the file →
# `[x, y, w, h]` with the category id. Write `to_coco_results(target,
# label_to_cat_id)`: from one target dict of `loader` (`boxes` `(M, 4)` on the square,
# `labels` `(M,)`, `scale`, `pad`, `image_id`) it returns a list of M dicts
# `{"image_id": ..., "category_id": ..., "bbox": [x, y, w, h]}`, the box in pixels of
# the file, where `label_to_cat_id[label]` is the category id of a label. The check
# applies it to the targets of the first batch of `loader` above and compares with the
# annotation file's boxes.

# %% tags=["solution"]
to_coco_results = None  # your function (target dict, label_to_cat_id list) -> list of M dicts
### BEGIN SOLUTION


def to_coco_results(target, label_to_cat_id):
    file_boxes = undo_letterbox(target["boxes"], target["scale"], target["pad"])  # (M, 4)
    return [
        {
            "image_id": target["image_id"],
            "category_id": label_to_cat_id[label],
            "bbox": box_ops.xyxy_to_xywh(box).tolist(),
        }
        for box, label in zip(file_boxes, target["labels"].tolist(), strict=True)
    ]


### END SOLUTION

# %% tags=["check"]
check_true(
    callable(to_coco_results),
    "`to_coco_results` should be a function (target, label_to_cat_id) -> list of dicts; "
    f"got {type(to_coco_results).__name__}.",
    hint="undo_letterbox(target['boxes'], target['scale'], target['pad']) gives the file's "
    "xyxy boxes; box_ops.xyxy_to_xywh turns them into COCO's [x, y, w, h].",
)  # fmt: skip
for batch_target in targets:
    image_id = batch_target["image_id"]
    results = to_coco_results(batch_target, val_set.label_to_cat_id)
    anns = val_set.coco.loadAnns(val_set.coco.getAnnIds(imgIds=[image_id]))
    anns = [a for a in anns if not a["iscrowd"]]  # crowd boxes never become targets
    check_true(
        isinstance(results, list) and len(results) == len(anns)
        and all(isinstance(r, dict) and {"image_id", "category_id", "bbox"} <= r.keys()
                for r in results),
        f"image {image_id}: expected a list of {len(anns)} dicts with the keys image_id, "
        f"category_id and bbox, one per box of the target; got {results!r:.120}",
        hint="one dict per row of target['boxes'], in the same order.",
    )  # fmt: skip
    check_equal(
        f"the image ids of image {image_id}", [r["image_id"] for r in results],
        [image_id] * len(anns), hint="every result of a target carries its target['image_id'].",
    )  # fmt: skip
    check_equal(
        f"the category ids of image {image_id}", [r["category_id"] for r in results],
        [a["category_id"] for a in anns],
        hint="labels are 0 .. C-1; the file's category ids are label_to_cat_id[label].",
    )  # fmt: skip
    check_close(
        f"the bboxes of image {image_id}", [r["bbox"] for r in results],
        [a["bbox"] for a in anns], rtol=0, atol=1e-3,
        hint="first (box - [left, top, left, top]) / scale, then w = x2 - x1, h = y2 - y1.",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
# A 640 x 480 file letterboxed to 320 (exercise 3): scale 0.5, 40 rows of padding on top.
padded = {
    "boxes": torch.tensor([[32.0, 64.0, 288.0, 256.0]]),
    "labels": torch.tensor([2]),
    "scale": 0.5,
    "pad": torch.tensor([0.0, 40.0]),
    "image_id": 7,
}
padded_results = to_coco_results(padded, [1, 2, 3, 4, 5, 6])
check_close(
    "the bbox of a padded square", padded_results[0]["bbox"], [64.0, 48.0, 512.0, 384.0],
    hint="subtract the padding (left, top) before dividing by the scale.",
)  # fmt: skip
check_equal("its category id", padded_results[0]["category_id"], 3, hint="label 2 -> id 3")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A COCO image is 640 × 480 (W × H). Letterboxed to 320, what are the
# scale, the resized size and the padding (left, top)? Work them out by hand and assign
# `scale_by_hand` (a number), `resized_wh` (width, height) and `pad_by_hand`
# (left, top), then `square_box` `(1, 4)`: where the box `(64, 48, 576, 432)` of the
# file lands on the square. The check runs `Letterbox(320)` on a blank 640 × 480 image
# with that box.

# %% tags=["solution"]
scale_by_hand = None  # a number
resized_wh = pad_by_hand = None  # two numbers each: (width, height) and (left, top)
square_box = None  # (1, 4) xyxy on the square
### BEGIN SOLUTION
# Longer side 640 -> 320: scale 0.5, resized to 320 x 240, (320 - 240) / 2 = 40 rows on top.
scale_by_hand = 0.5
resized_wh = (320, 240)
pad_by_hand = (0, 40)
square_box = [[64 * 0.5, 48 * 0.5 + 40, 576 * 0.5, 432 * 0.5 + 40]]  # x s + left, y s + top
### END SOLUTION
print(f"scale {scale_by_hand}, resized {resized_wh}, pad {pad_by_hand}, box {square_box}")

# %% tags=["check"]
blank = tv_tensors.Image(torch.zeros(3, 480, 640))
one_box = {
    "boxes": tv_tensors.BoundingBoxes(
        torch.tensor([[64.0, 48.0, 576.0, 432.0]]), format="XYXY", canvas_size=(480, 640)
    ),
    "labels": torch.tensor([0]),
}
square, square_target = Letterbox(320)(blank, one_box)
resized = square[0] == 0  # (320, 320): True on the image, False on the grey padding
check_close(
    "scale_by_hand", scale_by_hand, square_target["scale"],
    hint="the longer side, 640, must fit into 320.",
)  # fmt: skip
check_close(
    "resized_wh", resized_wh, [resized.any(dim=0).sum(), resized.any(dim=1).sum()],
    hint="both sides times the scale, (width, height).",
)  # fmt: skip
check_close(
    "pad_by_hand", pad_by_hand, square_target["pad"],
    hint="the 320 - 240 spare rows are split equally above and below; no column is spare.",
)  # fmt: skip
check_close(
    "square_box", square_box, square_target["boxes"].as_subclass(torch.Tensor),
    hint="x * scale + left and y * scale + top, for both corners.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** With `subset_coco`, cut from the validation split `val_coco` a subset
# `chosen` of 20 images holding a `triangle` or a `hexagon` (seed 0), and the same with
# seed 1, `other`. The check verifies that every kept image has at least one non-crowd
# annotation of those classes, that only those classes are kept, and that the other
# seed picks other images.

# %% tags=["solution"]
val_coco = val_set.coco.dataset  # the validation split's COCO dict
chosen = other = None  # COCO dicts (images, annotations, categories)
### BEGIN SOLUTION
chosen = subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=0)
other = subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=1)
### END SOLUTION
if chosen is not None:
    print(f"{len(chosen['images'])} images, {len(chosen['annotations'])} annotations")

# %% tags=["check"]
wanted = {c["id"] for c in val_coco["categories"] if c["name"] in ("triangle", "hexagon")}
holding = {a["image_id"] for a in val_coco["annotations"]
           if a["category_id"] in wanted and not a["iscrowd"]}  # fmt: skip
subset_hint = 'subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=...)'
for name, subset in (("chosen", chosen), ("other", other)):
    check_true(
        isinstance(subset, dict) and {"images", "annotations", "categories"} <= subset.keys(),
        f"`{name}` should be a COCO dict with images, annotations and categories; "
        f"got {type(subset).__name__}.",
        hint=subset_hint,
    )  # fmt: skip
    check_equal(f"the number of images of {name}", len(subset["images"]), 20, hint=subset_hint)
    check_true(
        all(image["id"] in holding for image in subset["images"]),
        f"`{name}` keeps an image without a non-crowd triangle or hexagon.",
        hint="pass the class names as the categories spell them: 'triangle', 'hexagon'.",
    )  # fmt: skip
    check_true(
        {a["category_id"] for a in subset["annotations"]} <= wanted,
        f"`{name}` keeps annotations of classes other than triangle and hexagon "
        f"(category ids {sorted(wanted)}).",
        hint="subset_coco keeps only the chosen categories.",
    )  # fmt: skip
check_true(
    [i["id"] for i in other["images"]] != [i["id"] for i in chosen["images"]],
    "`other` holds the same images as `chosen`: give it another seed.",
    hint="seed=0 for chosen, seed=1 for other.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
reference = subset_coco(val_coco, ["triangle", "hexagon"], num_images=20, seed=0)
check_equal(
    "the image ids of chosen", [i["id"] for i in chosen["images"]],
    [i["id"] for i in reference["images"]],
    hint="seed 0 on the validation split",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

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
