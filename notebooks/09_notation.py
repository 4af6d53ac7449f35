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
# # 09 · Notation: the letters, box formats and indices of the whole course
#
# Every notebook writes shapes such as `(B, A, 4)` and speaks of priors, levels and
# bins. This page fixes what each letter and each name means, once, for the whole
# course, and sets the names of the reference implementations beside them, since
# mmdet, ultralytics and NanoDet each use their own. Keep it open while you read the
# other notebooks: each one links here from its prerequisites.
#
# **Learning goals**
#
# 1. Read any shape of the course, `(B, A, C)`, `(B, M, 4)`, `(B, 4 (R + 1), H, W)`, and
#    say what each letter counts.
# 2. Move between the four box formats and say which one a tensor holds from its name.
# 3. Find a prior from its level, cell and anchor through the flat index, and back.
# 4. Translate the references' names and codes (`reg_max`, `nc`, mmdet's 1-based
#    `assigned_gt_inds`) into the course's.
#
# **Prerequisites**: notebooks 01 (box formats) and 02 (priors); or none, as a
# reference page.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import pandas as pd
import torch

from detutils import boxes as box_ops
from detutils import priors
from detutils.assigners import BACKGROUND, IGNORE, pad_ground_truth
from detutils.checks import check_equal, check_function, check_passed, check_true

# %% [markdown]
# ## 1. The letters
#
# One letter, one meaning, in every notebook, docstring and shape comment of the course.
# The examples are those of YOLOv8n on a 320 × 320 input with 6 classes, the size the
# `cpu` schedules train at.
#
# | letter | counts | example |
# | --- | --- | --- |
# | B | images in a batch | 16 |
# | C | classes (ids `0 .. C-1`) | 6 for the shapes set, 80 for COCO |
# | L | levels of the feature pyramid | 3 (strides 8, 16, 32) |
# | s | the stride of a level: input pixels per feature-map cell | 8 |
# | H, W | a feature map's height and width, H = input height / s | 40, 40 at stride 8 |
# | K | priors per location (anchors per cell) | 1 for YOLOv8 and ATSS, 3 for YOLOv3 and the RPN |
# | A | priors of all levels, flattened: A = K Σ H W | 2100 |
# | M | ground-truth boxes of an image (in a batch: the largest count, the rest padded) | 0 to 30 |
# | P | positives: priors an assigner gives a box to | |
# | R | the last bin of a distance distribution, so R + 1 bins | 7 for NanoDet, 15 for YOLOv8 |
# | Q | queries of a DETR decoder | 300 |
# | N | any other count, said where it is used (proposals, sampled RoIs) | |
#
# A shape is written with these letters in the order of the tensor's dimensions:
# `(B, A, C)` holds a class score per image, prior and class. A product inside a
# dimension, `(B, 4 (R + 1), H, W)`, means one dimension of that size, here 4 sides
# times R + 1 bins = 64 channels for YOLOv8.

# %%
image_size, strides = 320, [8, 16, 32]
feature_sizes = [(image_size // s, image_size // s) for s in strides]  # (H, W) per level
points, point_strides = priors.anchor_points(feature_sizes, strides)  # (A, 2), (A,)
anchors = priors.anchor_boxes(
    feature_sizes, strides, scales=[4.0], ratios=[0.5, 1.0, 2.0]
)  # K = 3 per cell: (A', 4)
table = pd.DataFrame(
    {
        "stride s": strides,
        "H x W": [f"{h} x {w}" for h, w in feature_sizes],
        "priors, K = 1": priors.num_priors_per_level(feature_sizes),
        "priors, K = 3": priors.num_priors_per_level(feature_sizes, 3),
    }
)
print(f"A = {len(points)} anchor points (K = 1), {len(anchors)} anchor boxes (K = 3)")
table

# %% [markdown]
# ## 2. Box formats
#
# A box tensor has shape `(..., 4)`. Its name says its format; a name without a
# format is `xyxy` in pixels of the network input (after the letterbox), the course's
# default.
#
# | name ends with | the four numbers | used by |
# | --- | --- | --- |
# | (nothing), `_xyxy` | x1, y1, x2, y2: the two corners, px | the course, torchvision |
# | `_xywh` | x1, y1, w, h: top-left corner and size, px | COCO annotation files |
# | `_cxcywh` | cx, cy, w, h: centre and size, px | YOLO heads, coders |
# | `_cxcywh_norm` | x and w over the image's W, y and h over H | YOLO labels, DETR |
#
# Image sizes are `(H, W)`, the order of `tensor.shape[-2:]`. One box in all four:

# %%
box = torch.tensor([[40.0, 60.0, 120.0, 100.0]])  # xyxy, px, in a 240 x 320 (H x W) image
formats = {
    "xyxy": box,
    "xywh": box_ops.xyxy_to_xywh(box),
    "cxcywh": box_ops.xyxy_to_cxcywh(box),
    "cxcywh_norm": box_ops.xyxy_to_cxcywh_norm(box, (240, 320)),
}
pd.DataFrame({name: values[0].tolist() for name, values in formats.items()}, index=list("abcd")).T

# %% [markdown]
# ## 3. The flat prior index
#
# The priors of all levels live in one list of length A: level after level, each level
# row by row (y, then x), and at each cell its K priors. The prior `k` of cell `(y, x)`
# of level `l` sits at
#
# $$\text{index} = \text{offset}_l + (y W_l + x) K + k, \qquad
#   \text{offset}_l = K \sum_{j < l} H_j W_j .$$
#
# Every per-prior tensor of the course uses this order: the priors `(A, 4)`, the
# flattened head outputs `(B, A, C)`, the assigner's labels `(B, A)`. A head's output
# map `(B, K C, H, W)` becomes `(B, H W K, C)` by a permute to `(B, H, W, K C)` and a
# reshape, which is the same order.

# %%
offsets = priors.level_offsets(priors.num_priors_per_level(feature_sizes))
index = priors.flat_prior_index(1, y=3, x=5, feature_sizes=feature_sizes)
print(f"level offsets {offsets}; level 1, cell (y=3, x=5) -> index {index}")
print(f"its point: {points[index].tolist()} px, stride {point_strides[index].item():.0f}")
assert index == 1600 + 3 * 20 + 5
assert points[index].tolist() == [(5 + 0.5) * 16, (3 + 0.5) * 16]

# %% [markdown]
# The same order for a head's output: a `(1, K C, H, W)` map whose every value encodes
# its own position, flattened as the heads do it, lands each value at its flat index.

# %%
K, C, H, W = 3, 2, 4, 5
position = torch.arange(H * W * K * C).reshape(1, H, W, K * C)  # (B, H, W, K C)
head_map = position.permute(0, 3, 1, 2)  # (B, K C, H, W): how a conv head emits it
flat = head_map.permute(0, 2, 3, 1).reshape(1, H * W * K, C)  # (B, A, C)
y, x, k = 2, 3, 1
row = priors.flat_prior_index(0, y, x, [(H, W)], anchor=k, anchors_per_location=K)
assert flat[0, row].tolist() == position[0, y, x, k * C : (k + 1) * C].tolist()
print(f"cell (y={y}, x={x}), anchor k={k} -> row {row} of (B, A, C)")

# %% [markdown]
# ## 4. What an assigner writes
#
# An assigner says, for every prior, which ground-truth box it learns from. The course
# writes a box's index `0 .. M-1`, or one of two named codes, for the gt index and the
# label alike:
#
# - `BACKGROUND` (-1): the prior is a negative, it learns "no object";
# - `IGNORE` (-2): the prior takes part in no loss.
#
# A batch of ground truth is a list of per-image dicts; batched assigners take it
# padded to `gt_boxes (B, M, 4)`, `gt_labels (B, M)` and a mask `gt_mask (B, M)`.

# %%
targets = [
    {
        "boxes": torch.tensor([[10.0, 10, 50, 60], [80, 20, 120, 90]]),
        "labels": torch.tensor([0, 3]),
    },
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an empty image
]
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
print(f"BACKGROUND = {BACKGROUND}, IGNORE = {IGNORE}")
print(
    f"gt_boxes {tuple(gt_boxes.shape)}, gt_labels {gt_labels.tolist()}, gt_mask {gt_mask.tolist()}"
)

# %% [markdown]
# ## 5. The references' names
#
# The course keeps the letters above; the references use their own names, and the
# course's configs keep a reference's name where a field mirrors it, so that a learner
# can find it there.

# %%
names = pd.DataFrame(
    [
        ["C", "num_classes", "nc", "num_classes"],
        ["K", "num_base_priors", "na (YOLOv3, v5)", "1"],
        [
            "R, the last bin",
            "reg_max (16 in GFLHead)",
            "reg_max - 1 (reg_max = 16 bins)",
            "reg_max (7)",
        ],
        [
            "priors per level",
            "num_level_priors (3.x), num_level_bboxes (2.x)",
            "anchor_points, stride_tensor",
            "as mmdet 2.x",
        ],
        [
            "gt index, BACKGROUND, IGNORE",
            "assigned_gt_inds: index + 1, 0 negative, -1 ignored",
            "target_gt_idx and fg_mask",
            "as mmdet",
        ],
        [
            "label of a negative",
            "assigned_labels -1; head targets use C",
            "target_labels, read only where fg_mask",
            "C in the targets",
        ],
    ],
    columns=["the course", "mmdet", "ultralytics", "NanoDet"],
)
names.set_index("the course")

# %% [markdown]
# Two of these trip learners most often. `reg_max` is the last bin in mmdet's GFL head
# and in NanoDet (bins 0 .. `reg_max`), but the number of bins in ultralytics (bins
# 0 .. `reg_max` - 1): the course writes R for the last bin and R + 1 for the number of
# bins. And mmdet's `assigned_gt_inds` counts boxes from 1, keeping 0 for negatives; the
# course counts from 0 and names the codes.

# %% [markdown]
# ## Recap
#
# - B images, C classes, L levels of stride s and size H × W, K priors per location,
#   A priors in all, M boxes per image, P positives, R + 1 bins, Q queries.
# - Boxes are `xyxy` pixels unless the name says `_xywh`, `_cxcywh` or `_norm`.
# - Flat prior index: offset of the level + (y W + x) K + k; head maps flatten into it.
# - `BACKGROUND = -1`, `IGNORE = -2`, for gt indices and labels alike; ground truth in a
#   batch is padded to M with a mask.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** YOLOv8 on a 640 × 640 input, strides 8, 16 and 32, one prior per cell:
# how many priors A are there? Compute `num_priors_640` from the feature sizes by hand
# (plain arithmetic, no `detutils`).

# %% tags=["solution"]
num_priors_640 = None  # an int
### BEGIN SOLUTION
num_priors_640 = (640 // 8) ** 2 + (640 // 16) ** 2 + (640 // 32) ** 2
### END SOLUTION
print(num_priors_640)

# %% tags=["check"]
sizes_640 = [(640 // s, 640 // s) for s in strides]
check_equal(
    "num_priors_640", num_priors_640, len(priors.anchor_points(sizes_640, strides)[0]),
    hint="A = sum over levels of H W, with H = W = 640 / s: 6400 + ... ",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `level_cell_anchor(index, feature_sizes, K)`, the inverse of the
# flat index: it returns the tuple `(level, y, x, k)` of a flat prior index.

# %% tags=["solution"]
level_cell_anchor = None  # your function (index, feature_sizes, K) -> (level, y, x, k)
### BEGIN SOLUTION


def level_cell_anchor(index, feature_sizes, K):
    for level, (height, width) in enumerate(feature_sizes):
        count = height * width * K
        if index < count:
            cell, k = divmod(index, K)
            y, x = divmod(cell, width)
            return level, y, x, k
        index -= count
    raise IndexError("index beyond the last level")


### END SOLUTION

# %% tags=["check"]
check_true(callable(level_cell_anchor), "`level_cell_anchor` should be your function.")
for level, y, x, k in [(0, 0, 0, 0), (0, 39, 39, 2), (1, 3, 5, 1), (2, 9, 0, 0)]:
    flat_index = priors.flat_prior_index(
        level, y, x, feature_sizes, anchor=k, anchors_per_location=3
    )
    check_equal(
        f"level_cell_anchor({flat_index}, feature_sizes, 3)",
        tuple(int(v) for v in level_cell_anchor(flat_index, feature_sizes, 3)), (level, y, x, k),
        hint="subtract whole levels (H W K priors each) first; then cell, k = divmod(rest, K) "
        "and y, x = divmod(cell, W).",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
for flat_index in [0, 17, 4799, 4800, 6299]:
    level, y, x, k = level_cell_anchor(flat_index, feature_sizes, 3)
    back = priors.flat_prior_index(level, y, x, feature_sizes, anchor=k, anchors_per_location=3)
    check_equal(f"the round trip of {flat_index}", back, flat_index, hint="inverse of the index")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** mmdet's `MaxIoUAssigner` returns `assigned_gt_inds` counted from 1:
# 0 for a negative prior, -1 for an ignored one, `i + 1` for a prior given box `i`.
# Write `course_gt_index(assigned_gt_inds)` that returns the course's gt index, with
# `BACKGROUND` and `IGNORE`.

# %% tags=["solution"]
course_gt_index = None  # your function (A,) long -> (A,) long
### BEGIN SOLUTION


def course_gt_index(assigned_gt_inds):
    gt_index = assigned_gt_inds - 1  # boxes from 0; negatives now -1 = BACKGROUND
    gt_index[assigned_gt_inds == -1] = IGNORE
    return gt_index


### END SOLUTION

# %% tags=["check"]
mmdet_codes = torch.tensor([0, 1, -1, 3, 0, 2])
check_true(callable(course_gt_index), "`course_gt_index` should be your function.")
check_equal(
    "course_gt_index([0, 1, -1, 3, 0, 2])", course_gt_index(mmdet_codes.clone()),
    torch.tensor([BACKGROUND, 0, IGNORE, 2, BACKGROUND, 1]),
    hint="a box i is i + 1 in mmdet: subtract 1; mmdet's 0 (negative) is BACKGROUND = -1, "
    "its -1 (ignored) is IGNORE = -2.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "course_gt_index", course_gt_index, [(torch.tensor([-1, -1, 5]),)],
    lambda codes: torch.tensor([IGNORE, IGNORE, 4]), hint="all ignored but the last",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - mmdet's `AssignResult` (`gt_inds` from 1, 0 negative, -1 ignored):
#   <https://github.com/open-mmlab/mmdetection/blob/main/mmdet/models/task_modules/assigners/assign_result.py>
# - ultralytics' `make_anchors` and `TaskAlignedAssigner` (`reg_max`, `fg_mask`):
#   <https://github.com/ultralytics/ultralytics/blob/main/ultralytics/utils/tal.py>
# - mmdet's `GFLHead` (`reg_max` as the last bin) and NanoDet's `GFLHead`:
#   <https://github.com/open-mmlab/mmdetection/blob/main/mmdet/models/dense_heads/gfl_head.py>,
#   <https://github.com/RangiLyu/nanodet/blob/main/nanodet/model/head/gfl_head.py>
# - torchvision's `box_convert` (the box formats):
#   <https://github.com/pytorch/vision/blob/main/torchvision/ops/boxes.py>
