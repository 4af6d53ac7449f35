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
# # 61 · Deformable DETR: queries and Hungarian matching
#
# Every detector of the course so far predicts at *priors*: grid cells, anchor points,
# anchor boxes, fixed places spread over the image. An assigner gives each ground-truth
# box several of them (ATSS a handful, the RPN every anchor above an IoU of 0.7), all of
# them learn the box, and at test time all of them fire: NMS keeps one box per object.
#
# DETR (Carion et al., ECCV 2020) predicts a *set*. A fixed number Q of **queries**
# each say "this box, this class" or "no object". Training matches the queries to the
# M ground-truth boxes *one to one*, the matching of least total cost, found with the
# Hungarian method (Kuhn, 1955): each box is learnt by exactly one query, every other
# query learns "no object", and the detector learns to predict each object once. No
# NMS. Deformable DETR (Zhu et al., ICLR 2021) keeps this training and gives each
# query a **reference**, a point or a box in the image, around which its deformable
# attention samples the encoder's features; with *two stages* the references are the
# encoder's best proposals.
#
# This notebook follows the queries of the course's CPU preset from their reference
# to their matching: how queries and references are made, with and without two stages;
# what every decoder layer outputs; the three matching costs of one image as matrices;
# the optimal assignment against a greedy one and against brute force; why one query
# per object removes NMS; and how each decoder layer, and the encoder's proposals, get
# a matching of their own. Notebook 62 turns the matching into the set loss, notebook
# 63 trains the detector.
#
# **Learning goals**
#
# 1. Make a query's reference by hand: from a learned embedding split into position
#    and content (reference point = sigmoid(linear(position))), or, with two stages,
#    from the encoder's best proposals.
# 2. Read the outputs of every decoder layer: class logits `(L, B, Q, C)`, boxes
#    `(L, B, Q, 4)` cxcywh in [0, 1], the references each layer started from.
# 3. Compute the three matching costs (focal class cost, L1 on normalised cxcywh,
#    −GIoU) as `(Q, M)` matrices, and one entry of each by hand.
# 4. Find the assignment of least total cost with `assign_hungarian`, show that a
#    greedy assignment can cost more and that brute force finds the same optimum.
# 5. Explain why a DETR needs no NMS, and contrast its one positive per box with
#    ATSS's many.
# 6. Match every decoder layer and the encoder's proposals on their own
#    (`model.assign`), and say what happens without boxes, with more boxes than queries
#    and without queries.
#
# **Prerequisites**: notebook 01 (IoU, GIoU), notebook 09 (box formats, cxcywh
# normalised), notebook 21 (ATSS, for the contrast), notebook 42 (the focal loss);
# notebook 60 (multi-scale deformable attention, how a query reads the image around
# its reference) helps but is not needed.
#
# **Notation**: the letters of the shapes (B, Q, M, C, ...) and the box formats are
# those of [notebook 09](09_notation.ipynb); S counts the encoder's tokens of all levels,
# D their width, and in the outputs' shapes L counts decoder layers, as in
# `DeformableDETROutputs`.

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
import dataclasses
import itertools
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Rectangle
from scipy.optimize import linear_sum_assignment
from torch import nn

from detutils import boxes as box_ops
from detutils.assigners import BACKGROUND, assign_atss
from detutils.assigners.hungarian import assign_hungarian, hungarian_costs
from detutils.assigners.result import AssignResult
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.course import significant
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses.detr import set_loss, set_targets
from detutils.models.deformable_detr import (
    DeformableDETR,
    build_deformable_detr_r18half_d128,
    proposal_position_embedding,
)
from detutils.priors import grid_cells
from detutils.viz import draw_boxes


def load_sample(index, split="val", size=320):
    """One image of the shapes set with its boxes (M, 4) xyxy px and labels (M,)."""
    image, _, objects = render_sample(seed=0, split=split, index=index, size=size)
    boxes = [obj["bbox"] for obj in objects]
    gt_boxes = box_ops.xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    gt_labels = torch.tensor([obj["label"] for obj in objects], dtype=torch.long)
    return image, gt_boxes, gt_labels


def draw_rectangles(ax, boxes, color, **style):
    """Outline (N, 4) xyxy px boxes on ``ax``."""
    for x1, y1, x2, y2 in boxes.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, **style))


# %% [markdown]
# ## 1. Queries and their references
#
# The image of this notebook: validation image 29, five boxes of four classes, from a
# 141 × 132 cross down to a 13 × 12 hexagon.

# %%
image, gt_boxes, gt_labels = load_sample(29)
gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
image_size = tuple(images.shape[-2:])  # (H, W) px
targets = [{"boxes": gt_boxes, "labels": gt_labels}]
sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).cpu()  # (M, 2) w, h px
pd.DataFrame(
    {
        "class": [CLASS_NAMES[label] for label in gt_labels.tolist()],
        "xyxy": [tuple(int(v) for v in box) for box in gt_boxes.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in sizes.tolist()],
    }
).rename_axis("box")

# %%
ax = draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=CLASS_NAMES)
ax.set_title("val image 29: five boxes")
plt.show()

# %% [markdown]
# The course's CPU preset, `build_deformable_detr_r18half_d128`: a half-width
# ResNet-18, width D = 128, three encoder and three decoder layers, Q = 100 queries
# (mmdet's R50 model has 300), box refinement and two stages. Building it loads no
# weights: this notebook looks at an untrained network, whose boxes and scores are
# arbitrary but whose shapes, references and matching rules are those of a trained
# one. We also build the plain variant, the same fields with `as_two_stage=False` and
# `with_box_refine=False`, to see the learned queries of the original Deformable DETR.

# %%
model = build_deformable_detr_r18half_d128(num_classes=len(CLASS_NAMES)).to(device).eval()
config = model.config
plain_config = dataclasses.replace(
    config, name="deformable-detr-r18half-d128-plain", as_two_stage=False, with_box_refine=False
)
plain = DeformableDETR(plain_config).to(device).eval()
dims, num_queries, num_layers = config.embed_dims, config.num_queries, config.num_decoder_layers
for name, network in [("preset (two stages, refinement)", model), ("plain", plain)]:
    print(f"{name}: {sum(p.numel() for p in network.parameters()):,} parameters")
print(f"D = {dims}, Q = {num_queries}, decoder layers {num_layers}")

# %% [markdown]
# ### 1.1 Learned queries: position, content, reference point
#
# Without two stages a query is one learned vector of 2 D numbers
# (`query_embedding`, an `nn.Embedding(Q, 2 D)`), split in two halves:
#
# - the **position** part (D), added to the query wherever it attends (self-attention
#   among the queries, the offsets of deformable attention), and read by a linear
#   layer that gives the query's **reference point**: (x, y) = sigmoid(linear(position)),
#   in [0, 1] of the image;
# - the **content** part (D), the query itself: the vector the decoder layers refine
#   and the heads read.
#
# Every image starts from the same 100 queries, hence the same 100 reference points.

# %%
query_pos, query_content = plain.query_embedding.weight.split(dims, dim=1)  # (Q, D) each
with torch.no_grad():
    reference_points = plain.reference_points_fc(query_pos).sigmoid()  # (Q, 2) x, y in [0, 1]
    plain_outputs = plain(images)
torch.testing.assert_close(plain_outputs.references[0][0], reference_points)
print(f"embedding {tuple(plain.query_embedding.weight.shape)} -> position "
      f"{tuple(query_pos.shape)} + content {tuple(query_content.shape)}")  # fmt: skip
low, high = reference_points.min(dim=0).values, reference_points.max(dim=0).values
print(f"reference points {tuple(reference_points.shape)}: x from {low[0].item():.3g} to "
      f"{high[0].item():.3g}, y from {low[1].item():.3g} to {high[1].item():.3g}")  # fmt: skip

# %% [markdown]
# A query's box is read from its reference: the box head (a 3-layer MLP) gives four
# numbers, the first two are added to the inverse sigmoid of the reference point, and
# a sigmoid brings all four back to [0, 1]:
# cx, cy = sigmoid(mlp_xy + sigmoid⁻¹(reference)), w, h = sigmoid(mlp_wh). The MLP's
# last layer starts at zero with a bias of −2 on w and h, so before training every
# query's box sits on its reference point with a side of sigmoid(−2) = 0.119 of the
# image, 38 px. Without box refinement every decoder layer starts from the same point.

# %%
first = plain_outputs.boxes[0, 0, :5]  # (5, 4) layer 0, image 0
pd.DataFrame(
    {
        "reference x": reference_points[:5, 0].tolist(),
        "reference y": reference_points[:5, 1].tolist(),
        "box cx": first[:, 0].tolist(),
        "box cy": first[:, 1].tolist(),
        "box w": first[:, 2].tolist(),
        "box h": first[:, 3].tolist(),
    }
).rename_axis("query").pipe(significant, 4)

# %%
torch.testing.assert_close(first[:, :2], reference_points[:5])
assert all(ref is plain_outputs.references[0] for ref in plain_outputs.references)
print(f"sigmoid(-2) = {torch.tensor(-2.0).sigmoid().item():.4f}, "
      f"{torch.tensor(-2.0).sigmoid().item() * image_size[1]:.4g} px")  # fmt: skip

# %% [markdown]
# The 100 reference points over the image (left), and the first layer's boxes of ten of
# the queries (right). Untrained, the points lie at random over the image, denser
# towards its centre: each is the sigmoid of a random linear function of a random
# vector. Training moves them to where objects tend to be; a query's point is where it
# starts looking, not what it finds.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
points_px = reference_points.detach().cpu() * torch.tensor([image_size[1], image_size[0]])
axes[0].imshow(image)
axes[0].scatter(points_px[:, 0], points_px[:, 1], s=12, c="yellow", edgecolors="k")
axes[0].set_title("100 learned reference points")
axes[1].imshow(image)
plain_boxes = box_ops.cxcywh_norm_to_xyxy(plain_outputs.boxes[0, 0, :10], image_size).cpu()
draw_rectangles(axes[1], plain_boxes, "yellow", linewidth=1.5)
axes[1].scatter(points_px[:10, 0], points_px[:10, 1], s=12, c="yellow", edgecolors="k")
axes[1].set_title("layer 0 boxes of queries 0 to 9 (untrained)")
for ax in axes:
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ### 1.2 Two stages: references from the encoder's best proposals
#
# The preset makes its queries from the image. After the encoder, each of the S
# tokens (all levels flattened) proposes a box: a square of side 0.05 × 2^level of the
# image at the token's own place (16, 32, 64 and 128 px at 320 px), moved by a box head
# and scored by an extra class head (`encoder_proposals`, then the heads after the
# decoder's). The Q proposals with the best score on class 0 become the queries'
# **reference boxes**, 4 numbers each; their sine embedding, a linear layer and a
# LayerNorm give each query its position and content halves. Nothing is learned per
# query: the queries differ from image to image.
#
# The forward pass does not return the queries, so a hook catches what the first
# decoder layer receives, and we make the same by hand.

# %%
captured = {}
hook = model.decoder[0].register_forward_pre_hook(
    lambda module, args: captured.update(query=args[0], query_pos=args[1])
)
with torch.no_grad():
    outputs = model(images)
hook.remove()

with torch.no_grad():
    head = num_layers  # the extra heads, after the decoder's
    output_memory, proposals = model.encoder_proposals(outputs.memory, outputs.spatial_shapes)
    enc_logits = model.cls_branches[head](output_memory)  # (B, S, C)
    enc_unact = model.reg_branches[head](output_memory) + proposals  # (B, S, 4) logit space
    top = enc_logits[..., 0].topk(num_queries, dim=1).indices  # (B, Q) token indices
    top_unact = enc_unact.gather(1, top[..., None].expand(-1, -1, 4))  # (B, Q, 4)
    reference_boxes = top_unact.sigmoid()  # (B, Q, 4) cxcywh in [0, 1]
    embedded = model.pos_trans_fc(proposal_position_embedding(top_unact, dims // 2))  # (B, Q, 2D)
    hand_pos, hand_query = model.pos_trans_norm(embedded).split(dims, dim=2)  # (B, Q, D) each
torch.testing.assert_close(enc_logits, outputs.enc_cls_logits)
torch.testing.assert_close(reference_boxes, outputs.references[0])
torch.testing.assert_close(hand_pos, captured["query_pos"])
torch.testing.assert_close(hand_query, captured["query"])
num_tokens = outputs.memory.shape[1]
print(f"S = {num_tokens} tokens, levels (H, W) {outputs.spatial_shapes.tolist()}")
print(f"valid proposals {int(torch.isfinite(proposals).all(-1).sum())} of {num_tokens}")
print(f"reference boxes {tuple(reference_boxes.shape)}, queries {tuple(hand_query.shape)}: "
      "equal to the model's")  # fmt: skip

# %% [markdown]
# A proposal whose cx, cy, w or h leaves (0.01, 0.99) is invalid (its box becomes
# infinite in logit space, its memory zero); at 320 px with four levels every proposal
# passes. Which levels
# the 100 chosen proposals come from, and the chosen boxes on the image (untrained: the
# encoder's class head scores at random; training teaches it to score "object here"):

# %%
level_sizes = outputs.spatial_shapes.prod(dim=1).tolist()  # tokens per level
level_starts = [sum(level_sizes[:level]) for level in range(len(level_sizes))]
top_level = torch.bucketize(top[0], torch.tensor(level_starts[1:], device=device), right=True)
pd.DataFrame(
    {
        "stride": [8, 16, 32, 64],
        "tokens": level_sizes,
        "first token": level_starts,
        "proposal side (px)": [0.05 * 2**level * image_size[1] for level in range(4)],
        "chosen": torch.bincount(top_level, minlength=4).tolist(),
    }
).rename_axis("level")

# %%
fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.imshow(image)
reference_px = box_ops.cxcywh_norm_to_xyxy(reference_boxes[0], image_size).cpu()
level_colours = ["tab:orange", "tab:cyan", "tab:pink", "yellow"]
for level, colour in enumerate(level_colours):
    draw_rectangles(ax, reference_px[top_level.cpu() == level], colour, linewidth=1)
    ax.plot([], [], color=colour, label=f"level {level}")
ax.legend(loc="lower right", fontsize=8)
ax.set_title("the 100 reference boxes (two stages, untrained)")
ax.set_axis_off()
plt.show()

# %% [markdown]
# ## 2. What every decoder layer outputs
#
# Both variants return a `DeformableDETROutputs`. Every decoder layer has its own
# prediction: the heads read the queries after each of the L = 3 layers.

# %%
described = {
    "cls_logits": "raw class scores of every layer",
    "boxes": "cxcywh in [0, 1] of every layer",
    "enc_cls_logits": "two stages: scores of the S proposals",
    "enc_boxes": "two stages: the S proposals, cxcywh in [0, 1]",
    "references": "the point or box each layer started from",
    "memory": "the encoder's output",
    "spatial_shapes": "(H, W) of each level",
}
rows = []
for field, meaning in described.items():
    preset_value, plain_value = getattr(outputs, field), getattr(plain_outputs, field)

    def shape(value):
        if value is None:
            return "None"
        if isinstance(value, list):
            return f"{len(value)} x {tuple(value[0].shape)}"
        return str(tuple(value.shape))

    rows.append({"field": field, "preset": shape(preset_value), "plain": shape(plain_value),
                 "meaning": meaning})  # fmt: skip
pd.DataFrame(rows).set_index("field")

# %% [markdown]
# With box refinement each layer has its own heads, and its boxes (detached from the
# gradient) are the next layer's references: `references[l + 1]` equals `boxes[l]`.
# The box = sigmoid(mlp + sigmoid⁻¹(reference)) of section 1.1 now moves all four
# numbers. Untrained, every box head's last layer is zero, so every layer returns its
# reference unchanged: the three layers' boxes are the chosen proposals themselves.
# The class heads start at a probability of 0.01 (bias −log 99), and the queries move
# them a little.

# %%
for layer in range(num_layers - 1):
    torch.testing.assert_close(outputs.references[layer + 1], outputs.boxes[layer])
torch.testing.assert_close(outputs.boxes[0], outputs.references[0])  # untrained: box = reference
assert outputs.boxes.min() >= 0 and outputs.boxes.max() <= 1
probabilities = outputs.cls_logits.sigmoid()  # (L, B, Q, C)
for layer in range(num_layers):
    p = probabilities[layer]
    print(f"layer {layer}: class probabilities mean {p.mean().item():.3g}, "
          f"from {p.min().item():.2g} to {p.max().item():.2g}")  # fmt: skip

# %% [markdown]
# The matching and the loss work in pixels and in normalised cxcywh; the last layer's
# boxes in xyxy pixels:

# %%
logits = outputs.cls_logits[-1, 0]  # (Q, C) the last layer, image 0
pred_boxes = box_ops.cxcywh_norm_to_xyxy(outputs.boxes[-1, 0], image_size)  # (Q, 4) xyxy px
print(f"logits {tuple(logits.shape)}, boxes {tuple(pred_boxes.shape)}; query 0: "
      f"cxcywh {[round(v, 4) for v in outputs.boxes[-1, 0, 0].tolist()]} -> "
      f"xyxy {[round(v, 1) for v in pred_boxes[0].tolist()]}")  # fmt: skip

# %% [markdown]
# ## 3. Three costs, three matrices
#
# Matching query q to box m (of class c) costs the sum of three weighted terms, each a
# `(Q, M)` matrix (`hungarian_costs`; weights of mmdet's Deformable DETR):
#
# - **class** (weight 2): with p = sigmoid(logit of class c),
#   α (1 − p)^γ (−log p) − (1 − α) p^γ (−log(1 − p)), α = 0.25, γ = 2: the focal loss
#   the query would pay for learning "c" minus the one it would pay for "not c". A
#   query confident in c costs little, even less than nothing.
# - **L1** (weight 5): |Δcx| + |Δcy| + |Δw| + |Δh| between the boxes in cxcywh divided
#   by the image's width and height.
# - **GIoU** (weight 2): −GIoU of the boxes in pixels, from −1 (the same box) to
#   almost +1 (far apart: GIoU still ranks boxes that do not overlap).
#
# The same three make the loss (notebook 62); the matching uses them only to choose.

# %%
costs = hungarian_costs(logits, pred_boxes, gt_boxes, gt_labels, image_size)
total = costs["cls"] + costs["l1"] + costs["giou"]  # (Q, M)
for name, matrix in [*costs.items(), ("total", total)]:
    print(f"{name:5s} {tuple(matrix.shape)}: from {matrix.min().item():.4g} "
          f"to {matrix.max().item():.4g}")  # fmt: skip

# %% [markdown]
# Each matrix as a heatmap, a box per row and a query per column. The L1 and GIoU costs
# draw the structure: a box is cheap for the queries whose reference boxes lie near
# and resemble it. The class cost of the untrained network changes from box to box
# (each row reads the logit of another class; the two hexagons, boxes 3 and 4, share
# theirs) but hardly from query to query, since every probability is still near 0.01:
# the boxes decide the first matchings of a training run, and the class cost starts to
# count as the queries learn classes. The circles mark the assignment section 4 finds.

# %%
result = assign_hungarian(logits, pred_boxes, gt_boxes, gt_labels, image_size)
matched_queries = result.positive.nonzero().squeeze(1)  # (M,) when M <= Q
fig, axes = plt.subplots(4, 1, figsize=(11, 7), sharex=True)
for ax, (name, matrix) in zip(axes, [*costs.items(), ("total", total)], strict=True):
    shown = ax.imshow(matrix.T.cpu(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.scatter(matched_queries.cpu(), result.gt_index[matched_queries].cpu(), s=60,
               facecolors="none", edgecolors="r")  # fmt: skip
    ax.set_ylabel(f"{name}\nbox m")
    ax.set_yticks(range(len(gt_boxes)))
    fig.colorbar(shown, ax=ax, pad=0.01)
axes[-1].set_xlabel("query q")
fig.suptitle("matching costs of val image 29, last decoder layer (untrained)")
plt.show()

# %% [markdown]
# ### 3.1 The class cost by hand
#
# The query that box 0 (the triangle, class 2) finds cheapest, its logit for class 2,
# and the cost from the formula:

# %%
alpha, gamma = config.focal_alpha, config.focal_gamma  # 0.25, 2
query = int(total[:, 0].argmin())
label = int(gt_labels[0])
logit = logits[query, label].item()
p = 1 / (1 + math.exp(-logit))
positive_term = alpha * (1 - p) ** gamma * -math.log(p)
negative_term = (1 - alpha) * p**gamma * -math.log(1 - p)
cls_by_hand = config.cls_weight * (positive_term - negative_term)
print(f"query {query}, class {label}: logit {logit:.4g}, p {p:.4g}")
print(f"alpha (1-p)^2 (-log p) = {positive_term:.4g}, (1-alpha) p^2 (-log(1-p)) = "
      f"{negative_term:.4g}")  # fmt: skip
print(f"2 x ({positive_term:.4g} - {negative_term:.4g}) = {cls_by_hand:.4g}; "
      f"hungarian_costs: {costs['cls'][query, 0].item():.4g}")  # fmt: skip
assert abs(cls_by_hand - costs["cls"][query, 0].item()) < 1e-4

# %% [markdown]
# As a function of p the class cost falls from large values (a query sure the object
# is *not* of class c) through zero to negative ones (a query sure it is). A plain
# −log p would do as well for the ranking; the focal form makes the cost the same
# quantity the class loss will pay, so the matching prefers the query that the loss
# finds cheapest to teach.

# %%
probs = torch.linspace(0.001, 0.999, 999)
curve = hungarian_costs(
    torch.logit(probs)[:, None], torch.zeros(999, 4), torch.zeros(1, 4), torch.tensor([0]),
    image_size,
)["cls"][:, 0]  # fmt: skip
zero_at = probs[(curve <= 0).nonzero()[0, 0]].item()
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(probs, curve)
ax.axhline(0, color="0.6", linewidth=0.8)
ax.scatter([0.01], [config.cls_weight * (alpha * 0.99**2 * -math.log(0.01)
                                          - (1 - alpha) * 0.01**2 * -math.log(0.99))],
           color="tab:red", zorder=3, label="p = 0.01 (untrained)")  # fmt: skip
ax.set_xlabel("p = sigmoid(logit of the box's class)")
ax.set_ylabel("class cost (weight 2)")
ax.set_title(f"focal class cost; zero near p = {zero_at:.2f}")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. The optimal one-to-one assignment
#
# The matching chooses, for each box, a different query, so that the sum of the chosen
# costs is least: a *linear sum assignment* problem. Kuhn's Hungarian method (1955)
# solves it in polynomial time; `scipy.optimize.linear_sum_assignment`, which
# `assign_hungarian` calls, uses a modified Jonker–Volgenant algorithm, a
# shortest-augmenting-path method (Crouse, 2016): the same optimum, and it accepts
# rectangular matrices: with Q > M, M queries get a box and Q − M none.

# %%
matched = result.gt_index[matched_queries]  # (M,) the box of each matched query
pd.DataFrame(
    {
        "box": matched.tolist(),
        "class": [CLASS_NAMES[label] for label in result.labels[matched_queries].tolist()],
        "query": matched_queries.tolist(),
        "cls": costs["cls"][matched_queries, matched].tolist(),
        "l1": costs["l1"][matched_queries, matched].tolist(),
        "giou": costs["giou"][matched_queries, matched].tolist(),
        "total": total[matched_queries, matched].tolist(),
        "IoU": result.iou[matched_queries].tolist(),
    }
).sort_values("box").set_index("box").pipe(significant, 4)

# %%
optimal_total = total[matched_queries, matched].sum().item()
print(f"{result.num_positive} matched queries, total cost {optimal_total:.4g}; "
      f"the other {num_queries - result.num_positive} learn 'no object'")  # fmt: skip

# %% [markdown]
# ### 4.1 Greedy is not enough
#
# A simpler rule: take the boxes in turn, and give each the cheapest query still free.
# On this image it happens to agree with the optimum (the boxes are far apart and the
# queries many):


# %%
def greedy_assign(cost):
    """Each box (column) in turn takes its cheapest free query (row): -> rows (M,)."""
    taken, rows = set(), []
    for column in range(cost.shape[1]):
        order = torch.argsort(cost[:, column], stable=True).tolist()
        row = next(r for r in order if r not in taken)
        taken.add(row)
        rows.append(row)
    return torch.tensor(rows)


greedy_rows = greedy_assign(total)
greedy_total = total[greedy_rows, torch.arange(len(gt_boxes))].sum().item()
print(f"greedy total {greedy_total:.4g}, optimal total {optimal_total:.4g}")

# %% [markdown]
# It fails when two boxes want the same query. Two 80-px boxes side by side, and three
# queries: query 0 straddles both (a bit nearer box 0), query 1 sits below box 0,
# query 2 far away; all three equally unsure of the class.

# %%
toy_gt = torch.tensor([[40.0, 40, 120, 120], [120, 40, 200, 120]], device=device)  # (2, 4)
toy_labels = torch.tensor([0, 1], device=device)
toy_queries = torch.tensor(
    [[70.0, 40, 150, 120], [30, 70, 110, 150], [220, 200, 300, 280]], device=device
)  # (3, 4)
toy_logits = torch.full((3, len(CLASS_NAMES)), -4.6, device=device)  # p = 0.01 everywhere
toy_costs = hungarian_costs(toy_logits, toy_queries, toy_gt, toy_labels, image_size)
toy_total = toy_costs["cls"] + toy_costs["l1"] + toy_costs["giou"]  # (3, 2)
toy_greedy = greedy_assign(toy_total)
toy_result = assign_hungarian(toy_logits, toy_queries, toy_gt, toy_labels, image_size)
toy_rows = torch.tensor([int((toy_result.gt_index == m).nonzero()) for m in range(2)])
pd.DataFrame(toy_total.cpu().numpy(), columns=["box 0", "box 1"]).rename_axis("query").pipe(
    significant, 4
)

# %%
columns = torch.arange(2)
print(f"greedy : box 0 <- query {toy_greedy[0].item()}, box 1 <- query {toy_greedy[1].item()}, "
      f"total {toy_total[toy_greedy, columns].sum().item():.4g}")  # fmt: skip
print(f"optimal: box 0 <- query {toy_rows[0].item()}, box 1 <- query {toy_rows[1].item()}, "
      f"total {toy_total[toy_rows, columns].sum().item():.4g}")  # fmt: skip

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
for ax, rows_, title in [(axes[0], toy_greedy, "greedy"), (axes[1], toy_rows, "optimal")]:
    ax.set_xlim(0, 320)
    ax.set_ylim(300, 0)
    ax.set_aspect("equal")
    draw_rectangles(ax, toy_gt.cpu(), "k", linewidth=2.5)
    for q, colour in zip(range(3), ["tab:blue", "tab:orange", "tab:green"], strict=True):
        draw_rectangles(ax, toy_queries[q : q + 1].cpu(), colour, linewidth=1.5, linestyle="--")
        ax.text(*toy_queries[q, 2:].tolist(), f"q{q}", color=colour, ha="right", va="bottom")
    for m in range(2):
        q = rows_[m].item()
        ax.annotate("", xy=((toy_gt[m, :2] + toy_gt[m, 2:]) / 2).tolist(),
                    xytext=((toy_queries[q, :2] + toy_queries[q, 2:]) / 2).tolist(),
                    arrowprops={"arrowstyle": "->", "color": "r"})  # fmt: skip
    cost_sum = toy_total[rows_, columns].sum().item()
    ax.set_title(f"{title}: total {cost_sum:.3g}")
plt.show()

# %% [markdown]
# Greedy gives query 0 to box 0, its cheapest, and leaves box 1 only the poor queries 1
# and 2; the optimum gives query 0 to box 1 and box 0 the nearly as good query 1.
#
# ### 4.2 Brute force agrees
#
# With Q queries and M boxes there are Q! / (Q − M)! one-to-one assignments. Trying
# all of them is fine for the toy (6), and for 7 queries and the 5 boxes of our image
# (2520); for the real 100 × 5 matrix it would be 9 × 10⁹, and for mmdet's 300 queries
# and an image with 20 boxes beyond counting.


# %%
def brute_force_total(cost):
    """The least total cost over every one-to-one assignment of the M columns to rows."""
    num_rows, num_columns = cost.shape
    return min(
        sum(cost[row, column].item() for column, row in enumerate(rows))
        for rows in itertools.permutations(range(num_rows), num_columns)
    )


rows_, cols_ = linear_sum_assignment(toy_total.cpu().numpy())
print(f"toy: brute force {brute_force_total(toy_total):.4g}, "
      f"linear_sum_assignment {toy_total[rows_, cols_].sum().item():.4g}")  # fmt: skip
others = [q for q in range(num_queries) if q not in matched_queries.tolist()][:2]
subset = torch.cat([matched_queries, torch.tensor(others, device=device)])  # 7 queries
sub_total = total[subset]  # (7, 5)
rows_, cols_ = linear_sum_assignment(sub_total.cpu().numpy())
print(f"7 x 5: {math.perm(7, 5)} assignments, brute force {brute_force_total(sub_total):.4g}, "
      f"linear_sum_assignment {sub_total[rows_, cols_].sum().item():.4g}")  # fmt: skip
print(f"100 x 5: {math.perm(100, 5):.3g} assignments")

# %% [markdown]
# ## 5. One query per object: why there is no NMS
#
# After the matching, `set_targets` says what each query learns: the M matched queries
# a one-hot class and a box, the other Q − M an all-zero class target ("no object",
# for every class) and no box.

# %%
single = AssignResult(*(field[None] for field in result))  # fields (1, Q)
class_targets, box_targets, positive = set_targets(single, targets, len(CLASS_NAMES), image_size)
print(f"class targets {tuple(class_targets.shape)}: {int(class_targets.sum())} ones, in rows "
      f"{positive[0].nonzero().squeeze(1).tolist()}")  # fmt: skip
print(f"boxes learnt: {sorted(result.gt_index[result.positive].tolist())}, each once")

# %% [markdown]
# Compare ATSS, on NanoDet's 2100 grid cells of notebook 21, for the same five boxes:
# most boxes get several positives, and every positive learns the box's class. At test
# time a trained ATSS detector scores all of them high: NMS must remove the
# duplicates. (The triangle, cut by the image border, gets none: ATSS guarantees a box
# nothing, notebook 21's exercise 2; the matching gives every box a query as long as
# M ≤ Q.) Faster R-CNN's RPN does the same with every anchor above an
# IoU of 0.7 (notebook 50), and its RoI head again with every proposal above 0.5.

# %%
cells, num_per_level = grid_cells([(40, 40), (20, 20), (10, 10)], [8, 16, 32], device=device)
atss = assign_atss(cells, num_per_level, gt_boxes, gt_labels)
pd.DataFrame(
    {
        "class": [CLASS_NAMES[label] for label in gt_labels.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in sizes.tolist()],
        "ATSS positives": [int((atss.gt_index == m).sum()) for m in range(len(gt_boxes))],
        "Hungarian queries": [int((result.gt_index == m).sum()) for m in range(len(gt_boxes))],
    }
).rename_axis("box")

# %% [markdown]
# In a DETR two queries that predict the same object cannot both be rewarded: the
# matching gives the box to the cheaper one, and the class loss pushes the other
# towards "no object". The decoder's self-attention lets every query see what the
# others predict, so the queries can learn to split the objects among themselves.
#
# A small run shows the push: two queries with nearly the same box on one 80 × 100
# box, both at p = 0.5 for its class. Query 0's box fits a little better. Forty steps
# of gradient descent on their logits alone (boxes fixed), with the class term of
# `set_loss` and a new matching at every step:

# %%
dup_gt = torch.tensor([[100.0, 100, 180, 200]], device=device)
dup_labels = torch.tensor([2], device=device)
dup_targets = [{"boxes": dup_gt, "labels": dup_labels}]
dup_boxes = torch.tensor([[102.0, 98, 181, 203], [96, 104, 178, 196]], device=device)  # (2, 4)
dup_norm = box_ops.xyxy_to_cxcywh_norm(dup_boxes, image_size)[None]  # (1, 2, 4)
dup_logits = torch.zeros(2, len(CLASS_NAMES), device=device, requires_grad=True)
optimizer = torch.optim.SGD([dup_logits], lr=2.0)
history = []
for step in range(41):
    assigned = assign_hungarian(dup_logits.detach(), dup_boxes, dup_gt, dup_labels, image_size)
    batched = AssignResult(*(field[None] for field in assigned))
    loss = set_loss(dup_logits[None], dup_norm, batched, dup_targets, image_size)["cls"]
    if step % 10 == 0:
        scores = dup_logits[:, 2].detach().sigmoid().tolist()
        history.append({"step": step, "box 0 <- query": int(assigned.positive.nonzero()),
                        "p query 0": scores[0], "p query 1": scores[1],
                        "class loss": loss.item()})  # fmt: skip
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
pd.DataFrame(history).set_index("step").pipe(significant, 3)

# %% [markdown]
# Query 0 learns the triangle, query 1 learns to say nothing there: a trained DETR
# reports the object once. `predict` therefore takes the 100 best (query, class)
# pairs by score and stops; no NMS. Carion et al. measured it: NMS helps the
# predictions of DETR's first decoder layers, which still contain duplicates, and
# slightly hurts those of the last, where it removes true positives (their section 4.2).

# %%
detections = model.predict(outputs)[0]
print({name: tuple(value.shape) for name, value in detections.items()})

# %% [markdown]
# ## 6. A matching for every decoder layer
#
# Deformable DETR puts the set loss on every decoder layer's output (the *auxiliary*
# losses), and with two stages on the encoder's proposals. Each of these predictions is
# matched on its own: the same box may be learnt by one query at layer 0 and by
# another at layer 2. `model.assign(outputs, targets)` returns every layer's matching with
# fields `(L, B, Q)`, and the encoder's with fields `(B, S)`.

# %%
assignment = model.assign(outputs, targets)
print(f"layers: gt_index {tuple(assignment.layers.gt_index.shape)}, "
      f"encoder: gt_index {tuple(assignment.encoder.gt_index.shape)}")  # fmt: skip
torch.testing.assert_close(assignment.layers.gt_index[-1, 0], result.gt_index)


def queries_per_layer(layer_assignment):
    """Box -> matched query, a row per box and a column per layer (image 0)."""
    gt_index = layer_assignment.gt_index[:, 0]  # (L, Q)
    return pd.DataFrame(
        {
            f"layer {layer}": [int((gt_index[layer] == m).nonzero()) for m in range(len(gt_boxes))]
            for layer in range(gt_index.shape[0])
        }
    ).rename_axis("box")


def changed_between_layers(layer_assignment):
    """For each pair of consecutive layers: the queries whose box (or none) changes."""
    gt_index = layer_assignment.gt_index[:, 0]  # (L, Q)
    changed = gt_index[1:] != gt_index[:-1]  # (L - 1, Q)
    return changed.sum(dim=1).tolist()


queries_per_layer(assignment.layers)

# %% [markdown]
# Untrained, every layer returns its reference box (section 2), and the references
# are the same proposals: the three matchings agree, and no query changes its box
# between layers:

# %%
print("queries that change their box, layer 0 -> 1 and 1 -> 2:",
      changed_between_layers(assignment.layers))  # fmt: skip

# %% [markdown]
# As soon as the box heads have learnt something, each layer moves the boxes, and the
# cheapest queries change. As a stand-in for a network part-way through training, a
# copy of the model gets small random weights in the last layer of each decoder
# layer's box head (standard deviation 0.05, where the untrained model has zeros):

# %%
torch.manual_seed(0)
moved = copy.deepcopy(model)
for branch in moved.reg_branches[:num_layers]:
    nn.init.normal_(branch[-1].weight, std=0.05)
with torch.no_grad():
    moved_outputs = moved(images)
moved_assignment = moved.assign(moved_outputs, targets)
shift = (moved_outputs.boxes - outputs.boxes).abs().mean(dim=(1, 2, 3)) * image_size[1]
print("mean change of a box coordinate per layer (px):", [f"{v:.3g}" for v in shift.tolist()])
print("queries that change their box, layer 0 -> 1 and 1 -> 2:",
      changed_between_layers(moved_assignment.layers))  # fmt: skip
queries_per_layer(moved_assignment.layers)

# %% [markdown]
# A query "changes its box" when it is matched at one layer and not at the next, or
# the other way round, or matched to another box: two queries for each box that
# moves to a new query. The loss of layer l uses layer l's matching only
# (`loss_terms`: `d0.cls`, `d0.l1`, `d0.giou` for layer 0, `d1.*`, then `cls`, `l1`,
# `giou` for the last layer, and `enc.*` for the proposals):

# %%
print(list(moved.loss_terms(moved_outputs, targets, moved_assignment)))

# %% [markdown]
# ### 6.1 The encoder's proposals: class-agnostic
#
# The S = 2125 proposals are matched to the same five boxes with every label set to
# class 0: the encoder's class head learns only "object here", the score that chooses
# the reference boxes (section 1.2). Five of the 2125 tokens learn a box:

# %%
encoder_tokens = assignment.encoder.positive[0].nonzero().squeeze(1)  # (M,)
enc_px = box_ops.cxcywh_norm_to_xyxy(outputs.enc_boxes[0, encoder_tokens], image_size)
token_level = torch.bucketize(
    encoder_tokens, torch.tensor(level_starts[1:], device=device), right=True
)  # fmt: skip
rows = []
for token, level in zip(encoder_tokens.tolist(), token_level.tolist(), strict=True):
    width = outputs.spatial_shapes[level, 1].item()
    local = token - level_starts[level]
    rows.append({"token": token, "level": level, "(y, x)": (local // width, local % width),
                 "box": assignment.encoder.gt_index[0, token].item(),
                 "label learnt": assignment.encoder.labels[0, token].item(),
                 "IoU": assignment.encoder.iou[0, token].item()})  # fmt: skip
pd.DataFrame(rows).set_index("token").pipe(significant, 3)

# %%
ax = draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=CLASS_NAMES)
draw_rectangles(ax, enc_px.cpu(), "yellow", linewidth=2, linestyle="--")
ax.set_title("matched encoder proposals (dashed) and their boxes")
plt.show()

# %% [markdown]
# ### 6.2 Edge cases
#
# **No box.** Every query of every layer, and every proposal, learns "no object"; the
# class loss still teaches the whole image to be background, divided by 1 (the number
# of matched queries, at least 1), and the box losses are zero.

# %%
empty_targets = [{"boxes": torch.zeros(0, 4, device=device),
                  "labels": torch.zeros(0, dtype=torch.long, device=device)}]  # fmt: skip
empty = model.assign(outputs, empty_targets)
assert (empty.layers.gt_index == BACKGROUND).all() and (empty.encoder.gt_index == BACKGROUND).all()
empty_losses = model.loss(outputs, empty_targets, empty)
print({name: f"{value.item():.4g}" for name, value in empty_losses.items()})

# %% [markdown]
# **More boxes than queries.** With Q < M only Q boxes get a query; the other M − Q
# are left out of the loss, as in mmdet, and the loss divides by the Q matched queries.
# A detector must have more queries than the objects of its busiest image (mmdet: 300
# for COCO). Three queries and our five boxes:

# %%
few = assign_hungarian(logits[:3], pred_boxes[:3], gt_boxes, gt_labels, image_size)
learnt = few.gt_index[few.positive].tolist()
print(f"matched queries {few.num_positive}; boxes learnt {sorted(learnt)}, "
      f"left out {sorted(set(range(len(gt_boxes))) - set(learnt))}")  # fmt: skip

# %% [markdown]
# **No query.** Nothing to match: an empty result (a detector with Q = 0 predicts
# nothing, and the loss has nothing to teach).

# %%
none = assign_hungarian(
    logits[:0], pred_boxes[:0], gt_boxes, gt_labels, image_size
)  # fmt: skip
print({name: tuple(value.shape) for name, value in none._asdict().items()})

# %% [markdown]
# ## Recap
#
# - A Deformable DETR query is a position half and a content half (D each). Without
#   two stages both are learned, the same for every image, and the reference point is
#   sigmoid(linear(position)); with two stages the Q best-scoring encoder proposals are
#   the reference boxes and their sine embedding makes the queries.
# - Every decoder layer predicts: class logits `(L, B, Q, C)`, boxes `(L, B, Q, 4)`
#   cxcywh in [0, 1], box = sigmoid(mlp + sigmoid⁻¹(reference)); with box refinement
#   each layer's boxes are the next layer's references.
# - Matching cost = 2 × focal class cost + 5 × L1 (normalised cxcywh) + 2 × (−GIoU),
#   a `(Q, M)` matrix per image; the assignment of least total cost gives each box one
#   query (`linear_sum_assignment`). Greedy choices can cost more; brute force agrees
#   with the optimum but grows as Q! / (Q − M)!.
# - One query per box, every other query "no object": duplicates are trained away by
#   the class loss, so prediction takes the top 100 (query, class) pairs, no NMS;
#   ATSS and Faster R-CNN give a box many positives and need NMS.
# - Every decoder layer, and the encoder's class-agnostic proposals, is matched on its
#   own. No box: all background. M > Q: Q boxes learnt, the rest left out. Q = 0:
#   nothing.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** The box costs of one pair by hand. On an image 480 px wide and
# 320 px high, a query predicts `pair_pred` = (40, 60, 140, 120) and the box is
# `pair_gt` = (50, 50, 150, 130), both xyxy px. Compute by hand (Python arithmetic,
# no `detutils`) the weighted L1 cost `l1_by_hand` (weight 5, on cxcywh with x and w
# divided by the width, y and h by the height) and the weighted GIoU cost
# `giou_by_hand` (weight 2, minus the GIoU).

# %% tags=["solution"]
pair_pred = torch.tensor([[40.0, 60, 140, 120]])  # (1, 4) xyxy px
pair_gt = torch.tensor([[50.0, 50, 150, 130]])  # (1, 4) xyxy px
pair_size = (320, 480)  # (H, W)
l1_by_hand = None  # a number: 5 x L1 distance of the normalised cxcywh boxes
giou_by_hand = None  # a number: 2 x (-GIoU)
### BEGIN SOLUTION
# cxcywh: pred (90, 90, 100, 60), box (100, 90, 100, 80)
l1_by_hand = 5 * (abs(90 - 100) / 480 + abs(90 - 90) / 320 + 0 / 480 + abs(60 - 80) / 320)
intersection = (140 - 50) * (120 - 60)  # 90 x 60
union = 100 * 60 + 100 * 80 - intersection
enclosing = (150 - 40) * (130 - 50)  # 110 x 80
giou = intersection / union - (enclosing - union) / enclosing
giou_by_hand = -2 * giou
print(f"l1 {l1_by_hand:.4f}, giou {giou_by_hand:.4f}")
### END SOLUTION

# %% tags=["check"]
pair_costs = hungarian_costs(
    torch.zeros(1, 1), pair_pred, pair_gt, torch.tensor([0]), pair_size
)  # fmt: skip
check_close(
    "l1_by_hand", l1_by_hand, 5 * (10 / 480 + 20 / 320),
    hint="cxcywh: (90, 90, 100, 60) and (100, 90, 100, 80); |dcx| = 10 over the width 480, "
    "|dh| = 20 over the height 320; sum the four, times 5.",
)  # fmt: skip
check_close(
    "giou_by_hand", giou_by_hand, pair_costs["giou"][0, 0], rtol=1e-4,
    hint="intersection 90 x 60, union 6000 + 8000 - 5400, enclosing box 110 x 80; "
    "GIoU = IoU - (enclosing - union) / enclosing; the cost is -2 x GIoU.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "l1_by_hand", l1_by_hand, pair_costs["l1"][0, 0],
    hint="the L1 cost of hungarian_costs for this pair",
)  # fmt: skip
check_close(
    "giou_by_hand", giou_by_hand, -2 * (5400 / 8600 - 200 / 8800),
    hint="IoU 5400 / 8600, enclosing 8800",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The focal class cost. Write `class_cost(logit)`: the weighted class
# cost (weight 2, α = 0.25, γ = 2) of a query whose raw score for the box's class is
# `logit` (a float), as a float, from the formula of section 3 (use `math`, not
# `hungarian_costs`). Then assign `prior_cost`, the cost of an untrained query, whose
# logit is −log(99) (p = 0.01).

# %% tags=["solution"]
class_cost = None  # your function (logit: float) -> float
prior_cost = None  # a number
### BEGIN SOLUTION


def class_cost(logit):
    p = 1 / (1 + math.exp(-logit))
    positive = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-12)
    negative = 0.75 * p**2 * -math.log(1 - p + 1e-12)
    return 2 * (positive - negative)


prior_cost = class_cost(-math.log(99))
print(f"prior cost {prior_cost:.4f}")
### END SOLUTION

# %% tags=["check"]


def reference_class_cost(logit):
    one_box = torch.zeros(1, 4)
    cost = hungarian_costs(torch.tensor([[float(logit)]]), one_box, one_box, torch.tensor([0]),
                           (320, 320))["cls"]  # fmt: skip
    return cost[0, 0].item()


check_function(
    "class_cost", class_cost, [(0.0,), (-2.0,), (3.0,)], reference_class_cost, rtol=1e-4,
    hint="p = 1 / (1 + exp(-logit)); 2 x (0.25 (1 - p)^2 (-log p) - 0.75 p^2 (-log(1 - p))). "
    "At logit 0, p = 0.5: 2 x (0.0625 - 0.1875) x log 2.",
)  # fmt: skip
check_close(
    "prior_cost", prior_cost,
    2 * (0.25 * 0.99**2 * math.log(100) - 0.75 * 0.01**2 * math.log(1 / 0.99)),
    hint="p = 0.01: 2 x (0.25 x 0.99^2 x log 100 - 0.75 x 0.01^2 x (-log 0.99)).",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "class_cost", class_cost, [(-6.0,), (6.0,), (0.5,)], reference_class_cost, rtol=1e-3,
    atol=1e-5, hint="the same formula for very unsure and very sure queries",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Brute force. Write `brute_force(cost)`: for a cost matrix `(Q, M)`
# (a tensor, Q ≥ M), the least total cost over every one-to-one assignment of the M
# boxes (columns) to different queries (rows), as a float (`itertools.permutations`).
# For `small_cost` below, assign `best_rows`, a list of the query of each box in the
# optimal assignment, and `small_greedy_total`, the total cost of `greedy_assign` of
# section 4.1 on it.

# %% tags=["solution"]
small_cost = torch.tensor([[1.0, 2.0, 9.0], [3.0, 8.0, 9.0], [9.0, 9.0, 1.0]])  # (Q, M) = (3, 3)
brute_force = None  # your function (cost (Q, M)) -> float
best_rows = None  # list of M ints: the query of box 0, 1, 2
small_greedy_total = None  # a number
### BEGIN SOLUTION


def brute_force(cost):
    best = math.inf
    for rows in itertools.permutations(range(cost.shape[0]), cost.shape[1]):
        best = min(best, sum(cost[row, column].item() for column, row in enumerate(rows)))
    return best


best_rows = list(
    min(
        itertools.permutations(range(3), 3),
        key=lambda rows: sum(small_cost[row, column].item() for column, row in enumerate(rows)),
    )
)
small_greedy = greedy_assign(small_cost)
small_greedy_total = small_cost[small_greedy, torch.arange(3)].sum().item()
print(f"optimal {brute_force(small_cost)} with rows {best_rows}; greedy {small_greedy_total}")
### END SOLUTION

# %% tags=["check"]


def reference_total(cost):
    rows, cols = linear_sum_assignment(cost.numpy())
    return float(cost.numpy()[rows, cols].sum())


check_function(
    "brute_force", brute_force, [(small_cost,)], reference_total,
    hint="for rows in itertools.permutations(range(Q), M): box m goes to query rows[m]; sum "
    "cost[rows[m], m] and keep the least sum.",
)  # fmt: skip
check_equal(
    "best_rows", list(best_rows) if isinstance(best_rows, tuple) else best_rows, [1, 0, 2],
    hint="box 0 <- query 1 (3), box 1 <- query 0 (2), box 2 <- query 2 (1): total 6.",
)  # fmt: skip
check_close(
    "small_greedy_total", small_greedy_total, 10.0,
    hint="box 0 takes query 0 (1), box 1 is left queries 1 and 2 (8 or 9), box 2 query 2 (1).",
)  # fmt: skip
### BEGIN HIDDEN TESTS
rectangular = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [0.5, 7.0, 1.0]])
check_function(
    "brute_force", brute_force, [(rectangular,), (rectangular[:, :2],)], reference_total,
    hint="more queries than boxes: permutations(range(Q), M)",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** More boxes than queries. Validation image 5 holds 12 boxes. Match
# them to the first 10 queries of the last decoder layer (`many_logits`,
# `many_pred` below, the untrained network of this notebook) with
# `assign_hungarian`, and assign `num_matched` (an int), `unmatched_boxes` (a sorted
# list of the box indices no query learns) and `loss_divisor`, the number the set
# loss divides by for this image (an int).

# %% tags=["solution"]
_, many_boxes, many_labels = load_sample(5)
many_boxes, many_labels = many_boxes.to(device), many_labels.to(device)  # (12, 4), (12,)
many_logits, many_pred = logits[:10], pred_boxes[:10]  # (10, C), (10, 4) xyxy px
num_matched = None  # int
unmatched_boxes = None  # sorted list of ints
loss_divisor = None  # int
### BEGIN SOLUTION
many = assign_hungarian(many_logits, many_pred, many_boxes, many_labels, image_size)
num_matched = many.num_positive  # min(Q, M) = 10
unmatched_boxes = sorted(set(range(len(many_boxes))) - set(many.gt_index[many.positive].tolist()))
loss_divisor = num_matched  # the matched queries, not the boxes
print(num_matched, unmatched_boxes, loss_divisor)
### END SOLUTION

# %% tags=["check"]
check_equal(
    "num_matched", num_matched, 10,
    hint="one query per box and one box per query: min(Q, M) = min(10, 12).",
)  # fmt: skip
reference_many = assign_hungarian(many_logits, many_pred, many_boxes, many_labels, image_size)
learnt_boxes = set(reference_many.gt_index[reference_many.positive].tolist())
check_equal(
    "unmatched_boxes", unmatched_boxes, sorted(set(range(12)) - learnt_boxes),
    hint="the boxes 0 .. 11 that appear nowhere in result.gt_index[result.positive], "
    "sorted in a list.",
)  # fmt: skip
check_equal(
    "loss_divisor", loss_divisor, 10,
    hint="set_loss divides by the matched queries of the batch (at least 1), not by the "
    "boxes of the image.",
)  # fmt: skip
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - N. Carion et al., *End-to-End Object Detection with Transformers*, ECCV 2020,
#   <https://arxiv.org/abs/2005.12872> (section 3.1, the set prediction loss and the
#   matching; section 4.2 on NMS and the decoder layers)
# - H. W. Kuhn, *The Hungarian Method for the Assignment Problem*, Naval Research
#   Logistics Quarterly 2, 1955, <https://doi.org/10.1002/nav.3800020109>
# - X. Zhu et al., *Deformable DETR: Deformable Transformers for End-to-End Object
#   Detection*, ICLR 2021, <https://arxiv.org/abs/2010.04159> (sections 4.1 and 4.2:
#   reference points, iterative box refinement, two stages)
# - D. F. Crouse, *On Implementing 2D Rectangular Assignment Algorithms*, IEEE
#   Transactions on Aerospace and Electronic Systems 52(4), 2016 (the algorithm of
#   `scipy.optimize.linear_sum_assignment`)
# - mmdet `HungarianAssigner` and its match costs
#   (`mmdet/models/task_modules/assigners/hungarian_assigner.py`, `match_cost.py`),
#   <https://github.com/open-mmlab/mmdetection>
