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
# # 70 · Co-DETR: hybrid assignment
#
# A DETR matches each ground-truth box to exactly one query (notebook 61): one positive
# per box and per decoder layer, every other query "no object". That is what lets it
# predict without NMS, and it is also, Zong, Song and Liu argue (ICCV 2023), why it
# learns slowly: the encoder's features, on which everything rests, receive very few
# positive signals, where a dense detector such as ATSS (notebook 41) or Faster R-CNN
# (notebooks 50 and 51) hands every box a whole set of priors.
#
# **Co-DETR** (*DETRs with Collaborative Hybrid Assignments Training*) keeps the
# one-to-one decoder for inference and adds, for training only, the heads of those
# dense detectors on the encoder's output, each with its own **one-to-many**
# assignment: an ATSS head, and Faster R-CNN's RPN and RoI head. Their positives
# then come back to the decoder as extra groups of queries, which learn their boxes
# without any matching. At test time the auxiliary heads are dropped: the detector is
# a plain Deformable DETR.
#
# This notebook puts one image through the course's CPU preset of Co-DETR and looks at
# its five sets of positives side by side: the one-to-one matches of the decoder and
# of the encoder's proposals, the ATSS head's anchors, the RPN's anchors, the RoI
# head's sampled proposals. It draws them per box, counts them, for the image and over
# a batch of eight, follows the positives into the query groups, and reads the weight
# each branch gets in the loss.
#
# **Learning goals**
#
# 1. Name Co-DETR's branches and read their outputs: the one-to-one decoder's
#    `(L, B, Q, C)` logits, the encoder's five-level pyramid (strides 8 to 128), the
#    ATSS head's and the RPN's maps per level, the RPN's proposals.
# 2. Find, for one image, the positives of every branch in `model.assign`'s result
#    (`one_to_one.layers`, `one_to_one.encoder`, `atss`, `rcnn.rpn` with
#    `rcnn.rpn_sampled`, `rcnn.roi_labels`), and draw them per box.
# 3. Count positives per box and per image, for one image and a batch of eight, and
#    explain why one-to-one matching gives the encoder few positives: min(Q, M) per
#    decoder layer, against ATSS's and the two-stage heads' many.
# 4. Read the positive query groups built from the RoI head's and the ATSS head's
#    positives: n queries per image, positives first, negatives as padding.
# 5. Read every term of the loss by branch and the auxiliary weight λ₂ × decoder layers.
#
# **Prerequisites**: notebook 41 (ATSS on anchors), notebooks 50 and 51 (the RPN, the
# RoI head, max-IoU assignment and sampling), notebook 61 (queries and Hungarian
# matching, the encoder's proposals), notebook 62 (the set loss).
#
# **Notation**: the letters of the shapes (B, A, Q, M, C, K, ...) and the box formats
# are those of [notebook 09](09_notation.ipynb); S counts the encoder's tokens of all
# levels, D their width, P positives and n the queries of one positive query group. In
# the decoder's shapes L counts decoder layers, as in `DeformableDETROutputs`; the
# pyramid's levels are called levels.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd
import torch

from detutils.assigners import BACKGROUND
from detutils.boxes import cxcywh_norm_to_xyxy
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.data.shapes import CLASS_NAMES
from detutils.models import build_detector
from detutils.models.co_detr import CoDETRConfig
from detutils.viz import class_color, draw_assignment, draw_boxes


def shape_of(value):
    """A tensor's shape, or for a list of tensors its length and its first item's shape."""
    if torch.is_tensor(value):
        return str(tuple(value.shape))
    return f"{len(value)} x {tuple(value[0].shape)}"


def roi_assignment(rcnn, image, gt_boxes):
    """The RoIs the RoI head sampled in one image: boxes (N, 4) xyxy px, the box each
    learns (N,) (``BACKGROUND`` for a negative) and whether it is a ground-truth box (N,)."""
    rows = rcnn.rois[:, 0] == image
    rois, labels, learnt = rcnn.rois[rows, 1:], rcnn.roi_labels[rows], rcnn.roi_targets[rows]
    same = (learnt[:, None] == gt_boxes[None]).all(-1)  # (N, M): RoI i learns box m
    gt_index = torch.where(labels >= 0, same.float().argmax(1), BACKGROUND)
    return rois, gt_index, rcnn.roi_is_gt[rows]


def per_box(gt_index, num_boxes):
    """(N,) the box each prior learns, negatives below 0 -> (M,) positives of each box."""
    return torch.bincount(gt_index[gt_index >= 0], minlength=num_boxes)


# %% [markdown]
# ## 1. Co-DETR in one picture
#
# ```
# image -> backbone -> encoder -> memory (B, S, D) -> proposals -> Q queries -> decoder
#                                   |                one-to-one: Hungarian, every layer
#                                   |                (the only branch kept at test time)
#                                   v
#              split into its 4 levels + a stride-2 conv: the pyramid, 5 levels
#                 |-> ATSS head ............. ATSS: a few anchors per box
#                 |-> RPN -> proposals ...... max IoU 0.7 / 0.3, sampled
#                        -> RoI head ........ max IoU 0.5, sampled, ground truth added
#              positives of the RoI head and of the ATSS head -> two query groups
#                 -> the same decoder, each group alone -> the boxes they were assigned
# ```
#
# The DETR is the Deformable DETR of notebooks 61 to 63 with box refinement and two
# stages, plus two changes Co-DETR's reference takes from DINO: *mixed query
# selection* (the Q best proposals give the queries' reference boxes and positions,
# their content is learned) and *look forward twice* (a layer's box loss also reaches
# the previous layer's box). The auxiliary heads read the encoder's output memory
# (B, S, D), split back into its four maps of strides 8 to 64, plus a fifth map of
# stride 128 made by a stride-2 3 × 3 conv and GroupNorm of the last: the **pyramid**.
#
# The CPU preset `co-deformable-detr-r18half-d128`: the course's Deformable DETR
# preset (half-width ResNet-18, D = 128, three encoder and three decoder layers,
# Q = 100) with the three heads at 128 channels. Building it loads no weights: the
# network is untrained, which is enough here. ATSS and the RPN assign from the anchors
# and the boxes alone; the RoI head from the RPN's proposals, here those of an
# untrained RPN; only the Hungarian matching reads the predictions, and the *number*
# of its matches does not depend on them.
#
# A batch of eight validation images of the shapes set, letterboxed to 320 px. In
# training mode (the default) the forward pass runs the auxiliary heads too.

# %%
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
images, batch_targets = collate([val_set[index] for index in range(8)])  # (B, 3, 320, 320)
images = images.to(device)
targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
           for t in batch_targets]  # fmt: skip
torch.manual_seed(0)
model = build_detector("co-deformable-detr-r18half-d128", num_classes=len(CLASS_NAMES)).to(device)
config = model.config
with torch.no_grad():
    outputs = model(images)
batch_size, image_size = len(images), tuple(images.shape[-2:])
print(f"training mode: {model.training}; B = {batch_size}, image size {image_size}")
print("boxes per image M:", [len(t["boxes"]) for t in targets])

# %% [markdown]
# The pyramid, `outputs.pyramid`: five maps (B, D, H, W). The first four are the
# encoder's tokens, nothing new computed; the fifth halves the last (5 → 3, rounded
# up).

# %%
strides = config.atss.strides  # the pyramid's, for every auxiliary head
pd.DataFrame(
    {
        "stride s": strides,
        "shape (B, D, H, W)": [tuple(level.shape) for level in outputs.pyramid],
        "locations H W": [level.shape[-2] * level.shape[-1] for level in outputs.pyramid],
        "from": [
            "encoder level 0",
            "encoder level 1",
            "encoder level 2",
            "encoder level 3",
            "stride-2 conv + GroupNorm of level 3",
        ],  # fmt: skip
    }
).rename_axis("level")

# %%
counts = outputs.one_to_one.spatial_shapes.prod(dim=1).tolist()  # tokens per encoder level
for level, tokens in enumerate(outputs.one_to_one.memory.split(counts, dim=1)):
    flat = outputs.pyramid[level].flatten(2).transpose(1, 2)  # (B, H W, D)
    assert torch.equal(flat, tokens)
print(f"S = {sum(counts)} tokens = the first four levels' {counts} locations")

# %% [markdown]
# `CoDETROutputs` holds one record per branch. The per-level maps are lists of five
# (shown: their length and the first level's shape); K counts anchors per location:
# one for ATSS, nine for the RPN (three sizes, 4, 5.04 and 6.35 strides, times three
# ratios). The RPN's proposals are B tensors of boxes.

# %%
atss_classes, atss_deltas, atss_centerness = outputs.atss
detr, rpn = outputs.one_to_one, outputs.rpn
pd.DataFrame(
    [
        ("one_to_one", "cls_logits", "(L, B, Q, C)", shape_of(detr.cls_logits)),
        ("one_to_one", "boxes", "(L, B, Q, 4) cxcywh norm", shape_of(detr.boxes)),
        ("one_to_one", "enc_cls_logits", "(B, S, C)", shape_of(detr.enc_cls_logits)),
        ("one_to_one", "enc_boxes", "(B, S, 4) cxcywh norm", shape_of(detr.enc_boxes)),
        ("one_to_one", "memory", "(B, S, D)", shape_of(detr.memory)),
        ("pyramid", "", "5 x (B, D, H, W)", shape_of(outputs.pyramid)),
        ("atss", "[0] classes", "5 x (B, K C, H, W)", shape_of(atss_classes)),
        ("atss", "[1] deltas", "5 x (B, K 4, H, W)", shape_of(atss_deltas)),
        ("atss", "[2] centerness", "5 x (B, K, H, W)", shape_of(atss_centerness)),
        ("rpn", "objectness", "5 x (B, K, H, W)", shape_of(rpn.objectness)),
        ("rpn", "deltas", "5 x (B, K 4, H, W)", shape_of(rpn.deltas)),
        ("rpn", "proposals", "B x (N, 4) xyxy px", shape_of(rpn.proposals)),
    ],
    columns=["branch", "field", "shape", "here"],
)  # fmt: skip

# %% [markdown]
# ## 2. One image, five sets of positives
#
# Validation image 3 holds seven boxes, from a 202 × 81 px rectangle down to a
# 7 × 7 px shape. The boxes are numbered as in the image's annotations and keep their
# colour in every figure below.

# %%
image = 3  # the image of sections 2 to 4, in the batch
gt_boxes, gt_labels = targets[image]["boxes"], targets[image]["labels"]  # (M, 4), (M,)
num_boxes = len(gt_boxes)
sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).cpu()  # (M, 2) w, h px
box_names = [f"{m} {CLASS_NAMES[label]} {w:.0f} x {h:.0f}"
             for m, (label, (w, h)) in enumerate(zip(gt_labels.tolist(), sizes.tolist(),
                                                     strict=True))]  # fmt: skip
picture = images[image].cpu()  # (3, H, W) in [0, 1]
ax = draw_boxes(picture, gt_boxes.cpu(), torch.arange(num_boxes), class_names=box_names)
ax.set_title("val image 3: seven boxes (colour = box index)")
plt.show()

# %% [markdown]
# `model.assign(outputs, targets)` runs every branch's assignment and returns a
# `CoDETRAssignment`: `one_to_one` (the Hungarian matches of every decoder layer,
# fields (L, B, Q), and of the encoder's proposals, fields (B, S)), `atss` (ATSS on
# the pyramid's anchors, fields (B, A)), `rcnn` (the RPN's anchors and their sample,
# the RoI head's sampled proposals) and `queries` (section 4). The sampling draws from
# the global random stream, seeded here.
#
# The positives of one image, as a prior → box index (`BACKGROUND` = −1 where the
# prior learns no box), branch by branch:
#
# - **decoder**: the queries whose `gt_index >= 0` in the last layer (each layer has
#   its own matching; they all match M queries);
# - **encoder proposals**: the S tokens matched class-agnostically to the boxes;
# - **ATSS**: the anchors (one per location, the pyramid's 2134) with `gt_index >= 0`;
# - **RPN**: the anchors (nine per location) that are positive *and* sampled: only
#   the sampled ones enter the loss;
# - **RoI head**: the sampled RoIs with a label; the RoI head also adds each ground
#   truth box to the proposals (`roi_is_gt`). Its record keeps the target box of
#   each RoI, not its index, so the helper `roi_assignment` finds the box by equality.

# %%
torch.manual_seed(0)
assignment = model.assign(outputs, targets)
print({name: type(value).__name__ for name, value in assignment._asdict().items()})
feature_sizes = [tuple(level.shape[-2:]) for level in outputs.pyramid]
atss_anchors, _ = model.aux["atss"].anchors(feature_sizes, device)  # (A, 4) xyxy px
rpn_anchors, _ = model.aux["rcnn"].anchors(feature_sizes, device)  # (K A, 4) xyxy px
print(f"ATSS anchors {tuple(atss_anchors.shape)}, RPN anchors {tuple(rpn_anchors.shape)}")


def branch_positives(image):
    """Per branch: the priors of one image ((N, 4) xyxy px boxes or (N, 2) points) and
    the box each learns (N,), ``BACKGROUND`` where it learns none or is not sampled."""
    detr, matches, rcnn = outputs.one_to_one, assignment.one_to_one, assignment.rcnn
    rpn_index = rcnn.rpn.gt_index[image]
    rpn_positive = (rpn_index >= 0) & rcnn.rpn_sampled[image]
    rois, roi_index, _ = roi_assignment(rcnn, image, targets[image]["boxes"])
    return {
        "decoder (last layer)": (cxcywh_norm_to_xyxy(detr.boxes[-1, image], image_size),
                                 matches.layers.gt_index[-1, image]),
        "encoder proposals": (cxcywh_norm_to_xyxy(detr.enc_boxes[image], image_size),
                              matches.encoder.gt_index[image]),
        "ATSS": ((atss_anchors[:, :2] + atss_anchors[:, 2:]) / 2,  # centres (A, 2)
                 assignment.atss.assignment.gt_index[image]),
        "RPN": (rpn_anchors, torch.where(rpn_positive, rpn_index, BACKGROUND)),
        "RoI head": (rois, roi_index),
    }  # fmt: skip


positives = branch_positives(image)
for name, (priors, gt_index) in positives.items():
    print(f"{name:>20}: priors {tuple(priors.shape)}, positives {int((gt_index >= 0).sum())}")

# %% [markdown]
# Each panel draws one branch's positives in the colour of the box they learn (a
# thin box per positive, a dot at its centre; ATSS: the anchors' centres only, their
# 8 s squares would cover the image), and tags each box with its count. The decoder's
# and the encoder's positives are the untrained network's boxes: wherever they are,
# the matching gives each box one of them.

# %%
fig, axes = plt.subplots(2, 3, figsize=(14, 9.5))
draw_boxes(picture, gt_boxes.cpu(), torch.arange(num_boxes), class_names=box_names,
           ax=axes[0, 0], title="the seven boxes")  # fmt: skip
for ax, (name, (priors, gt_index)) in zip(axes.flat[1:], positives.items(), strict=True):
    draw_assignment(picture, priors.cpu(), gt_boxes.cpu(), gt_index.cpu(), ax=ax,
                    show_background=False,
                    title=f"{name}: {int((gt_index >= 0).sum())} positives")  # fmt: skip
for ax in axes.flat:
    ax.set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# One query per box in the decoder, one proposal per box in the encoder: whatever
# the box's size. The one-to-many branches give more, but not evenly. ATSS gives a box
# about nine anchors (those of its 45 candidates above the mean + std of their IoUs,
# notebook 41), and the 7 × 7 box one. The RPN's rule (IoU ≥ 0.7, or the box's best
# anchors if their IoU reaches 0.3) gives one to four anchors to a large box and
# nothing to the 7 × 7 box: the smallest anchors, of area 32² px at stride 8, overlap
# it by an IoU of at most 49 / 1024. The RoI head's positives are the proposals of IoU
# ≥ 0.5 and the box itself, added as a proposal: every box gets at least that one,
# unless the sampler's cap (section 3) leaves it out.

# %% [markdown]
# ## 3. The counts
#
# Per box of image 3, the positives of each branch (`per_box`: a `torch.bincount` of
# the positives' box indices):

# %%
branches = list(positives)
box_table = pd.DataFrame(
    {name: per_box(gt_index, num_boxes).tolist() for name, (_, gt_index) in positives.items()},
    index=pd.Index(box_names, name="box"),
)
_, _, roi_is_gt = roi_assignment(assignment.rcnn, image, gt_boxes)
box_table["RoI head: of them ground truth"] = per_box(
    positives["RoI head"][1][roi_is_gt], num_boxes
).tolist()
box_table.loc["image 3, total"] = box_table.sum()
box_table

# %% [markdown]
# Every decoder layer matches on its own (notebook 61), and each matches the seven
# boxes once: over the L = 3 layers a box is learnt three times, by one query or by
# up to three different ones. The query each box gets in each layer:

# %%
layer_index = assignment.one_to_one.layers.gt_index[:, image]  # (L, Q)
pd.DataFrame(
    {f"layer {layer}": [int((layer_index[layer] == m).nonzero()) for m in range(num_boxes)]
     for layer in range(len(layer_index))},
    index=pd.Index(box_names, name="box"),
)  # fmt: skip

# %% [markdown]
# Untrained, every layer returns the same boxes (section 5), only the class scores
# differ, and here the matches do not move; in training the layers' boxes part, and a
# box may change query from layer to layer. Either way: M positive queries per layer,
# M proposals for the encoder.

# %% [markdown]
# The sampling rules of the two-stage heads cap their positives per image. The
# numbers, read from the preset's configuration (the reference samples 512 RoIs,
# hence at most 128 positive):

# %%
rcnn_config = config.rcnn
rpn_most = int(rcnn_config.rpn_num * rcnn_config.rpn_pos_fraction)
roi_most = int(rcnn_config.roi_num * rcnn_config.roi_pos_fraction)
print(
    f"RPN: IoU >= {rcnn_config.rpn_pos_iou} positive, < {rcnn_config.rpn_neg_iou} negative; "
    f"{rcnn_config.rpn_num} anchors sampled per image, at most {rpn_most} positive"
)
print(
    f"RoI head: {rcnn_config.train_proposals} proposals kept per image, IoU >= "
    f"{rcnn_config.roi_pos_iou} positive; {rcnn_config.roi_num} RoIs sampled, at most "
    f"{roi_most} positive"
)
print(
    f"ATSS: top {config.atss.topk} anchors per level over {len(strides)} levels = "
    f"{config.atss.topk * len(strides)} candidates per box, kept above mean + std of their IoU"
)
print(
    f"one-to-one: Q = {config.detr.num_queries} queries, L = "
    f"{config.detr.num_decoder_layers} decoder layers, each matches min(Q, M) of them"
)

# %% [markdown]
# The same counts over the batch of eight, per image: "decoder" counts one layer
# (every layer matches as many), "RPN sampled" and "RoIs sampled" the priors that
# enter each loss, positive or negative.

# %%
rows = []
for index in range(batch_size):
    image_positives = branch_positives(index)
    row = {"M": len(targets[index]["boxes"])}
    row.update({name: int((gt_index >= 0).sum())
                for name, (_, gt_index) in image_positives.items()})  # fmt: skip
    row["RPN sampled"] = int(assignment.rcnn.rpn_sampled[index].sum())
    row["RoIs sampled"] = int((assignment.rcnn.rois[:, 0] == index).sum())
    rows.append(row)
batch_table = pd.DataFrame(rows).rename_axis("image")
batch_table.loc["batch"] = batch_table.sum()
batch_table

# %% [markdown]
# Divided by the batch's boxes, the positives a box receives on average:

# %%
batch_total = batch_table.loc["batch"]
per_box_mean = (batch_total[branches] / batch_total["M"]).rename("positives per box")
significant(per_box_mean.to_frame().T, 3)

# %% [markdown]
# Per box, over the batch: the one-to-one decoder gives exactly one query per layer,
# and the encoder's proposals one more; ATSS gives eight or nine anchors, the RoI
# head about three RoIs (its cap of 32 is reached in image 2), the RPN fewer than two
# anchors (its 256 samples per image are mostly negatives: the positives stay far
# below the cap of 128). Together the one-to-many heads give a box more than ten
# positives where one-to-one matching gives one per layer. And their positives sit on
# the encoder's own features: the heads read the pyramid through a conv or two (ATSS,
# RPN) or RoIAlign (RoI head), where a positive query reaches the encoder only
# through the decoder's attention. This is Co-DETR's argument: with one-to-one
# matching alone the encoder is supervised sparsely; the auxiliary heads supervise it
# densely, and their positives, turned into queries, give the decoder more positive
# queries as well.

# %% [markdown]
# ## 4. The positive query groups
#
# The RoI head's and the ATSS head's positives become two extra groups of decoder
# queries, `assignment.queries["roi"]` and `["atss"]`, each a `PositiveQueries` of
# fields (B, n). Per image the rows are the positives (in the head's order, at most
# `max_positive_queries` drawn at random), then padding up to n, the batch's largest
# count of positives (at least `min_positive_queries`). The padding is the head's own
# negatives drawn at random, which learn "no object"; with `zero_padding=True` they
# would be masked out instead (`valid` False).

# %%
print(
    f"max_positive_queries {config.max_positive_queries}, min_positive_queries "
    f"{config.min_positive_queries}, zero_padding {config.zero_padding}"
)
group_rows = []
for name, group in assignment.queries.items():
    print(
        f"{name}: index {tuple(group.index.shape)}, boxes {tuple(group.boxes.shape)}, "
        f"labels {tuple(group.labels.shape)}, targets {tuple(group.targets.shape)}"
    )
    for index in range(batch_size):
        group_rows.append({"group": name, "image": index, "n": group.index.shape[1],
                           "positives": int(group.positive[index].sum()),
                           "padding (negatives)": int((group.valid & ~group.positive)[index].sum()),
                           "masked": int((~group.valid[index]).sum())})  # fmt: skip
pd.DataFrame(group_rows).set_index(["group", "image"]).unstack("group")

# %% [markdown]
# The RoI group's n is 32 because image 2 reaches the sampler's cap of 32 positives;
# the ATSS group's n is image 5's 95 positives (twelve boxes). An image with few boxes
# is mostly padding. The first four rows and the first two padding rows of
# each group for image 3: `index` points into the head's priors (the sampled RoIs of
# the image, or the 2134 anchors), `boxes` is the prior's box, the query's reference,
# and `targets` the box it learns. The RoI group starts with the ground-truth boxes
# added as proposals: their reference is already their target.

# %%
query_rows = []
for name, group in assignment.queries.items():
    positive = group.positive[image].nonzero().squeeze(1)
    padding = (~group.positive[image]).nonzero().squeeze(1)
    for row in torch.cat([positive[:4], padding[:2]]).tolist():
        label = group.labels[image, row].item()
        query_rows.append({
            "group": name, "row": row, "index": group.index[image, row].item(),
            "reference xyxy": tuple(round(v) for v in group.boxes[image, row].tolist()),
            "label": CLASS_NAMES[label] if label >= 0 else "no object",
            "target xyxy": tuple(round(v) for v in group.targets[image, row].tolist()),
            "positive": group.positive[image, row].item(), "valid": group.valid[image, row].item(),
        })  # fmt: skip
pd.DataFrame(query_rows).set_index(["group", "row"])

# %% [markdown]
# For each box, the reference (dashed) of its first positive query in each group whose
# reference is not the box itself, and the box it learns (solid), in the box's
# colour. An ATSS query starts from an anchor, a square of 8 strides centred on a
# grid point inside its box (64 px at stride 8); a RoI query from a proposal that
# overlaps its box by IoU ≥ 0.5 (the two small boxes have only themselves). The
# decoder then moves the reference onto the target, layer by layer, as it does for the
# one-to-one queries.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
for ax, (name, group) in zip(axes, assignment.queries.items(), strict=True):
    ax.imshow(picture.permute(1, 2, 0).numpy())
    learns = (group.targets[image][:, None] == gt_boxes[None]).all(-1)  # (n, M)
    moved = group.positive[image] & (group.boxes[image] != group.targets[image]).any(-1)
    for box in range(num_boxes):
        rows = (learns[:, box] & moved).nonzero().squeeze(1)
        if not len(rows):
            continue  # only the ground truth itself (RoI head)
        for xyxy, style in ((group.boxes[image, rows[0]], "--"), (gt_boxes[box], "-")):
            x1, y1, x2, y2 = xyxy.tolist()
            outline = plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.8,
                                    color=class_color(box), linestyle=style)  # fmt: skip
            ax.add_patch(outline)
    ax.set_title(f'queries["{name}"]: reference (dashed), target (solid)')
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## 5. The weights
#
# Every auxiliary head's loss is multiplied by λ₂ times the number of decoder layers,
# `config.aux_weight`: the reference has λ₂ = 2 and six layers, 12; the preset three
# layers, 6. The positive query groups learn with the DETR's own terms (focal 2, L1 5,
# GIoU 2, notebook 62) on every decoder layer, times λ₁ = 1, and without matching:
# each query learns the box its head assigned.

# %%
print(
    f"lambda_1 = {config.lambda_1}, lambda_2 = {config.lambda_2}, decoder layers "
    f"{config.detr.num_decoder_layers}: aux_weight = {config.aux_weight}"
)
print(f"the reference: {CoDETRConfig().aux_weight}")

# %% [markdown]
# `model.loss_terms(outputs, targets, assignment)` returns every term, weights
# applied, for the untrained network on the batch. Grouped by branch:

# %%


def branch_of(term):
    """The branch a loss term belongs to, from its name."""
    head = term.split(".")[0]
    if head in ("cls", "l1", "giou") or head.startswith("d"):
        return "one-to-one: decoder layers"
    return {"enc": "one-to-one: encoder proposals", "atss": "ATSS head (x aux_weight)",
            "rpn": "RPN (x aux_weight)", "roi": "RoI head (x aux_weight)",
            "roi_queries": "RoI queries", "atss_queries": "ATSS queries"}[head]  # fmt: skip


with torch.no_grad():
    terms = model.loss_terms(outputs, targets, assignment)
    losses = model.loss(outputs, targets, assignment)
term_table = pd.DataFrame(
    {"branch": [branch_of(name) for name in terms], "value": [v.item() for v in terms.values()]},
    index=pd.Index(list(terms), name="term"),
)
by_branch = term_table.groupby("branch", sort=False)["value"].agg(["count", "sum"])
by_branch.loc["total"] = [len(terms), by_branch["sum"].sum()]
total = by_branch.loc["total", "sum"]
torch.testing.assert_close(total, losses["loss"].item(), rtol=1e-5, atol=1e-5)
significant(by_branch.rename(columns={"count": "terms"}), 4)

# %% [markdown]
# The terms themselves (`dN.` the earlier decoder layers, `enc.` the encoder's
# proposals):

# %%
significant(term_table, 4)

# %% [markdown]
# The auxiliary heads' terms are their own losses, those of notebooks 42 and 51,
# times `aux_weight`: the ATSS head's loss alone, divided back,

# %%
with torch.no_grad():
    atss_alone = model.aux["atss"].loss(outputs.atss, targets, assignment.atss)
for name in ("cls", "bbox", "centerness"):
    torch.testing.assert_close(terms[f"atss.{name}"], atss_alone[name] * config.aux_weight)
print({name: f"{atss_alone[name].item():.4g}" for name in ("cls", "bbox", "centerness")})

# %% [markdown]
# Before training, the auxiliary branches weigh more than the DETR's own terms: each
# head's loss is multiplied by 6 (12 in the reference), and there are two query groups
# with three layers of terms each. The query groups' L1 and GIoU are the same on every
# layer: the box heads' last layers start at zero, so an untrained decoder returns, at
# every layer, the box it started from, and each layer measures how far the priors are
# from their targets.

# %%
last_layers = [branch[-1] for branch in model.detr.reg_branches]  # one box head per layer
print("box heads' last layers all zero:",
      all(not layer.weight.any() and not layer.bias.any() for layer in last_layers))  # fmt: skip

# %% [markdown]
# ## Recap
#
# - Co-DETR = a Deformable DETR (one-to-one, Hungarian, kept at test time) + auxiliary
#   heads for training only, on the encoder's memory split back into its four levels
#   plus a stride-2 conv: five levels, strides 8 to 128.
# - `model.assign` gives every branch its own assignment: `one_to_one.layers` (L, B, Q)
#   and `one_to_one.encoder` (B, S), `atss` (B, A), `rcnn.rpn` with `rcnn.rpn_sampled`
#   (B, K A), `rcnn.rois` / `roi_labels` / `roi_is_gt` (N sampled RoIs).
# - One-to-one: min(Q, M) positives per decoder layer and M encoder proposals, one per
#   box whatever its size. One-to-many: ATSS about nine anchors per box, the RPN a few
#   anchors above IoU 0.7 (none for a box much smaller than its anchors), the RoI head
#   its proposals above IoU 0.5 plus the box itself; the samplers cap the last two
#   (RPN 256 per image, half positive at most; RoI head 128 in the preset, 512 in the
#   reference, a quarter positive at most).
# - The RoI head's and the ATSS head's positives become query groups (B, n), padded
#   with negatives that learn "no object"; they go through the same decoder alone and
#   learn their assigned boxes with the DETR's terms on every layer.
# - Loss: the DETR's terms, the heads' own losses × λ₂ × decoder layers
#   (`aux_weight`: 12 in the reference, 6 in the preset), the query groups' × λ₁ = 1.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** One-to-one positives. From `assignment.one_to_one.layers.gt_index`
# (fields (L, B, Q)), count the matched queries of the *last* decoder layer in each
# image of the batch: `one_to_one_per_image`, a list of B ints.

# %% tags=["solution"]
one_to_one_per_image = None  # list of B ints: matched queries of the last layer per image
### BEGIN SOLUTION
last_layer = assignment.one_to_one.layers.gt_index[-1]  # (B, Q)
one_to_one_per_image = (last_layer >= 0).sum(dim=1).tolist()
print(one_to_one_per_image)
### END SOLUTION

# %% tags=["check"]
check_true(
    isinstance(one_to_one_per_image, list) and len(one_to_one_per_image) == batch_size,
    f"`one_to_one_per_image` should be a list of {batch_size} ints (one per image), got "
    f"{type(one_to_one_per_image).__name__}.",
    hint="(gt_index[-1] >= 0).sum(dim=1).tolist(): the last layer, then count per image.",
)  # fmt: skip
num_queries = config.detr.num_queries
check_equal(
    "one_to_one_per_image", one_to_one_per_image,
    [min(num_queries, len(target["boxes"])) for target in targets],
    hint="each box gets exactly one query and each query at most one box: min(Q, M_i) per "
    "image; count gt_index >= 0 in the last layer, not over all layers.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "one_to_one_per_image", one_to_one_per_image,
    [int(count) for count in (assignment.one_to_one.encoder.gt_index >= 0).sum(dim=1)],
    hint="the encoder's proposals match as many as the decoder's last layer",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** ATSS positives per box with `torch.bincount`. For image 2 of the
# batch (nine boxes), count the ATSS positives of each box from
# `assignment.atss.assignment.gt_index` (fields (B, A), indices into the image's
# boxes, negative for background): `atss_per_box`, a tensor of shape (M,) = (9,).
# Mind two traps: `bincount` refuses negative values, and it returns only as many
# bins as the largest value + 1.

# %% tags=["solution"]
atss_per_box = None  # (9,) long: ATSS positives of each box of image 2
### BEGIN SOLUTION
image_2 = assignment.atss.assignment.gt_index[2]  # (A,)
atss_per_box = torch.bincount(image_2[image_2 >= 0], minlength=len(targets[2]["boxes"]))
print(atss_per_box.tolist())
### END SOLUTION

# %% tags=["check"]
check_true(
    torch.is_tensor(atss_per_box),
    f"`atss_per_box` should be a tensor, got {type(atss_per_box).__name__}.",
    hint="torch.bincount(gt_index[gt_index >= 0], minlength=M) for image 2.",
)  # fmt: skip
loop_counts = [0] * len(targets[2]["boxes"])
for box in assignment.atss.assignment.gt_index[2].tolist():
    if box >= 0:
        loop_counts[box] += 1
check_equal(
    "atss_per_box", atss_per_box.cpu().long(), torch.tensor(loop_counts),
    hint="keep gt_index >= 0 first, then bincount with minlength=9: the last box, 6 x 9 px, "
    "gets no anchor, so without minlength the result has only 8 bins.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** How many more? Over the whole batch, count `one_to_many_total`, the
# positives of the three one-to-many branches together (ATSS anchors with
# `labels >= 0`, RPN anchors positive and sampled, sampled RoIs with
# `roi_labels >= 0`), `one_to_one_total`, the matched queries of the last decoder
# layer, both ints, and `ratio`, the first over the second.

# %% tags=["solution"]
one_to_many_total = None  # int: ATSS + RPN + RoI head positives of the batch
one_to_one_total = None  # int: matched queries of the last decoder layer in the batch
ratio = None  # float
### BEGIN SOLUTION
rcnn = assignment.rcnn
atss_total = int((assignment.atss.assignment.labels >= 0).sum())
rpn_total = int(((rcnn.rpn.gt_index >= 0) & rcnn.rpn_sampled).sum())
roi_total = int((rcnn.roi_labels >= 0).sum())
one_to_many_total = atss_total + rpn_total + roi_total
one_to_one_total = int((assignment.one_to_one.layers.gt_index[-1] >= 0).sum())
ratio = one_to_many_total / one_to_one_total
print(atss_total, rpn_total, roi_total, one_to_one_total, f"{ratio:.3g}")
### END SOLUTION

# %% tags=["check"]
total_boxes = sum(len(target["boxes"]) for target in targets)
check_equal(
    "one_to_one_total", one_to_one_total, total_boxes,
    hint="every box of the batch gets one query of the last layer: the batch's boxes.",
)  # fmt: skip
expected_many = (
    int((assignment.atss.assignment.gt_index >= 0).sum())
    + int(((assignment.rcnn.rpn.labels >= 0) & assignment.rcnn.rpn_sampled).sum())
    + int((assignment.rcnn.roi_labels >= 0).sum())
)  # fmt: skip
check_equal(
    "one_to_many_total", one_to_many_total, expected_many,
    hint="three sums: (atss.assignment.labels >= 0), ((rpn.gt_index >= 0) & rpn_sampled), "
    "(roi_labels >= 0); the RPN's unsampled positives enter no loss.",
)  # fmt: skip
check_close(
    "ratio", ratio, expected_many / total_boxes,
    hint="one_to_many_total / one_to_one_total.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The auxiliary weight. Write `aux_weight(lambda_2, num_layers)`: the
# factor of every auxiliary head's loss in a Co-DETR whose decoder has `num_layers`
# layers, as a float. Then assign `reference_weight`, its value for the reference's
# λ₂ = 2 and six decoder layers, and `preset_weight`, for this notebook's model
# (read its λ₂ and layers from `config`).

# %% tags=["solution"]
aux_weight = None  # your function (lambda_2: float, num_layers: int) -> float
reference_weight = None  # a number
preset_weight = None  # a number
### BEGIN SOLUTION


def aux_weight(lambda_2, num_layers):
    return float(lambda_2 * num_layers)


reference_weight = aux_weight(2.0, 6)
preset_weight = aux_weight(config.lambda_2, config.detr.num_decoder_layers)
print(reference_weight, preset_weight)
### END SOLUTION

# %% tags=["check"]


def config_aux_weight(lambda_2, num_layers):
    defaults = CoDETRConfig()
    detr = replace(defaults.detr, num_decoder_layers=num_layers)
    return replace(defaults, lambda_2=lambda_2, detr=detr).aux_weight


check_function(
    "aux_weight", aux_weight, [(2.0, 6), (1.0, 3), (0.5, 4)], config_aux_weight,
    hint="every auxiliary loss is multiplied by lambda_2 x the number of decoder layers.",
)  # fmt: skip
check_close(
    "reference_weight", reference_weight, 12.0,
    hint="lambda_2 = 2, six decoder layers: 2 x 6.",
)  # fmt: skip
check_close(
    "preset_weight", preset_weight, 2.0 * 3,
    hint="config.lambda_2 x config.detr.num_decoder_layers: 2 x 3.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "aux_weight", aux_weight, [(3.0, 1), (2.0, 0), (1.5, 8)], config_aux_weight,
    hint="the same product for other lambdas and depths",
)  # fmt: skip
check_close(
    "preset_weight", preset_weight, config.aux_weight,
    hint="the preset's config.aux_weight",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - Z. Zong, G. Song and Y. Liu, *DETRs with Collaborative Hybrid Assignments
#   Training*, ICCV 2023, <https://arxiv.org/abs/2211.12860> (the auxiliary heads, the
#   customised positive queries, the loss weights λ₁ and λ₂)
# - Sense-X/Co-DETR, the reference implementation,
#   <https://github.com/Sense-X/Co-DETR> (`projects/configs/co_deformable_detr/
#   co_deformable_detr_r50_1x_coco.py`, `projects/models/co_detr.py`,
#   `co_deformable_detr_head.py`)
# - N. Carion et al., *End-to-End Object Detection with Transformers*, ECCV 2020,
#   <https://arxiv.org/abs/2005.12872> (the one-to-one set loss)
# - X. Zhu et al., *Deformable DETR: Deformable Transformers for End-to-End Object
#   Detection*, ICLR 2021, <https://arxiv.org/abs/2010.04159> (two stages, box
#   refinement)
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020,
#   <https://arxiv.org/abs/1912.02424> (ATSS)
# - S. Ren et al., *Faster R-CNN: Towards Real-Time Object Detection with Region
#   Proposal Networks*, NeurIPS 2015, <https://arxiv.org/abs/1506.01497> (the RPN and
#   the RoI head)
# - The course: [notebook 41](41_atss_on_anchors.ipynb) (ATSS on anchors),
#   [notebook 51](51_roi_head.ipynb) (the RoI head's assignment and sampling),
#   [notebook 61](61_queries_and_hungarian_matching.ipynb) (queries and Hungarian
#   matching)
