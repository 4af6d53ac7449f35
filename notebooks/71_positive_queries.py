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
# # 71 · Co-DETR: customised positive queries
#
# A DETR gives each ground-truth box one query (notebook 61), so its decoder learns from
# a handful of positives per image. Co-DETR (Zong, Song and Liu, ICCV 2023) trains the
# same Deformable DETR with auxiliary heads on its encoder that assign one-to-many, as
# dense detectors do: an ATSS head (notebook 41) and Faster R-CNN's RPN and RoI head
# (notebooks 50 and 51). Their losses teach the encoder (notebook 70). This notebook is
# about the second half of the idea, the **customised positive queries**: the priors
# that an auxiliary head made positive (ATSS anchors, sampled RoIs) become one extra
# *group* of decoder queries each, with the prior's box as the query's reference and
# the box it was assigned as the query's target. Each group runs through the same
# decoder as the DETR's own queries, but alone, and learns its targets directly: no
# Hungarian matching, since the auxiliary head already chose who learns what. The
# decoder thus sees many positives per box in every step, at the places a dense
# detector would pick.
#
# We follow one batch of three images through the course's CPU preset: an assignment
# turned into a group (which rows, how many, how padded), the group turned into
# queries (every shape), the queries through the decoder (with and without a padding
# mask), and their loss on every decoder layer. At test time none of this runs: only
# the DETR's own 100 queries are decoded (`model.detr` is the inference network).
#
# **Learning goals**
#
# 1. Turn an auxiliary head's assignment into a query group with
#    `positive_query_group`: the positives of each image, padded to the batch's
#    largest count n = clamp(largest count, 9, max), with the head's negatives (they
#    learn "no object") or with masked queries (`zero_padding`).
# 2. Read the real groups of the ATSS head and of the RoI head, `(B, n, ...)` fields,
#    positives and padding per image.
# 3. Build a group's queries step by step: boxes to normalised cxcywh, inverse
#    sigmoid, sine embedding `(B, n, 2D)`, linear + LayerNorm split into position and
#    content, the prior's own feature added to the content, one learned number per
#    head added to the position; and match `PositiveQueryEmbedding`.
# 4. Decode a group (`decode_queries`: logits `(L, B, n, C)`, boxes `(L, B, n, 4)`),
#    show that groups and the one-to-one queries never see each other, and that with
#    `padding_attention_mask` the padding changes nothing for the real queries.
# 5. Compute a group's loss per decoder layer with `set_loss_on_targets` and match
#    `loss_terms` (`atss_queries.cls`, `atss_queries.d0.cls`, ...): its targets, its
#    divisor, its 2 × 3 × 3 = 18 terms, and which parts of the network it trains.
#
# **Prerequisites**: notebook 41 (ATSS on anchors) and notebook 51 (the RoI head's
# sampled RoIs and RoIAlign), for the two assignments the groups come from; notebook 61
# (queries, references, two stages, the decoder's outputs) and notebook 62 (the set
# loss: focal 2, L1 5, GIoU 2, divided by the positives); notebook 70 (the Co-DETR
# model, its encoder pyramid and auxiliary heads) helps but is not needed.
#
# **Notation**: the letters of the shapes (B, S, D, M, C, A, P, ...) and the box formats
# are those of [notebook 09](09_notation.ipynb); n counts the queries of one group per
# image, and in the outputs' shapes L counts decoder layers, as in
# `DeformableDETROutputs`. `BACKGROUND = -1`, `IGNORE = -2`.

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

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from detutils.assigners import BACKGROUND, IGNORE
from detutils.boxes import xyxy_to_cxcywh_norm
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.data.shapes import CLASS_NAMES
from detutils.losses.detr import set_loss_on_targets
from detutils.models import build_detector
from detutils.models.co_detr import (
    CoDETRConfig,
    padding_attention_mask,
    positive_query_group,
)
from detutils.models.deformable_detr import inverse_sigmoid, proposal_position_embedding
from detutils.viz import draw_boxes


def as_ints(boxes):
    """(N, 4) boxes -> a list of N tuples of rounded ints, for tables."""
    return [tuple(round(v) for v in box) for box in boxes.tolist()]


def group_table(group, image):
    """One image's rows of a PositiveQueries group as a table."""
    return pd.DataFrame(
        {
            "index": group.index[image].tolist(),
            "box (prior) xyxy": as_ints(group.boxes[image]),
            "label": group.labels[image].tolist(),
            "target xyxy": as_ints(group.targets[image]),
            "positive": group.positive[image].tolist(),
            "valid": group.valid[image].tolist(),
        }
    ).rename_axis("row")


def draw_rectangles(ax, boxes, color, **style):
    """Outline (N, 4) xyxy px boxes on ``ax``."""
    for x1, y1, x2, y2 in boxes.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, **style))


# %% [markdown]
# ## 1. From an assignment to a group
#
# Every assigner of the course returns, per image and prior, the class the prior
# learns, or `BACKGROUND` (−1: it learns "no object") or `IGNORE` (−2: no loss at all),
# and the box it learns. `positive_query_group(boxes, labels, targets)` takes that for a
# batch, fields `(B, A, ...)`, and returns one group of queries, fields `(B, n, ...)`:
#
# - the **size** n is the same for every image (the decoder runs on a tensor): the
#   batch's largest count of positives, at least `min_queries` (9) and at most
#   `max_queries` (300 in the reference, 100 in the CPU preset);
# - each image's rows are its positives, in the head's order (an image with more than
#   n keeps n of them, drawn at random), then the **padding** up to n: the reference
#   pads with the head's negatives drawn at random, which learn "no object"; with
#   `zero_padding=True` it pads with masked queries (`valid` False).
#
# A hand-made example: two images, the same twelve priors (40 px squares on a 4 × 3
# grid), a label per prior with `BACKGROUND` and `IGNORE`, and the box each positive
# learns. Image 0 has 3 positives, image 1 has 5; one prior of each is ignored.

# %%
cells = torch.arange(12)
toy_priors = torch.stack(
    [cells % 4 * 40, cells // 4 * 40, cells % 4 * 40 + 40, cells // 4 * 40 + 40], 1
).float()  # (A, 4) xyxy px
toy_boxes = toy_priors.expand(2, -1, -1)  # (B, A, 4) = (2, 12, 4)
BG, IG = BACKGROUND, IGNORE
toy_labels = torch.tensor([
    [BG, 2, BG, BG, 0, BG, IG, BG, 2, BG, BG, BG],  # image 0: priors 1, 4, 8 positive
    [1, 1, BG, 3, BG, IG, 3, BG, BG, 5, BG, BG],  # image 1: priors 0, 1, 3, 6, 9 positive
])  # fmt: skip
toy_targets = torch.zeros(2, 12, 4)  # (B, A, 4) xyxy px, read for the positives only
toy_targets[0, [1, 4, 8]] = torch.tensor([[42.0, 5, 78, 35], [3, 45, 37, 75], [5, 82, 35, 118]])
toy_targets[1, [0, 1]] = torch.tensor([10.0, 10, 70, 30])  # one box, two positives
toy_targets[1, [3, 6]] = torch.tensor([95.0, 25, 155, 85])
toy_targets[1, 9] = torch.tensor([45.0, 85, 75, 115])
print("positives per image:", (toy_labels >= 0).sum(1).tolist(),
      " negatives:", (toy_labels == BACKGROUND).sum(1).tolist(),
      " ignored:", (toy_labels == IGNORE).sum(1).tolist())  # fmt: skip

# %% [markdown]
# With the defaults, n = clamp(max(3, 5), 9, 300) = 9: image 0 gets its 3 positives and
# 6 of its 8 negatives, image 1 its 5 positives and 4 of its 6 negatives (a generator
# seeds the draws). The `IGNORE`d priors are neither positive nor padding.

# %%
toy_group = positive_query_group(
    toy_boxes, toy_labels, toy_targets, generator=torch.Generator().manual_seed(0)
)  # fmt: skip
print({name: tuple(value.shape) for name, value in toy_group._asdict().items()})
pd.concat({image: group_table(toy_group, image) for image in range(2)}, names=["image"])

# %% [markdown]
# A row's `index` is the prior it comes from; its `boxes` are that prior's box (the
# query's *reference*, where it starts); `labels` is the prior's class for a positive
# and `BACKGROUND` for padding; `targets` is the box to learn, zeros unless positive;
# `positive` says which rows learn a box, `valid` which rows take part at all.
#
# With `zero_padding=True` the padding is no longer made of negatives: its rows are
# masked (`valid` False), point at prior 0 (any prior would do: nothing reads them),
# and learn nothing.

# %%
zero_toy = positive_query_group(toy_boxes, toy_labels, toy_targets, zero_padding=True)
group_table(zero_toy, 0)

# %% [markdown]
# The clamps. With `min_queries=2` and `max_queries=4`, n = clamp(5, 2, 4) = 4: image 1
# keeps 4 of its 5 positives, drawn at random (so in random order), and image 0 pads
# its 3 with one negative.

# %%
small_group = positive_query_group(
    toy_boxes, toy_labels, toy_targets, max_queries=4, min_queries=2,
    generator=torch.Generator().manual_seed(0),
)  # fmt: skip
pd.concat({image: group_table(small_group, image) for image in range(2)}, names=["image"])

# %% [markdown]
# ## 2. The real groups of the CPU preset
#
# Three validation images of the shapes set at 320 px and the course's Co-DETR CPU
# preset, `co-deformable-detr-r18half-d128`: the Deformable DETR CPU preset (half-width
# ResNet-18, width D = 128, 3 + 3 layers, Q = 100 queries, two stages, mixed query
# selection, look forward twice) with the auxiliary heads on its encoder's five-level
# pyramid. It is freshly built, untrained: every assigner here except the DETR's own
# Hungarian matching ignores the predictions (ATSS looks at anchors and boxes, the
# RoI head's max-IoU at proposals and boxes), so the groups are those of a first
# training step. The model is in training mode, so `model(images)` also runs the
# auxiliary heads.

# %%
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
images, batch_targets = collate([val_set[index] for index in range(3)])  # (B, 3, 320, 320)
images = images.to(device)
targets = [
    {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch_targets
]
torch.manual_seed(0)
model = build_detector("co-deformable-detr-r18half-d128", num_classes=len(CLASS_NAMES))
model = model.to(device)
config = model.config
outputs = model(images)
image_size = model.detr.image_size(outputs.one_to_one)  # (H, W) px
batch, dims, num_classes = len(targets), config.detr.embed_dims, model.num_classes
num_layers, num_heads = config.detr.num_decoder_layers, config.detr.num_heads
print(f"training mode: {model.training}; B = {batch}, D = {dims}, C = {num_classes}, "
      f"decoder layers L = {num_layers}, attention heads {num_heads}")  # fmt: skip
print("pyramid (B, D, H_l, W_l):", [tuple(level.shape) for level in outputs.pyramid])
print("query groups:", config.query_groups, " min / max queries:",
      config.min_positive_queries, config.max_positive_queries)  # fmt: skip

# %% [markdown]
# `model.assign` runs every branch's assignment; `.queries` holds the two groups, one
# `PositiveQueries` each. The RoI group comes first (head index 0), then the ATSS group
# (index 1), the reference's order (`config.query_groups`).

# %%
assignment = model.assign(outputs, targets)
pd.DataFrame(
    {
        name: {field: tuple(value.shape) for field, value in group._asdict().items()}
        for name, group in assignment.queries.items()
    }
).rename_axis("field")

# %% [markdown]
# Where the positives come from. **ATSS**: each box's top 9 anchors per level by centre
# distance, kept when their IoU passes the mean + standard deviation of the
# candidates' IoUs and their centre lies inside the box (notebook 41); `index` counts
# the A = 40² + 20² + 10² + 5² + 3² = 2134 anchors (one per location), level by level.
# **RoI head**: the proposals it sampled, 128 per image, at most a quarter positive
# (max IoU ≥ 0.5), the ground-truth boxes themselves added as proposals (notebook 51);
# `index` counts that image's sampled RoIs, positives first.

# %%
atss_result, atss_gt = assignment.atss  # (B, A) AssignResult, (B, M, 4) padded boxes
rcnn = assignment.rcnn
roi_image = rcnn.rois[:, 0].long()  # (N,) the image of each sampled RoI
rows = []
for image in range(batch):
    row = {"image": image, "boxes M": len(targets[image]["boxes"])}
    row["ATSS positives"] = int((atss_result.labels[image] >= 0).sum())
    row["RoIs sampled"] = int((roi_image == image).sum())
    row["RoI positives"] = int((rcnn.roi_labels[roi_image == image] >= 0).sum())
    row["of them gt"] = int(rcnn.roi_is_gt[roi_image == image].sum())
    for name, group in assignment.queries.items():
        row[f"{name}: positive"] = int(group.positive[image].sum())
        row[f"{name}: padding"] = int((group.valid[image] & ~group.positive[image]).sum())
        row[f"{name}: masked"] = int((~group.valid[image]).sum())
    rows.append(row)
counts = pd.DataFrame(rows).set_index("image")
counts

# %% [markdown]
# Each group has n = clamp(largest count, 9, 100) rows per image: 29 for the RoI group
# (image 2's 29 positive RoIs) and 77 for the ATSS group (image 2's 77 positive
# anchors, about 8.6 per box). Every positive of the head is in the group (no image has
# more than 100), and the shorter images are padded with their negatives; nothing is
# masked, since the preset keeps the reference's padding. In all, the decoder sees
# 3 × 29 + 3 × 77 = 318 extra queries in this step, besides its own 3 × 100.

# %%
for name, group in assignment.queries.items():
    size = group.index.shape[1]
    largest = int(group.positive.sum(1).max())
    expected = max(config.min_positive_queries, min(config.max_positive_queries, largest))
    assert size == expected
    assert (group.labels[~group.positive] == BACKGROUND).all()
    assert (group.targets[~group.positive] == 0).all()
    print(f"{name}: n = clamp({largest}, {config.min_positive_queries}, "
          f"{config.max_positive_queries}) = {size}; positives {int(group.positive.sum())}, "
          f"padding {int((~group.positive).sum())}")  # fmt: skip
atss_positive_anchors = atss_result.labels[0].ge(0).nonzero().squeeze(1)  # image 0, head order
assert torch.equal(assignment.queries["atss"].index[0, : len(atss_positive_anchors)],
                   atss_positive_anchors)  # fmt: skip

# %% [markdown]
# The groups of image 0 (left) and image 1 (right), the ground truth in its class
# colours: the positives' reference boxes in yellow, the padding negatives' dashed in
# cyan. ATSS's anchors are 8-stride squares (64 px on the stride-8 level, 128 px on the
# stride-16 one) around each box's centre; the RoIs hug the boxes (IoU ≥ 0.5), the
# boxes themselves among them. The negatives lie anywhere else.

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 10))
for column, image in enumerate(range(2)):
    picture = images[image].permute(1, 2, 0).cpu().numpy()
    for row, name in enumerate(("atss", "roi")):
        ax = axes[row, column]
        group = assignment.queries[name]
        draw_boxes(picture, targets[image]["boxes"].cpu(), targets[image]["labels"].cpu(),
                   class_names=CLASS_NAMES, ax=ax, linewidth=2.5)  # fmt: skip
        padding = group.valid[image] & ~group.positive[image]
        draw_rectangles(ax, group.boxes[image][padding].cpu(), "cyan", linewidth=0.8,
                        linestyle="--")  # fmt: skip
        draw_rectangles(ax, group.boxes[image][group.positive[image]].cpu(), "yellow",
                        linewidth=0.8)  # fmt: skip
        ax.set_title(f"{name} group, image {image}: {int(group.positive[image].sum())} "
                     f"positive, {int(padding.sum())} padding")  # fmt: skip
        ax.set_xlim(0, image_size[1])
        ax.set_ylim(image_size[0], 0)
        ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Building the queries, step by step
#
# A decoder query is two vectors of D numbers (notebook 61): a **position** (added to
# the query where it attends: the self-attention's queries and keys, the offsets and
# weights of deformable attention) and a **content** (the vector the layers refine and
# the heads read), plus a **reference** box where its deformable attention samples.
# For a positive query, per head h (0 for the RoI head, 1 for ATSS), with the
# parameters of `model.aux["queries"]`:
#
# 1. reference = the prior's box, cxcywh divided by the image size, `(B, n, 4)`;
# 2. its sine embedding, the two-stage proposals' (`proposal_position_embedding` of
#    the inverse sigmoid): `(B, n, 2D)`;
# 3. `pos_trans[h]` (linear 2D → 2D) and `pos_trans_norm[h]` (LayerNorm), split into
#    position `(B, n, D)` and content `(B, n, D)`;
# 4. content += `feat_trans_norm[h](feat_trans[h](feature))`, the prior's own feature
#    `(B, n, D)` through a linear layer and a LayerNorm;
# 5. position += `head_pos_embed[h]`, a learned number of the head.
#
# The ATSS group first, every shape recorded on the way.

# %%
embedding = model.aux["queries"]
head = config.query_groups.index("atss")  # h = 1
atss_group = assignment.queries["atss"]
steps = []


def keep(step, value):
    """Record a step's shape for the table below, and return the value."""
    steps.append({"step": step, "shape": tuple(value.shape)})
    return value


with torch.no_grad():
    reference = keep(
        "1. reference cxcywh / size", xyxy_to_cxcywh_norm(atss_group.boxes, image_size)
    )
    unact = keep("   inverse sigmoid", inverse_sigmoid(reference))  # (B, n, 4)
    sine = keep("2. sine embedding", proposal_position_embedding(unact, dims // 2))  # (B, n, 2D)
    projected = keep("3. pos_trans[h]", embedding.pos_trans[head](sine))
    normed = keep("   pos_trans_norm[h]", embedding.pos_trans_norm[head](projected))
    hand_pos, hand_query = normed.split(dims, dim=2)
    keep("   split: position", hand_pos)
    keep("   split: content", hand_query)

# %% [markdown]
# One query's numbers: the first positive of image 0, an anchor of the stride-8 level.
# Its box in pixels, divided by the image size in cxcywh, and in logit space (the
# inverse sigmoid, log(x / (1 − x)), the space in which the decoder's box heads add
# their deltas). `proposal_position_embedding` takes the sigmoid of its input back, so
# the sine embedding is of the normalised box: each of the four numbers x gives
# sin(2π x / 10000^(2k/64)) and cos of the same for k = 0 … 31, 64 numbers; four
# coordinates, 256 = 2D.

# %%
first = pd.DataFrame(
    {
        "xyxy px": atss_group.boxes[0, 0].tolist(),
        "cxcywh / size": reference[0, 0].tolist(),
        "inverse sigmoid": unact[0, 0].tolist(),
    },
    index=["x1 | cx", "y1 | cy", "x2 | w", "y2 | h"],
)
significant(first)

# %%
frequencies = 10000 ** (2 * (torch.arange(dims // 2) // 2) / (dims // 2))  # (64,)
angles = reference[0, 0, 0] * 2 * math.pi / frequencies  # cx's 64 angles
cx_by_hand = torch.stack((angles[0::2].sin(), angles[1::2].cos()), -1).flatten()  # (64,)
torch.testing.assert_close(cx_by_hand, sine[0, 0, :64], rtol=1e-4, atol=1e-5)
print(f"sine embedding of query (0, 0): {tuple(sine[0, 0].shape)}; its first 64 numbers "
      "(cx) by hand agree; first four:", [f"{v:.4f}" for v in sine[0, 0, :4].tolist()])  # fmt: skip

# %% [markdown]
# **The prior's feature.** For ATSS it is the pyramid's token at the anchor's location:
# the five levels `(B, D, H_l, W_l)` flattened level by level into `(B, D, 2134)`, read
# at `index // K` (K = 1 anchor per location, so the anchor's own index). An anchor at
# location (y, x) of a level of stride s is centred at (x s, y s).

# %%
with torch.no_grad():
    tokens = keep("4. pyramid tokens (B, D, A / K)",
                  torch.cat([level.flatten(2) for level in outputs.pyramid], 2))  # fmt: skip
    locations = atss_group.index // config.atss.num_anchors  # (B, n)
    rows_b = torch.arange(batch, device=tokens.device)[:, None]  # (B, 1)
    atss_features = keep("   features at the locations", tokens.transpose(1, 2)[rows_b, locations])
    linear = embedding.feat_trans[head](atss_features)  # (B, n, D)
    content = keep("   feat_trans[h] + norm", embedding.feat_trans_norm[head](linear))
    hand_query = keep("   content + that", hand_query + content)
    hand_pos = keep("5. position + head_pos_embed[h]", hand_pos + embedding.head_pos_embed[head])
level_sizes = [level.shape[-2] * level.shape[-1] for level in outputs.pyramid]
starts = torch.tensor([0] + level_sizes[:-1]).cumsum(0)  # first token of each level
location = int(locations[0, 0])
level = int(torch.searchsorted(starts, torch.tensor(location), right=True)) - 1
width, stride = outputs.pyramid[level].shape[-1], config.atss.strides[level]
y, x = divmod(location - int(starts[level]), width)
anchor_centre = ((atss_group.boxes[0, 0, :2] + atss_group.boxes[0, 0, 2:]) / 2).tolist()
print(f"tokens per level {level_sizes}, first token of each level {starts.tolist()}")
print(f"query (0, 0): anchor {int(atss_group.index[0, 0])}, level {level} (stride {stride}), "
      f"(y, x) = ({y}, {x}); (x s, y s) = ({x * stride}, {y * stride}), anchor centre "
      f"{tuple(round(v) for v in anchor_centre)}")  # fmt: skip
torch.testing.assert_close(atss_features[0, 0], outputs.pyramid[level][0, :, y, x])

# %% [markdown]
# Every step and its shape (B = 3 images, n = 77 queries, D = 128):

# %%
pd.DataFrame(steps)

# %% [markdown]
# The same, in one call: `model.aux["queries"](h, reference, features)` returns
# (content, position), each `(B, n, D)`.

# %%
with torch.no_grad():
    atss_query, atss_query_pos = embedding(head, reference, atss_features)
torch.testing.assert_close(hand_query, atss_query)
torch.testing.assert_close(hand_pos, atss_query_pos)
print(f"content {tuple(atss_query.shape)}, position {tuple(atss_query_pos.shape)}: "
      "equal to the step-by-step result")  # fmt: skip

# %% [markdown]
# **One number per head.** `head_pos_embed` holds a single number per head, shape
# `(2, 1)`, added to all D channels of every query of the group: it only lets the
# shared decoder tell an ATSS group from a RoI group by a shift of the position. The
# reference builds it as `nn.Embedding(num_co_heads, 1, 1, embed_dims)`, whose
# positional arguments are (embeddings, dimension, padding index, max norm): a
# dimension of 1. Its comment calls this a bug (it should have been one D-vector per
# head, `nn.Embedding(num_co_heads, embed_dims)`) kept to reproduce the ResNet-50
# results, and it reads the weight row directly; the course keeps the same
# `(heads, 1)` parameter.

# %%
print(f"head_pos_embed {tuple(embedding.head_pos_embed.shape)}:",
      [f"{v:.4g}" for v in embedding.head_pos_embed.flatten().tolist()])  # fmt: skip
print("parameters of the positive query embedding by part:",
      {name: sum(p.numel() for p in part.parameters()) for name, part in embedding.named_children()}
      | {"head_pos_embed": embedding.head_pos_embed.numel()})  # fmt: skip

# %% [markdown]
# **The RoI group.** Its prior's feature is the RoI's own: RoIAlign's 7 × 7 pooled
# feature from the stride 8 to 64 levels (each RoI from one level, chosen by its size,
# notebook 51), averaged over the 49 bins. The RoIs of all images are stacked,
# `rois` `(N, 5)` (image, xyxy), so a query's row is its image's first RoI plus its
# `index`.

# %%
roi_group = assignment.queries["roi"]
branch = model.aux["rcnn"]
with torch.no_grad():
    pooled = branch.roi_head.extractor(outputs.pyramid[:4], rcnn.rois)  # (N, D, 7, 7)
    per_roi = pooled.mean((2, 3))  # (N, D)
    roi_counts = torch.bincount(roi_image, minlength=batch)  # (B,)
    offsets = roi_counts.cumsum(0) - roi_counts  # (B,) each image's first RoI
    roi_features = per_roi[roi_group.index + offsets[:, None]]  # (B, n, D)
    roi_reference = xyxy_to_cxcywh_norm(roi_group.boxes, image_size)  # (B, n, 4)
    roi_query, roi_query_pos = embedding(config.query_groups.index("roi"), roi_reference,
                                         roi_features)  # fmt: skip
torch.testing.assert_close(roi_group.boxes, rcnn.rois[roi_group.index + offsets[:, None], 1:])
print(
    f"rois {tuple(rcnn.rois.shape)} -> pooled {tuple(pooled.shape)} -> averaged "
    f"{tuple(per_roi.shape)}; first RoI of each image {offsets.tolist()}"
)
print(f"features {tuple(roi_features.shape)} -> content {tuple(roi_query.shape)}, "
      f"position {tuple(roi_query_pos.shape)}")  # fmt: skip

# %% [markdown]
# ## 4. Decoding a group
#
# `model.decode_queries(outputs, name, group, features)` builds the group's queries as
# above and runs them through the DETR's decoder (the same layers, the same class and
# box heads of every layer) on the encoder's memory: class logits `(L, B, n, C)` and
# boxes `(L, B, n, 4)` cxcywh in [0, 1], one per decoder layer, exactly the outputs of
# the one-to-one queries but for n queries.

# %%
with torch.no_grad():
    atss_logits, atss_boxes = model.decode_queries(outputs, "atss", atss_group, atss_features)
one_to_one = outputs.one_to_one
print(f"atss group: logits {tuple(atss_logits.shape)}, boxes {tuple(atss_boxes.shape)}")
print(f"one-to-one: logits {tuple(one_to_one.cls_logits.shape)}, "
      f"boxes {tuple(one_to_one.boxes.shape)}")  # fmt: skip

# %% [markdown]
# Untrained, every box head's last layer outputs zeros, so each layer's box is its
# reference: the queries start on their priors, and training moves them towards
# their targets. A box lives in [0, 1] (a sigmoid), so a reference that reaches out of
# [0, 1] is clamped: the 512 and 1024 px anchors of the stride-64 and stride-128
# levels are 1.6 and 3.2 image widths wide, and a padding negative may be one of them.

# %%
outside = ((reference < 0) | (reference > 1)).any(-1)  # (B, n)
clamped = reference.clamp(0, 1)
same = [torch.allclose(atss_boxes[layer], clamped, atol=1e-4) for layer in range(num_layers)]
outside_levels = torch.searchsorted(starts, locations[outside].cpu(), right=True) - 1
print(f"references out of [0, 1]: {int(outside.sum())} queries "
      f"({int((outside & atss_group.positive).sum())} positive), of the levels "
      f"{outside_levels.tolist()}")  # fmt: skip
print("each layer's boxes equal the references clamped to [0, 1]:", same)

# %% [markdown]
# ### 4.1 Groups run alone
#
# Each group is its own call of the decoder: the one-to-one queries never see a group
# and no group sees another, so the DETR's own outputs are what they would be without
# Co-DETR. The only place where queries meet is the self-attention; running a group
# alone is the same as running it in one call with the one-to-one queries under a
# block-diagonal attention mask. We check both: the one-to-one queries decoded alone
# (`select_queries` then `decode`) give the forward's outputs; decoded together with
# the ATSS group they change unless the mask separates the two.

# %%
detr = model.detr
with torch.no_grad():
    query, query_pos, one_reference, _, _ = detr.select_queries(
        one_to_one.memory, one_to_one.spatial_shapes
    )  # (B, Q, D), (B, Q, D), (B, Q, 4)
    alone_logits, _, _ = detr.decode(query, query_pos, one_reference, one_to_one.memory,
                                     one_to_one.spatial_shapes)  # fmt: skip
    together = [torch.cat(pair, 1) for pair in ((query, atss_query), (query_pos, atss_query_pos),
                                                 (one_reference, reference))]  # fmt: skip
    num_queries, size = query.shape[1], atss_query.shape[1]
    block = torch.ones(num_queries + size, num_queries + size, dtype=torch.bool, device=device)
    block[:num_queries, :num_queries] = False  # one-to-one queries see each other
    block[num_queries:, num_queries:] = False  # the group sees itself
    mixed_logits, _, _ = detr.decode(*together, one_to_one.memory, one_to_one.spatial_shapes)
    split_logits, _, _ = detr.decode(*together, one_to_one.memory, one_to_one.spatial_shapes,
                                     block)  # fmt: skip
torch.testing.assert_close(alone_logits, one_to_one.cls_logits)
torch.testing.assert_close(split_logits[:, :, :num_queries], one_to_one.cls_logits)
torch.testing.assert_close(split_logits[:, :, num_queries:], atss_logits)
change = (mixed_logits[:, :, :num_queries] - one_to_one.cls_logits).abs().max().item()
print(f"queries in one call: {num_queries} + {size}; mask {tuple(block.shape)}")
print(f"without the mask the one-to-one logits change by up to {change:.2g}; "
      "with it, both sets equal their separate calls")  # fmt: skip

# %% [markdown]
# ### 4.2 Masked padding
#
# Inside a group, the reference's padding negatives are ordinary queries: every query
# attends to every other, and the negatives learn "no object". With `zero_padding`
# the padding is masked instead. `padding_attention_mask(valid, heads)` gives the
# self-attention mask, `(B heads, n, n)` bool, True where query i (row) may not look at
# key j (column): no query looks at a padding key, and a padding query looks at no
# real query, only at itself. That is the reference's `use_zero_padding` mask but for
# the diagonal: the reference masks a padding query's whole row, and PyTorch's
# attention returns NaN for a row without any key, so the course leaves each query its
# own key. Nothing reads a padding query's output either way.
#
# The ATSS group again, padded with masked queries: the same positives, in the same
# order, and the rest masked.

# %%
anchors, _ = model.aux["atss"].anchors([tuple(level.shape[-2:]) for level in outputs.pyramid],
                                       device)  # (A, 4) xyxy px  # fmt: skip
anchor_targets = atss_gt[rows_b, atss_result.gt_index.clamp(min=0)]  # (B, A, 4)
zero_group = positive_query_group(
    anchors.expand(batch, -1, -1), atss_result.labels, anchor_targets,
    max_queries=config.max_positive_queries, zero_padding=True,
)  # fmt: skip
assert torch.equal(zero_group.index[zero_group.positive], atss_group.index[atss_group.positive])
mask = padding_attention_mask(zero_group.valid, num_heads)  # (B heads, n, n)
print(f"valid {tuple(zero_group.valid.shape)}, real queries per image "
      f"{zero_group.valid.sum(1).tolist()}; mask {tuple(mask.shape)}")  # fmt: skip

# %% [markdown]
# The mask of image 1 (45 real queries, 32 padding), the same for its 8 heads: the
# real queries (top left, inside the orange lines) see each other; the padding's
# columns and rows are masked (black), but for the padding's own diagonal.

# %%
image = 1
image_mask = mask.view(batch, num_heads, size, size)[image, 0].cpu()  # (n, n)
assert all(torch.equal(image_mask, mask[image * num_heads + h].cpu()) for h in range(num_heads))
real = int(zero_group.valid[image].sum())
fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.imshow(image_mask, cmap="gray_r", interpolation="nearest")
ax.axhline(real - 0.5, color="tab:orange", linewidth=1)
ax.axvline(real - 0.5, color="tab:orange", linewidth=1)
ax.set_xlabel("key j")
ax.set_ylabel("query i")
ax.set_title(f"image {image}: {real} real queries, {size - real} padding (black: masked)")
plt.show()

# %% [markdown]
# The check: decode the masked group twice, the second time with its padding queries
# filled with other boxes and other features. The real queries' outputs do not move;
# the padding's own do. Without the mask (every query marked valid, so
# `decode_queries` builds none) the same change reaches every real query.

# %%
padding = ~zero_group.valid  # (B, n)
generator = torch.Generator().manual_seed(1)
zero_features = tokens.transpose(1, 2)[rows_b, zero_group.index // config.atss.num_anchors]
other_features = torch.where(
    padding[..., None],
    3 * torch.randn(zero_features.shape, generator=generator).to(device),
    zero_features,
)  # fmt: skip
corners = torch.rand(batch, size, 2, generator=generator).to(device) * 250  # (B, n, 2) px
other_boxes = torch.where(padding[..., None], torch.cat([corners, corners + 60], -1),
                          zero_group.boxes)  # fmt: skip
other_group = zero_group._replace(boxes=other_boxes)
unmasked_group, unmasked_other = (group._replace(valid=torch.ones_like(padding))
                                  for group in (zero_group, other_group))  # fmt: skip
with torch.no_grad():
    first_logits, first_boxes = model.decode_queries(outputs, "atss", zero_group, zero_features)
    second_logits, second_boxes = model.decode_queries(outputs, "atss", other_group,
                                                       other_features)  # fmt: skip
    open_first, _ = model.decode_queries(outputs, "atss", unmasked_group, zero_features)
    open_second, _ = model.decode_queries(outputs, "atss", unmasked_other, other_features)
valid = zero_group.valid
torch.testing.assert_close(first_logits[:, valid], second_logits[:, valid])
torch.testing.assert_close(first_boxes[:, valid], second_boxes[:, valid])
padding_change = (first_logits[:, padding] - second_logits[:, padding]).abs().max().item()
open_change = (open_first[:, valid] - open_second[:, valid]).abs().max().item()
print(
    f"masked: the {int(valid.sum())} real queries' logits and boxes are unchanged; "
    f"the padding's logits change by up to {padding_change:.2g}"
)
print(f"unmasked: the real queries' logits change by up to {open_change:.2g}")

# %% [markdown]
# ## 5. Their loss
#
# A group learns what its head assigned, on **every** decoder layer, with the DETR's
# loss (notebook 62) but no matching: `set_loss_on_targets`, the set loss with the
# targets given. For one group and layer l, with P the group's positives in the batch:
#
# - class: sigmoid focal loss (α 0.25, γ 2) of every (query, class) pair against a
#   one-hot row of the positive's class; the padding negatives' rows are all zeros
#   (they learn "no object"); masked padding (`valid` False) is left out (weight 0);
#   weight 2 × λ₁ (λ₁ = 1);
# - L1 on normalised cxcywh, positives only, weight 5 × λ₁;
# - 1 − GIoU in pixels, positives only, weight 2 × λ₁;
# - all three divided by P (averaged over processes, at least 1).
#
# `loss_terms` names them `atss_queries.cls`, `.l1`, `.giou` for the last layer and
# `atss_queries.d0.cls`, ... for the earlier ones, as the DETR's own terms. By hand
# for the ATSS group, from the logits and boxes of section 4:

# %%
terms = model.loss_terms(outputs, targets, assignment)
class_targets = torch.zeros(batch, size, num_classes, device=device)  # (B, n, C)
image_of, row_of = atss_group.positive.nonzero(as_tuple=True)
class_targets[image_of, row_of, atss_group.labels[image_of, row_of]] = 1.0
box_targets = xyxy_to_cxcywh_norm(atss_group.targets, image_size)  # (B, n, 4)
detr_config = config.detr
table = {}
for layer in range(num_layers):
    by_hand = set_loss_on_targets(
        atss_logits[layer], atss_boxes[layer], class_targets, box_targets, atss_group.positive,
        image_size, cls_weight=detr_config.cls_weight * config.lambda_1,
        l1_weight=detr_config.l1_weight * config.lambda_1,
        giou_weight=detr_config.giou_weight * config.lambda_1, alpha=detr_config.focal_alpha,
        gamma=detr_config.focal_gamma, query_weights=atss_group.valid,
    )  # fmt: skip
    prefix = "atss_queries." + ("" if layer == num_layers - 1 else f"d{layer}.")
    for key, value in by_hand.items():
        torch.testing.assert_close(value, terms[prefix + key].detach())
        table[prefix + key] = {"layer": layer, "by hand": value.item(),
                               "loss_terms": terms[prefix + key].item()}  # fmt: skip
print(
    f"P = {int(atss_group.positive.sum())} positives in the batch (the divisor); "
    f"class targets {tuple(class_targets.shape)}, box targets {tuple(box_targets.shape)}"
)
significant(pd.DataFrame(table).T.astype({"layer": int}), 4)

# %% [markdown]
# The box terms are the same on the three layers: untrained, every layer's box is the
# reference (section 4), and the anchor is as far from its box on every layer.
#
# What the rows learn, for the first two positives and the first two padding rows of
# image 1: a positive's class row is one-hot, a padding negative's is zeros (every
# class pushed towards 0: "no object"), and only the positives' boxes enter L1 and GIoU.

# %%
count = int(atss_group.positive[1].sum())
shown = [0, 1, count, count + 1]
pd.DataFrame(
    {
        "positive": atss_group.positive[1, shown].tolist(),
        "label": atss_group.labels[1, shown].tolist(),
        "class target": [tuple(int(v) for v in row) for row in class_targets[1, shown].tolist()],
        "box target cxcywh / size": [
            tuple(round(v, 3) for v in box) for box in box_targets[1, shown].tolist()
        ],  # fmt: skip
    },
    index=pd.Index(shown, name="row"),
)

# %% [markdown]
# How many terms in all: per group, 3 terms on each of the L decoder layers, so
# groups × L × 3 = 2 × 3 × 3 = 18 for the CPU preset (2 × 6 × 3 = 36 in the reference).
# `model.loss` sums them into `losses["queries"]`, beside the DETR's own and the
# auxiliary heads' terms.

# %%
query_terms = [name for name in terms if "_queries." in name]
losses = model.loss(outputs, targets, assignment)
torch.testing.assert_close(losses["queries"], torch.stack([terms[k] for k in query_terms]).sum())
print(f"{len(query_terms)} terms = {len(config.query_groups)} groups x {num_layers} layers x 3:")
print(query_terms)
print({name: f"{value.item():.4g}" for name, value in losses.items()})

# %% [markdown]
# With masked padding the class term leaves the padding out, so it is the positives'
# own; with the reference's padding the negatives add their "no object" pairs. At the
# class prior of p = 0.01 a negative pair costs little (notebook 62), so the two differ
# only a little before training; later the negatives are the ones that teach the
# decoder not to fire on a head's background priors.

# %%
with_negatives = terms["atss_queries.cls"].item()
masked_cls = set_loss_on_targets(
    first_logits[-1], first_boxes[-1], class_targets, box_targets, zero_group.positive,
    image_size, cls_weight=detr_config.cls_weight, query_weights=zero_group.valid,
)["cls"].item()  # fmt: skip
print(
    f"last layer cls: padding with negatives {with_negatives:.4g}, masked padding {masked_cls:.4g}"
)

# %% [markdown]
# Which parts learn from the 18 terms? The gradient of their sum, tensor by tensor,
# grouped by part of the model: a tensor is *off the path* when the terms do not depend
# on it at all (`None`), *zero* when they do but its gradient is exactly 0 in this
# first step, and *reached* otherwise.

# %%
query_loss = torch.stack([terms[name] for name in query_terms]).sum()
named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
grads = torch.autograd.grad(query_loss, [p for _, p in named], allow_unused=True)
parts = {}
for (name, _), grad in zip(named, grads, strict=True):
    state = "off the path" if grad is None else "zero" if grad.abs().sum() == 0 else "reached"
    parts.setdefault(".".join(name.split(".")[:2]), []).append(state)
pd.DataFrame(
    {state: [states.count(state) for states in parts.values()]
     for state in ("reached", "zero", "off the path")},
    index=pd.Index(list(parts), name="part"),
)  # fmt: skip

# %% [markdown]
# - **Reached**: the backbone, the neck and the encoder (through the memory the
#   queries sample, and for the ATSS group also through the pyramid tokens of their
#   features), the stride-128 conv (`aux.downsample`: one padding negative of this
#   batch is an anchor of that level, level 4 above), the decoder, the class and box
#   heads of the three decoder layers, and the positive query embedding (`aux.queries`).
# - **Off the path**: the two-stage selection (the encoder's proposal heads
#   `cls_branches.3` and `reg_branches.3`, `memory_trans_*`, `pos_trans_*`), the
#   learned content of the one-to-one queries (`query_embedding`), and the auxiliary
#   heads themselves (`aux.rcnn`, `aux.atss`): a group's references and features are
#   read from the priors and the pyramid, not from the heads' predictions.
# - **Zero** in this first step only, an effect of the initialisation: each box MLP's
#   last layer starts at zero, so its first two layers get no gradient until it has
#   moved (only `reg_branches.{0,1,2}.4` is reached); and `level_embed` enters only
#   through the positions, which deformable attention reads through offset and weight
#   layers that also start at zero (mmdet's initialisation).
#
# ## Recap
#
# - An auxiliary head's assignment becomes a group with `positive_query_group`: per
#   image its positives (at most `max_queries`, drawn at random beyond), padded to
#   n = clamp(largest count of the batch, 9, max) rows, with the head's negatives (the
#   reference; they learn "no object") or with masked queries (`zero_padding`). Fields
#   `(B, n)`: `index`, `boxes`, `labels`, `targets`, `positive`, `valid`.
# - The CPU preset's batch: an RoI group of n = 29 and an ATSS group of n = 77 per
#   image, every positive included.
# - A query: reference = the prior's box, normalised cxcywh; its sine embedding
#   `(B, n, 2D)` through a linear layer and a LayerNorm, split into position and
#   content `(B, n, D)`; content + LayerNorm(linear(the prior's feature)) (ATSS: the
#   pyramid's token at the anchor; RoI: the pooled 7 × 7 feature averaged); position +
#   one learned number per head (the reference's `(heads, 1)` embedding).
# - `decode_queries` runs a group alone through the shared decoder: logits
#   `(L, B, n, C)`, boxes `(L, B, n, 4)`. Alone = a block-diagonal mask: groups and the
#   one-to-one queries never see each other. With `zero_padding`, the mask of
#   `padding_attention_mask` `(B heads, n, n)` keeps the padding out of the real
#   queries' outputs.
# - The loss: focal, L1 and GIoU (2, 5, 2, × λ₁ = 1) on every decoder layer, targets
#   given by the head, divided by the group's positives: groups × L × 3 terms (18 in
#   the preset, 36 in the reference). It trains the backbone, encoder, decoder, heads
#   and the query embedding; at test time no group runs.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** The group size. Write `group_size(counts, min_queries=9,
# max_queries=300)`: for a list of per-image positive counts, the number n of queries
# per image of their group (an int), as `positive_query_group` chooses it (do not call
# it).

# %% tags=["solution"]
group_size = None  # your function (counts: list of ints, min_queries, max_queries) -> int
### BEGIN SOLUTION


def group_size(counts, min_queries=9, max_queries=300):
    return max(min_queries, min(max_queries, max(counts)))


print(group_size([3, 5]), group_size([24, 13, 29], 9, 100), group_size([350, 2]))
### END SOLUTION

# %% tags=["check"]


def reference_group_size(counts, min_queries=9, max_queries=300):
    """n from positive_query_group itself, on labels with these counts of positives."""
    priors = max(counts) + max_queries + 1
    labels = torch.full((len(counts), priors), BACKGROUND)
    for image, count in enumerate(counts):
        labels[image, :count] = 0
    boxes = torch.zeros(len(counts), priors, 4)
    group = positive_query_group(boxes, labels, boxes, max_queries, min_queries)
    return group.index.shape[1]


check_function(
    "group_size", group_size, [([3, 5],), ([12, 40, 7],), ([0, 0],), ([350, 2],)],
    reference_group_size,
    hint="n = the largest count of the batch, raised to min_queries and cut to "
    "max_queries: max(min_queries, min(max_queries, max(counts))).",
)  # fmt: skip
check_equal(
    "group_size([24, 13, 29], 9, 100)", group_size([24, 13, 29], 9, 100), 29,
    hint="the largest count 29 lies between 9 and 100.",
)  # fmt: skip
check_equal(
    "group_size([4, 2], 9, 100)", group_size([4, 2], 9, 100), 9,
    hint="at least min_queries = 9, even when every image has fewer positives.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "group_size", group_size, [([120, 80], 9, 100), ([5], 1, 300), ([4, 9], 2, 6)],
    reference_group_size, hint="the clamp with other bounds",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The padding mask by hand. Write `query_mask(valid)`: for one image's
# `valid` vector `(n,)` bool, the self-attention mask `(n, n)` bool, True where query i
# (row) may not look at key j (column): no query looks at a padding key, a padding
# query looks at no real query, and every query may look at itself. Use plain torch,
# not `padding_attention_mask`.

# %% tags=["solution"]
query_mask = None  # your function (valid: (n,) bool tensor) -> (n, n) bool tensor
### BEGIN SOLUTION


def query_mask(valid):
    size = len(valid)
    mask = ~(valid[:, None] & valid[None, :])  # query i or key j is padding
    mask[torch.arange(size), torch.arange(size)] = False  # itself, always
    return mask


print(query_mask(torch.tensor([True, True, False])))
### END SOLUTION

# %% tags=["check"]
check_function(
    "query_mask", query_mask,
    [(torch.tensor([True, True, False, True, False]),), (torch.tensor([True, True]),)],
    lambda valid: padding_attention_mask(valid[None], 1)[0],
    hint="mask[i, j] = not (valid[i] and valid[j]): True unless both are real; then "
    "mask[i, i] = False (each query may look at itself).",
)  # fmt: skip
check_equal(
    "query_mask([True, False, True])", query_mask(torch.tensor([True, False, True])),
    torch.tensor([[False, True, False], [True, False, True], [False, True, False]]),
    hint="column 1 (the padding key) is masked in rows 0 and 2; row 1, the padding query, "
    "may look at itself only.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "query_mask", query_mask, [(torch.tensor([False, False, True]),), (torch.tensor([False]),)],
    lambda valid: padding_attention_mask(valid[None], 1)[0],
    hint="padding first, or nothing but padding",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Counting terms. Assign `num_query_terms_preset`, the number of loss
# terms of the positive queries in the CPU preset (an int), and
# `num_query_terms_reference`, the same for the reference model
# `co_deformable_detr_r50_1x` (`CoDETRConfig()`: read its fields, or count by hand:
# two groups, six decoder layers). Then assign `atss_divisor`, the number the
# `atss_queries.*` terms of this notebook's batch are divided by (an int).

# %% tags=["solution"]
num_query_terms_preset = None  # int
num_query_terms_reference = None  # int
atss_divisor = None  # int
### BEGIN SOLUTION
num_query_terms_preset = len(config.query_groups) * config.detr.num_decoder_layers * 3
reference_config = CoDETRConfig()
num_query_terms_reference = (
    len(reference_config.query_groups) * reference_config.detr.num_decoder_layers * 3
)
atss_divisor = int(assignment.queries["atss"].positive.sum())
print(num_query_terms_preset, num_query_terms_reference, atss_divisor)
### END SOLUTION

# %% tags=["check"]
check_equal(
    "num_query_terms_preset", num_query_terms_preset,
    len([name for name in terms if "_queries." in name]),
    hint="groups x decoder layers x (cls, l1, giou): 2 x 3 x 3.",
)  # fmt: skip
check_equal(
    "num_query_terms_reference", num_query_terms_reference, 36,
    hint="the same count with the reference's six decoder layers: 2 x 6 x 3.",
)  # fmt: skip
check_equal(
    "atss_divisor", atss_divisor, int(counts["atss: positive"].sum()),
    hint="the positives of the ATSS group in the whole batch (padding negatives do not "
    "count): group.positive.sum().",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** A reference box by hand. On an image 256 px high and 320 px wide, a
# prior's box is (64, 32, 224, 160) xyxy px. Compute by hand (Python arithmetic or
# plain torch) `box_norm`, its cxcywh divided by the image size (4 numbers: x and w by
# the width, y and h by the height), and `box_unact`, its inverse sigmoid
# log(x / (1 − x)) (4 numbers), the input of the sine embedding.

# %% tags=["solution"]
prior_box = torch.tensor([64.0, 32, 224, 160])  # (4,) xyxy px
prior_image_size = (256, 320)  # (H, W)
box_norm = None  # 4 numbers: cx / W, cy / H, w / W, h / H
box_unact = None  # 4 numbers: log(x / (1 - x)) of each
### BEGIN SOLUTION
box_norm = [(64 + 224) / 2 / 320, (32 + 160) / 2 / 256, (224 - 64) / 320, (160 - 32) / 256]
box_unact = [math.log(x / (1 - x)) for x in box_norm]
print(box_norm, [round(v, 4) for v in box_unact])
### END SOLUTION

# %% tags=["check"]
check_close(
    "box_norm", box_norm, xyxy_to_cxcywh_norm(prior_box, prior_image_size),
    hint="cx = (64 + 224) / 2 = 144 px, cy = 96 px, w = 160 px, h = 128 px; divide x and w "
    "by 320, y and h by 256.",
)  # fmt: skip
check_close(
    "box_unact", box_unact, [math.log(0.45 / 0.55), math.log(0.375 / 0.625), 0.0, 0.0],
    hint="box_norm is (0.45, 0.375, 0.5, 0.5); log(0.5 / 0.5) = 0.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "box_unact", box_unact, inverse_sigmoid(torch.tensor([0.45, 0.375, 0.5, 0.5])),
    hint="the course's inverse_sigmoid",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - Z. Zong, G. Song, Y. Liu, *DETRs with Collaborative Hybrid Assignments Training*
#   (Co-DETR), ICCV 2023, <https://arxiv.org/abs/2211.12860> (the customised positive
#   queries and their loss); the authors' code, <https://github.com/Sense-X/Co-DETR>:
#   `projects/models/co_deformable_detr_head.py` (`get_aux_targets`, `forward_aux`,
#   `loss_single_aux`), `projects/models/transformer.py`
#   (`CoDeformableDetrTransformer.forward_aux`), config
#   `projects/configs/co_deformable_detr/co_deformable_detr_r50_1x_coco.py`
# - H. Zhang et al., *DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End
#   Object Detection*, ICLR 2023, <https://arxiv.org/abs/2203.03605> (mixed query
#   selection and look forward twice, both in the preset's DETR)
# - X. Zhu et al., *Deformable DETR: Deformable Transformers for End-to-End Object
#   Detection*, ICLR 2021, <https://arxiv.org/abs/2010.04159> (two stages: queries made
#   from boxes by the same sine embedding, linear layer and LayerNorm)
# - Notebooks 60 (deformable attention), 61 (queries and Hungarian matching), 62 (the
#   set loss) and 70 (the Co-DETR model and its auxiliary heads); notebooks 41 and 51
#   for the ATSS and RoI assignments the groups come from
