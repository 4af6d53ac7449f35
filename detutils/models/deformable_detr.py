"""Deformable DETR: ResNet, a channel mapper, a deformable transformer, a set of queries.

::

    model = build_deformable_detr_r50(num_classes=80)
    outputs = model(images)        # per decoder layer: logits (L, B, Q, C), boxes (L, B, Q, 4)
    assignment = model.assign(outputs, targets)       # Hungarian, every layer on its own
    losses = model.loss(outputs, targets, assignment) # {"cls", "l1", "giou", "aux", "loss"}
    dets = model.predict(outputs)  # the 100 best (query, class) pairs per image, no NMS

1. **Backbone and channel mapper.** ResNet C3 to C5 (strides 8, 16, 32), each brought
   to ``embed_dims`` (256) by a 1x1 conv and GroupNorm(32); a fourth level (stride 64)
   is a stride-2 3x3 conv of C5 with GroupNorm. No activation.
2. **Flattening.** Each level's map becomes H_l W_l tokens (row-major), levels one after
   the other: S tokens of ``embed_dims``. Each token's position embedding is a sine
   embedding of its (x, y) in the level (128 frequencies for y, then 128 for x) plus a
   learned embedding of its level.
3. **Encoder** (6 layers): deformable self-attention (each token samples 4 points per
   head in each of the 4 levels around its own position), then a feed-forward network
   (256 -> 1024 -> 256); each followed by a residual and LayerNorm. Output: the memory
   (B, S, 256).
4. **Queries.** 300 learned queries, each a content vector and a position vector; a
   linear layer of the position gives the query's reference point (x, y) in [0, 1].
   With two stages, every memory token instead proposes a box (a small box at its own
   place, refined by a box head) and scores it; the 300 best proposals become the
   reference boxes, and the queries are made from their position embedding.
5. **Decoder** (6 layers): self-attention among the queries, deformable cross-attention
   into the memory around each reference, feed-forward; each with a residual and
   LayerNorm. After every layer a class head (a linear layer) and a box head (3-layer
   MLP) read the queries: box = sigmoid(MLP output + inverse sigmoid of the reference).
   With box refinement each layer's box becomes the next layer's reference (detached),
   and every layer has its own heads; otherwise the heads are shared and the reference
   stays.

Two options of DINO that Co-DETR's base uses (``detutils.models.co_detr``):
``mixed_selection`` (two stages: the queries' positions from the best proposals, their
content a learned embedding of (Q, D)) and ``look_forward_twice`` (with box refinement:
a layer's boxes refine the previous layer's boxes before the detach, so that its loss
also trains the previous layer's box head; the values do not change).

Input: images (B, 3, H, W) RGB in [0, 1], H and W multiples of 64 (four levels down to
stride 64); all images of a batch the same size (the course letterboxes), so no padding
masks. The model normalises with the ImageNet mean and standard deviation, as ATSS.

Parameters at 80 classes: ``build_deformable_detr_r50`` 40,118,934 (mmdet's
``deformable-detr_r50_16xb2-50e_coco``), ``build_deformable_detr_r50_refine_two_stage``
41,213,836 (``deformable-detr-refine-twostage_r50_16xb2-50e_coco``).

Reference: mmdet 3.3 ``DeformableDETR`` (``mmdet/models/detectors/deformable_detr.py``),
``DeformableDetrTransformerEncoder/Decoder`` (``models/layers/transformer/``),
``DeformableDETRHead``; fundamentalvision/Deformable-DETR ``models/deformable_detr.py``,
``models/deformable_transformer.py``; Zhu et al., "Deformable DETR: Deformable
Transformers for End-to-End Object Detection", ICLR 2021.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detutils.assigners.hungarian import assign_hungarian_batched
from detutils.assigners.result import AssignResult
from detutils.boxes import cxcywh_norm_to_xyxy
from detutils.losses.detr import set_loss
from detutils.models.backbones import CPU_PRESET_BACKBONE, ResNetBackbone
from detutils.models.deformable_attention import MultiScaleDeformableAttention
from detutils.models.inputs import check_images

__all__ = [
    "ChannelMapper",
    "DeformableDETR",
    "DeformableDETRAssignment",
    "DeformableDETRConfig",
    "DeformableDETROutputs",
    "apply_box_deltas",
    "build_deformable_detr_r18half_d128",
    "build_deformable_detr_r50",
    "build_deformable_detr_r50_refine_two_stage",
    "cpu_preset_config",
    "encoder_reference_points",
    "inverse_sigmoid",
    "proposal_position_embedding",
    "sine_position_embedding",
]


class DeformableDETROutputs(NamedTuple):
    """What ``DeformableDETR.forward`` returns (the same in training and eval mode)."""

    cls_logits: Tensor  # (L, B, Q, C) raw class scores of every decoder layer
    boxes: Tensor  # (L, B, Q, 4) cxcywh in [0, 1] of every decoder layer
    enc_cls_logits: Tensor | None  # two stages: (B, S, C) scores of the encoder's proposals
    enc_boxes: Tensor | None  # two stages: (B, S, 4) cxcywh in [0, 1], the proposals
    references: list[Tensor]  # L: (B, Q, 2) points or (B, Q, 4) boxes each layer started from
    memory: Tensor  # (B, S, D) the encoder's output
    spatial_shapes: Tensor  # (num_levels, 2) long, (H_l, W_l) of each level


class DeformableDETRAssignment(NamedTuple):
    """What ``DeformableDETR.assign`` returns: each decoder layer's matching, and the
    encoder's (two stages)."""

    layers: AssignResult  # fields (L, B, Q)
    encoder: AssignResult | None  # fields (B, S): the proposals matched class-agnostically


@dataclass(frozen=True)
class DeformableDETRConfig:
    """Everything that defines a Deformable DETR; the defaults are mmdet's R50 model."""

    name: str = "deformable-detr-r50"  # command-line name
    num_classes: int = 80  # C
    img_size: int = 640  # side of the square network input for the schedules, px
    depth: int = 50  # ResNet depth
    backbone_width: int = 64  # channels of the ResNet's first stage (64: torchvision's)
    frozen_stages: int = 1  # stem and stage 2 frozen (mmdet: 1)
    norm_eval: bool = True  # backbone batch norms keep their running statistics
    pretrained: str | None = "torchvision:ResNet50_Weights.IMAGENET1K_V1"  # see ``DeformableDETR``
    embed_dims: int = 256  # D: width of tokens and queries
    norm_groups: int = 32  # GroupNorm groups of the channel mapper
    num_levels: int = 4  # C3, C4, C5 and one stride-2 conv of C5
    num_heads: int = 8  # attention heads
    num_points: int = 4  # samples per head and level in deformable attention
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    ffn_dims: int = 1024  # hidden width of the feed-forward networks
    dropout: float = 0.1  # attention and feed-forward dropout
    num_queries: int = 300  # Q
    with_box_refine: bool = False  # each layer's boxes are the next layer's references
    as_two_stage: bool = False  # references from the encoder's best proposals
    mixed_selection: bool = False  # two stages: positions from the proposals, content learned
    look_forward_twice: bool = False  # a layer's box loss also trains the layer before
    num_reg_fcs: int = 2  # hidden layers of the box MLP
    cls_weight: float = 2.0  # focal loss weight (and class cost of the matching)
    l1_weight: float = 5.0  # L1 loss weight (and L1 cost)
    giou_weight: float = 2.0  # GIoU loss weight (and GIoU cost)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01  # initial class probability of every query
    temperature: float = 10000.0  # of the sine position embeddings
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, images in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)), with x clamped to [0, 1] and both parts to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def apply_box_deltas(deltas: Tensor, reference: Tensor) -> Tensor:
    """A box head's output (..., 4) on references (..., 4) boxes or (..., 2) points ->
    boxes (..., 4) cxcywh in [0, 1]: sigmoid(deltas + inverse sigmoid of the reference),
    a point moving only the centre."""
    if reference.shape[-1] == 4:
        return (deltas + inverse_sigmoid(reference)).sigmoid()
    centre = deltas[..., :2] + inverse_sigmoid(reference)
    return torch.cat((centre, deltas[..., 2:]), -1).sigmoid()


def sine_position_embedding(
    height: int,
    width: int,
    num_feats: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The sine embedding of every position of an H x W map -> (2 num_feats, H, W).

    Position (y, x) is normalised as ((y + 1) - 0.5) / H x 2 pi (the pixel's centre, in
    [0, 2 pi]); frequency i of ``num_feats`` is ``temperature ** (2 floor(i / 2) /
    num_feats)``; even features are sines, odd ones cosines; y's features come first.

    Reference: mmdet ``SinePositionalEncoding(normalize=True, offset=-0.5)``.
    """
    scale, eps = 2 * math.pi, 1e-6
    y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y_embed = (y_embed - 0.5) / (height + eps) * scale
    x_embed = (x_embed - 0.5) / (width + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_y = y_embed[:, None] / dim_t  # [H, F]
    pos_x = x_embed[:, None] / dim_t  # [W, F]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)),
        dim=2,
    )  # [H, W, 2F]
    return pos.permute(2, 0, 1)


def encoder_reference_points(spatial_shapes: Tensor, num_levels: int) -> Tensor:
    """Each token's own centre, (x, y) in [0, 1]: ((x + 0.5) / W_l, (y + 0.5) / H_l),
    repeated for the ``num_levels`` levels it samples -> (S, num_levels, 2).

    Reference: mmdet ``DeformableDetrTransformerEncoder.get_encoder_reference_points``
    (without padding: every valid ratio is 1).
    """
    points = []
    for height, width in spatial_shapes.tolist():
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, device=spatial_shapes.device) / height,
            torch.linspace(0.5, width - 0.5, width, device=spatial_shapes.device) / width,
            indexing="ij",
        )
        points.append(torch.stack((ref_x.flatten(), ref_y.flatten()), -1))
    return torch.cat(points)[:, None, :].expand(-1, num_levels, -1)


def proposal_position_embedding(
    proposals: Tensor, num_feats: int = 128, temperature: float = 10000.0
) -> Tensor:
    """Sine embedding of boxes given as inverse-sigmoid cxcywh -> (..., 4 num_feats).

    Reference: mmdet ``DeformableDETR.get_proposal_pos_embed``.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = proposals.sigmoid()[..., None] * (2 * math.pi) / dim_t  # [..., 4, F]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-3)


class ChannelMapper(nn.Module):
    """1x1 conv + GroupNorm per input level to ``out_channels``, then extra levels each a
    stride-2 3x3 conv + GroupNorm (the first on the last input, the next on the previous
    output). No activation; convs Xavier-uniform without bias.

    Reference: mmdet ``ChannelMapper`` (``mmdet/models/necks/channel_mapper.py``) with
    ``kernel_size=1``, ``norm_cfg=GN(32)``, ``act_cfg=None``.
    """

    def __init__(
        self, in_channels: tuple[int, ...], out_channels: int, num_outs: int, norm_groups: int = 32
    ) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs {num_outs} < {len(in_channels)} inputs")

        def block(channels: int, kernel: int, stride: int) -> nn.Sequential:
            conv = nn.Conv2d(channels, out_channels, kernel, stride, kernel // 2, bias=False)
            nn.init.xavier_uniform_(conv.weight)
            return nn.Sequential(conv, nn.GroupNorm(norm_groups, out_channels))

        self.convs = nn.ModuleList(block(channels, 1, 1) for channels in in_channels)
        extra_inputs = [in_channels[-1]] + [out_channels] * (num_outs - len(in_channels) - 1)
        self.extra_convs = nn.ModuleList(
            block(channels, 3, 2) for channels in extra_inputs[: num_outs - len(in_channels)]
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        outputs = [conv(feature) for conv, feature in zip(self.convs, features, strict=True)]
        previous = features[-1]
        for conv in self.extra_convs:
            previous = conv(previous)
            outputs.append(previous)
        return outputs


class FFN(nn.Module):
    """Linear, ReLU, dropout, linear, dropout, plus the residual (mmcv's ``FFN``)."""

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dims, ffn_dims),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dims, embed_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class EncoderLayer(nn.Module):
    """Deformable self-attention, LayerNorm, FFN, LayerNorm (post-norm)."""

    def __init__(self, config: DeformableDETRConfig) -> None:
        super().__init__()
        dims = config.embed_dims
        self.self_attn = MultiScaleDeformableAttention(
            dims, config.num_heads, config.num_levels, config.num_points, config.dropout
        )
        self.ffn = FFN(dims, config.ffn_dims, config.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dims) for _ in range(2))

    def forward(self, query: Tensor, pos: Tensor, reference: Tensor, shapes: Tensor) -> Tensor:
        query = self.norms[0](self.self_attn(query, query, reference, shapes, query_pos=pos))
        return self.norms[1](self.ffn(query))


class DecoderLayer(nn.Module):
    """Self-attention, LayerNorm, deformable cross-attention, LayerNorm, FFN, LayerNorm."""

    def __init__(self, config: DeformableDETRConfig) -> None:
        super().__init__()
        dims = config.embed_dims
        self.self_attn = nn.MultiheadAttention(
            dims, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.self_attn_drop = nn.Dropout(config.dropout)
        self.cross_attn = MultiScaleDeformableAttention(
            dims, config.num_heads, config.num_levels, config.num_points, config.dropout
        )
        self.ffn = FFN(dims, config.ffn_dims, config.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dims) for _ in range(3))

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        reference: Tensor,
        shapes: Tensor,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``attn_mask`` (Q, Q) or (B heads, Q, Q) bool: True where a query may not look."""
        # queries and keys carry the position; the values do not
        with_pos = query + query_pos
        attended = self.self_attn(
            with_pos, with_pos, query, attn_mask=attn_mask, need_weights=False
        )[0]
        query = self.norms[0](query + self.self_attn_drop(attended))
        attended = self.cross_attn(query, memory, reference, shapes, query_pos=query_pos)
        query = self.norms[1](attended)
        return self.norms[2](self.ffn(query))


def _box_mlp(dims: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(dims, dims), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims, 4))


class DeformableDETR(nn.Module):
    """Deformable DETR: backbone, channel mapper, encoder, decoder and prediction heads,
    with Hungarian matching, the set loss and top-k prediction.

    ``config.pretrained`` names the backbone weights a training run starts from (as
    ATSS: building loads nothing; the trainer calls :meth:`load_backbone`).

    Args:
        config: a :class:`DeformableDETRConfig`.
    """

    def __init__(self, config: DeformableDETRConfig) -> None:
        super().__init__()
        if config.embed_dims % 2 or config.embed_dims % config.num_heads:
            raise ValueError(f"embed_dims {config.embed_dims} must be even and divide by num_heads")
        if config.num_levels < 3:
            raise ValueError(f"num_levels must be at least 3 (C3 to C5), got {config.num_levels}")
        self.config, self.name, self.num_classes = config, config.name, config.num_classes
        dims = config.embed_dims
        self.backbone = ResNetBackbone(
            config.depth,
            out_stages=(3, 4, 5),
            width=config.backbone_width,
            frozen_stages=config.frozen_stages,
            norm_eval=config.norm_eval,
        )
        self.neck = ChannelMapper(
            self.backbone.out_channels, dims, config.num_levels, config.norm_groups
        )
        self.level_embed = nn.Parameter(torch.empty(config.num_levels, dims))
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        if config.mixed_selection and not config.as_two_stage:
            raise ValueError("mixed_selection picks positions among proposals: needs as_two_stage")
        if config.as_two_stage:
            self.memory_trans_fc = nn.Linear(dims, dims)
            self.memory_trans_norm = nn.LayerNorm(dims)
            self.pos_trans_fc = nn.Linear(2 * dims, 2 * dims)
            self.pos_trans_norm = nn.LayerNorm(2 * dims)
            if config.mixed_selection:  # the queries' content, learned (normal(0, 1))
                self.query_embedding = nn.Embedding(config.num_queries, dims)
        else:
            self.query_embedding = nn.Embedding(config.num_queries, 2 * dims)
            self.reference_points_fc = nn.Linear(dims, 2)
        # one class head and one box MLP per decoder layer (+1 for the encoder's
        # proposals with two stages): copies with box refinement, else the same module
        num_heads = config.num_decoder_layers + int(config.as_two_stage)
        cls_head, box_head = nn.Linear(dims, config.num_classes), _box_mlp(dims, config.num_reg_fcs)
        if config.with_box_refine:
            self.cls_branches = nn.ModuleList(copy.deepcopy(cls_head) for _ in range(num_heads))
            self.reg_branches = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_heads))
        else:
            self.cls_branches = nn.ModuleList(cls_head for _ in range(num_heads))
            self.reg_branches = nn.ModuleList(box_head for _ in range(num_heads))
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet's initialisation: Xavier-uniform for every matrix of the encoder and
        decoder, then deformable attention's own; normal level embeddings; class biases
        at a probability of ``prior_prob``; the box MLPs' last layer at zero (the first
        one's w, h bias at -2, small boxes, unless two stages give the sizes)."""
        for layer in (*self.encoder, *self.decoder):
            for parameter in layer.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        if self.config.as_two_stage:
            nn.init.xavier_uniform_(self.memory_trans_fc.weight)
            nn.init.xavier_uniform_(self.pos_trans_fc.weight)
        else:
            nn.init.xavier_uniform_(self.reference_points_fc.weight)
            nn.init.zeros_(self.reference_points_fc.bias)
        nn.init.normal_(self.level_embed)
        bias = -math.log((1 - self.config.prior_prob) / self.config.prior_prob)
        for head in self.cls_branches:
            nn.init.constant_(head.bias, bias)
        for head in self.reg_branches:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        with torch.no_grad():
            self.reg_branches[0][-1].bias[2:] = 0.0 if self.config.as_two_stage else -2.0

    def load_backbone(self, state_dict: dict, source: str = "state dict") -> None:
        """Load backbone weights (a torchvision ResNet state dict), as the trainer does
        for ``config.pretrained``."""
        self.backbone.load_weights(state_dict, source)

    # ------------------------------------------------------------------ forward
    def flatten_levels(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Level maps -> tokens (B, S, D), their position + level embeddings (B, S, D),
        spatial_shapes (L, 2) long."""
        tokens, positions, shapes = [], [], []
        for level, feature in enumerate(features):
            batch, dims, height, width = feature.shape
            pos = sine_position_embedding(
                height, width, dims // 2, self.config.temperature, feature.device
            )
            tokens.append(feature.flatten(2).transpose(1, 2))  # [B, H W, D]
            pos = pos.flatten(1).transpose(0, 1) + self.level_embed[level]  # [H W, D]
            positions.append(pos.to(feature.dtype).expand(batch, -1, -1))
            shapes.append((height, width))
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=features[0].device)
        return torch.cat(tokens, 1), torch.cat(positions, 1), spatial_shapes

    def encode(self, tokens: Tensor, positions: Tensor, spatial_shapes: Tensor) -> Tensor:
        """The encoder: tokens (B, S, D) -> memory (B, S, D)."""
        reference = encoder_reference_points(spatial_shapes, self.config.num_levels)
        reference = reference.to(tokens.dtype).expand(tokens.shape[0], -1, -1, -1)
        for layer in self.encoder:
            tokens = layer(tokens, positions, reference, spatial_shapes)
        return tokens

    def encoder_proposals(self, memory: Tensor, spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
        """Two stages: one box per memory token, at its place, of side 0.05 x 2^level.

        Returns:
            the transformed memory (B, S, D) (zero where the box is invalid, then a
            linear layer and LayerNorm) and the boxes (B, S, 4) as inverse-sigmoid cxcywh
            (``inf`` where a coordinate leaves (0.01, 0.99)).

        Reference: mmdet ``DeformableDETR.gen_encoder_output_proposals``.
        """
        proposals = []
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            grid_y, grid_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=memory.device),
                torch.arange(width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            centres = torch.stack(((grid_x + 0.5) / width, (grid_y + 0.5) / height), -1)
            sizes = torch.full_like(centres, 0.05 * 2.0**level)
            proposals.append(torch.cat((centres, sizes), -1).view(-1, 4))
        proposals = torch.cat(proposals)[None].expand(memory.shape[0], -1, -1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
        output = memory.masked_fill(~valid, 0.0)
        return self.memory_trans_norm(self.memory_trans_fc(output)), proposals

    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone and channel mapper: images -> ``num_levels`` maps (B, D, H_l, W_l)."""
        check_images(images, 2 ** (self.config.num_levels + 2))
        return self.neck(self.backbone((images - self.pixel_mean) / self.pixel_std))

    def select_queries(
        self, memory: Tensor, spatial_shapes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """The decoder's starting point.

        Returns:
            ``(query, query_pos, reference, enc_cls_logits, enc_boxes)``: content and
            position (B, Q, D), references (B, Q, 2) points or (B, Q, 4) boxes in [0, 1],
            and with two stages the encoder's proposals (B, S, C) and (B, S, 4) (else
            ``None``). Two stages take the positions of the Q best proposals, and with
            ``mixed_selection`` a learned content per query instead of the proposals'.
        """
        config = self.config
        batch, _, dims = memory.shape
        if not config.as_two_stage:
            query_pos, query = self.query_embedding.weight.split(dims, dim=1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            query = query[None].expand(batch, -1, -1)
            reference = self.reference_points_fc(query_pos).sigmoid()  # [B, Q, 2] points
            return query, query_pos, reference, None, None
        if memory.shape[1] < config.num_queries:
            raise ValueError(
                f"two stages pick {config.num_queries} queries among the encoder's "
                f"{memory.shape[1]} tokens: use larger images (tokens per level: "
                f"{spatial_shapes.prod(1).tolist()})"
            )
        output_memory, proposals = self.encoder_proposals(memory, spatial_shapes)
        head = config.num_decoder_layers  # the extra head, after the decoder's
        enc_cls_logits = self.cls_branches[head](output_memory)
        enc_unact = self.reg_branches[head](output_memory) + proposals
        # the best proposals by their first class's score (the encoder's class head
        # learns "object" on class 0: see losses.detr)
        top = enc_cls_logits[..., 0].topk(config.num_queries, dim=1)[1]
        top_unact = enc_unact.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        reference = top_unact.sigmoid()  # [B, Q, 4] boxes
        embedded = self.pos_trans_fc(proposal_position_embedding(top_unact, dims // 2))
        query_pos, query = self.pos_trans_norm(embedded).split(dims, dim=2)
        if config.mixed_selection:
            query = self.query_embedding.weight[None].expand(batch, -1, -1)
        return query, query_pos, reference, enc_cls_logits, enc_unact.sigmoid()

    def decode(
        self,
        query: Tensor,
        query_pos: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The decoder and its heads on any set of queries.

        Args:
            query, query_pos: (B, Q, D) content and position.
            reference: (B, Q, 2) points or (B, Q, 4) boxes, cxcywh in [0, 1].
            memory: (B, S, D) the encoder's output; spatial_shapes (L, 2).
            attn_mask: for the self-attention, (Q, Q) or (B heads, Q, Q) bool, True
                where a query may not look; ``None``: every query sees every other.

        Returns:
            class logits (L, B, Q, C), boxes (L, B, Q, 4) cxcywh in [0, 1], and the
            reference each layer started from (L tensors).
        """
        config = self.config
        cls_logits, boxes, references = [], [], []
        # ``previous``: the boxes a layer's deltas apply to. The same values as the
        # layer's reference, but with look forward twice (DINO) not detached: the loss
        # of layer l then also trains layer l - 1's box head (and no layer before it)
        previous = reference
        for index, layer in enumerate(self.decoder):
            references.append(reference)
            query = layer(
                query,
                query_pos,
                memory,
                reference[:, :, None].expand(-1, -1, config.num_levels, -1),
                spatial_shapes,
                attn_mask,
            )
            deltas = self.reg_branches[index](query)
            layer_boxes = apply_box_deltas(deltas, previous)
            cls_logits.append(self.cls_branches[index](query))
            boxes.append(layer_boxes)
            if config.with_box_refine:
                # the same boxes, from the detached reference (no gradient further back)
                refined = (
                    layer_boxes if previous is reference else apply_box_deltas(deltas, reference)
                )
                reference = refined.detach()  # where the next layer samples
                previous = refined if config.look_forward_twice else reference
        return torch.stack(cls_logits), torch.stack(boxes), references

    def forward(self, images: Tensor) -> DeformableDETROutputs:
        """Every decoder layer's predictions (the same in training and eval mode).

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 64.

        Returns:
            :class:`DeformableDETROutputs`.
        """
        tokens, positions, spatial_shapes = self.flatten_levels(self.features(images))
        memory = self.encode(tokens, positions, spatial_shapes)
        query, query_pos, reference, enc_cls_logits, enc_boxes = self.select_queries(
            memory, spatial_shapes
        )
        cls_logits, boxes, references = self.decode(
            query, query_pos, reference, memory, spatial_shapes
        )
        return DeformableDETROutputs(
            cls_logits, boxes, enc_cls_logits, enc_boxes, references, memory, spatial_shapes
        )

    # --------------------------------------------------------- assignment, loss
    def image_size(self, outputs: DeformableDETROutputs) -> tuple[int, int]:
        """(H, W) px of the network input, from the finest level (stride 8)."""
        height, width = outputs.spatial_shapes[0].tolist()
        return height * 8, width * 8

    def _weights(self) -> dict[str, float]:
        config = self.config
        return {
            "cls_weight": config.cls_weight,
            "l1_weight": config.l1_weight,
            "giou_weight": config.giou_weight,
            "alpha": config.focal_alpha,
            "gamma": config.focal_gamma,
        }

    @torch.no_grad()
    def assign(
        self, outputs: DeformableDETROutputs, targets: list[dict[str, Tensor]]
    ) -> DeformableDETRAssignment:
        """Hungarian matching of every decoder layer's predictions, each on its own, and
        (two stages) of the encoder's proposals with every label set to 0."""
        image_size = self.image_size(outputs)
        layers = [
            assign_hungarian_batched(
                logits,
                cxcywh_norm_to_xyxy(boxes.float(), image_size),
                targets,
                image_size,
                **self._weights(),
            )  # fmt: skip
            for logits, boxes in zip(outputs.cls_logits, outputs.boxes, strict=True)
        ]
        layers_result = AssignResult(*(torch.stack(field) for field in zip(*layers, strict=True)))
        encoder = None
        if outputs.enc_cls_logits is not None:
            agnostic = [
                {"boxes": t["boxes"], "labels": torch.zeros_like(t["labels"])} for t in targets
            ]
            encoder = assign_hungarian_batched(
                outputs.enc_cls_logits,
                cxcywh_norm_to_xyxy(outputs.enc_boxes.float(), image_size),
                agnostic,
                image_size,
                **self._weights(),
            )
        return DeformableDETRAssignment(layers_result, encoder)

    def loss_terms(
        self,
        outputs: DeformableDETROutputs,
        targets: list[dict[str, Tensor]],
        assignment: DeformableDETRAssignment | None = None,
    ) -> dict[str, Tensor]:
        """Every term of the loss: ``cls``, ``l1``, ``giou`` of the last decoder layer,
        ``d0.cls`` ... of the earlier ones, ``enc.cls`` ... of the encoder's proposals
        (mmdet's names, without the ``loss_`` prefix)."""
        if assignment is None:
            assignment = self.assign(outputs, targets)
        image_size = self.image_size(outputs)
        terms: dict[str, Tensor] = {}
        last = len(outputs.cls_logits) - 1
        layers = zip(outputs.cls_logits, outputs.boxes, strict=True)
        for index, (logits, boxes) in enumerate(layers):
            layer_assignment = AssignResult(*(field[index] for field in assignment.layers))
            prefix = "" if index == last else f"d{index}."
            layer_terms = set_loss(
                logits, boxes, layer_assignment, targets, image_size, **self._weights()
            )
            terms.update({prefix + name: value for name, value in layer_terms.items()})
        if outputs.enc_cls_logits is not None:
            if assignment.encoder is None:
                raise ValueError("two-stage outputs need the encoder's assignment")
            enc_terms = set_loss(
                outputs.enc_cls_logits, outputs.enc_boxes, assignment.encoder, targets,
                image_size, class_agnostic=True, **self._weights(),
            )  # fmt: skip
            terms.update({f"enc.{name}": value for name, value in enc_terms.items()})
        return terms

    def loss(
        self,
        outputs: DeformableDETROutputs,
        targets: list[dict[str, Tensor]],
        assignment: DeformableDETRAssignment | None = None,
    ) -> dict[str, Tensor]:
        """The set loss on every decoder layer (and the encoder's proposals).

        Returns:
            ``{"cls", "l1", "giou"}`` of the last decoder layer, ``"aux"`` the sum of
            every other term (earlier layers, encoder), ``"loss"`` the total; see
            :meth:`loss_terms` for each term.
        """
        terms = self.loss_terms(outputs, targets, assignment)
        final = {name: terms[name] for name in ("cls", "l1", "giou")}
        aux = [value for name, value in terms.items() if name not in final]
        losses = dict(final)
        losses["aux"] = torch.stack(aux).sum() if aux else terms["cls"] * 0.0
        losses["loss"] = sum(terms.values())
        return losses

    # --------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(
        self,
        outputs: DeformableDETROutputs,
        score_thr: float = 0.0,
        iou_thr: float | None = None,
        max_det: int = 100,
    ) -> list[dict[str, Tensor]]:
        """The ``max_det`` best (query, class) pairs of the last decoder layer by sigmoid
        score; no NMS (``iou_thr`` is accepted for the common protocol and unused).

        A query may appear with several classes; boxes are clipped to the image; pairs
        at or below ``score_thr`` are then dropped (mmdet keeps all 100).

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``.
        """
        del iou_thr
        image_size = self.image_size(outputs)
        height, width = image_size
        scores_all = outputs.cls_logits[-1].float().sigmoid()  # [B, Q, C]
        boxes_all = cxcywh_norm_to_xyxy(outputs.boxes[-1].float(), image_size)
        detections = []
        for scores, boxes in zip(scores_all, boxes_all, strict=True):
            count = min(max_det, scores.numel())
            top_scores, top_index = scores.flatten().topk(count)
            labels = top_index % self.num_classes
            chosen = boxes[top_index // self.num_classes].clone()
            chosen[:, 0::2] = chosen[:, 0::2].clamp(0, width)
            chosen[:, 1::2] = chosen[:, 1::2].clamp(0, height)
            keep = top_scores > score_thr
            detections.append(
                {"boxes": chosen[keep], "scores": top_scores[keep], "labels": labels[keep]}
            )
        return detections


def build_deformable_detr_r50(num_classes: int = 80) -> DeformableDETR:
    """mmdet's Deformable DETR R50 (``deformable-detr_r50_16xb2-50e_coco``)."""
    return DeformableDETR(DeformableDETRConfig(num_classes=num_classes))


def build_deformable_detr_r50_refine_two_stage(num_classes: int = 80) -> DeformableDETR:
    """Deformable DETR R50 with box refinement and two stages
    (``deformable-detr-refine-twostage_r50_16xb2-50e_coco``)."""
    return DeformableDETR(
        DeformableDETRConfig(
            name="deformable-detr-r50-refine-two-stage",
            num_classes=num_classes,
            with_box_refine=True,
            as_two_stage=True,
        )
    )


def cpu_preset_config(num_classes: int = 80, **changes) -> DeformableDETRConfig:
    """The configuration of the CPU preset ``deformable-detr-r18half-d128`` (see
    :func:`build_deformable_detr_r18half_d128`), with ``changes`` applied."""
    config = DeformableDETRConfig(
        name="deformable-detr-r18half-d128",
        num_classes=num_classes,
        **CPU_PRESET_BACKBONE,
        embed_dims=128,
        num_encoder_layers=3,
        num_decoder_layers=3,
        ffn_dims=512,
        dropout=0.0,
        num_queries=100,
        with_box_refine=True,
        as_two_stage=True,
    )
    return dataclasses.replace(config, **changes)


def build_deformable_detr_r18half_d128(num_classes: int = 80) -> DeformableDETR:
    """The CPU preset: ResNet-18 at half width from the course's pre-trained backbone,
    width 128 (FFN 512), 3 encoder and 3 decoder layers, 100 queries, box refinement and
    two stages, no dropout, every backbone stage trained."""
    return DeformableDETR(cpu_preset_config(num_classes))
