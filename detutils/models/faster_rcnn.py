"""Faster R-CNN: ResNet + FPN (P2 to P6), a region proposal network, RoIAlign and a
two-FC box head; max-IoU assignment and random sampling at both stages.

::

    model = build_faster_rcnn_r50(num_classes=80)
    outputs = model(images)        # features, RPN maps per level, proposals per image
    assignment = model.assign(outputs, targets)  # both stages: assign, then sample
    losses = model.loss(outputs, targets, assignment)
                                   # {"rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox", "loss"}
    dets = model.predict(outputs)  # [{"boxes", "scores", "labels"} per image]

Stage one, the RPN: on every level P2 to P6 (strides 4 to 64) one 3x3 conv with ReLU,
then a 1x1 conv to K objectness logits and a 1x1 conv to K 4 deltas, K = 3 anchors per
location (area (8 s)^2, height / width 0.5, 1 and 2). The anchors are assigned by max
IoU (0.7 / 0.3, low-quality matches) and 256 per image sampled, half of them positive at
most. Proposals: per level the 2000 (training) or 1000 (test) anchors of highest
objectness, decoded and clipped to the image, NMS at 0.7 within each level, the 1000
best per image; no gradient flows through them.

Stage two, the RoI head: the proposals are assigned by max IoU (0.5) to the ground
truth, which is also added to them as proposals, and 512 per image sampled, a quarter
positive at most. Each sampled RoI pools a 7x7 map from one level of P2 to P5, chosen
by its size (``RoIExtractor``), through ``torchvision.ops.roi_align`` (``aligned=True``);
two fully connected layers of 1024 follow, then class logits ``(N, C + 1)`` (the last
is background) and class-specific deltas ``(N, 4 C)``. At test time the RoI head runs
on all proposals: softmax scores, the deltas of each class decoded, score threshold
0.05, NMS at 0.5 per class, 100 detections per image.

Outputs hold the feature pyramid because the RoI head runs in :meth:`FasterRCNN.loss`
(on the sampled proposals, which depend on the targets) and in :meth:`predict` (on all
proposals); :meth:`FasterRCNN.roi_forward` runs it on any RoIs.

Input: images (B, 3, H, W) RGB in [0, 1], H and W multiples of 32, normalised with the
ImageNet mean and standard deviation, as in ATSS.

Parameters at 80 classes: ``build_faster_rcnn_r50`` 41,753,056 (ResNet-50 23,508,032,
FPN 3,344,384, RPN 593,935, RoI head 14,306,705), mmdet's
``faster-rcnn_r50_fpn_1x_coco``. The RPN's convs start normal(0, 0.01), the box head's
hidden layers Xavier-uniform, its class layer normal(0, 0.01) and its delta layer
normal(0, 0.001), every bias 0.

``build_faster_rcnn_r18half_fpn64`` is the course's CPU preset (see its docstring for
what it changes).

Reference: mmdet ``configs/_base_/models/faster-rcnn_r50_fpn.py``, ``RPNHead``,
``StandardRoIHead``, ``SingleRoIExtractor``, ``Shared2FCBBoxHead``; torchvision
``models/detection/faster_rcnn.py`` (the same design); Ren et al., "Faster R-CNN:
Towards Real-Time Object Detection with Region Proposal Networks", NeurIPS 2015; Lin et
al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detutils.assigners import (
    AssignResult,
    assign_max_iou,
    assign_max_iou_batched,
    pad_ground_truth,
    sample_random,
)
from detutils.coders import decode_delta_xywh
from detutils.losses.faster_rcnn import roi_loss, rpn_loss
from detutils.models.backbones import CPU_PRESET_BACKBONE, ResNetBackbone
from detutils.models.inputs import check_images
from detutils.models.necks import FPN
from detutils.postprocess import select_detections, select_proposals
from detutils.priors import anchor_boxes

__all__ = [
    "BoxHead",
    "FasterRCNN",
    "FasterRCNNAssignment",
    "FasterRCNNConfig",
    "FasterRCNNOutputs",
    "RPNHead",
    "RPNRoIBranch",
    "RoIExtractor",
    "RoIHead",
    "boxes_to_rois",
    "build_faster_rcnn_r18half_fpn64",
    "build_faster_rcnn_r50",
]


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes (N_i, 4) -> RoIs (N, 5): the image index, then the box, images in
    order (the layout ``roi_align`` reads; mmdet's ``bbox2roi``)."""
    return torch.cat(
        [torch.cat([image_boxes.new_full((len(image_boxes), 1), image), image_boxes], dim=1)
         for image, image_boxes in enumerate(boxes)]
    )  # fmt: skip


class FasterRCNNOutputs(NamedTuple):
    """What ``FasterRCNN.forward`` returns."""

    features: list[Tensor]  # the pyramid P2 .. P6, (B, F, H_l, W_l)
    objectness: list[Tensor]  # per level (B, K, H_l, W_l) logits
    deltas: list[Tensor]  # per level (B, K 4, H_l, W_l)
    proposals: list[Tensor]  # per image (P_i, 4) xyxy px, best first, no gradient
    proposal_scores: list[Tensor]  # per image (P_i,) objectness probabilities


class FasterRCNNAssignment(NamedTuple):
    """What ``FasterRCNN.assign`` returns: both stages' assignment and sampling."""

    rpn: AssignResult  # (B, A) fields, the anchors' max-IoU assignment
    rpn_sampled: Tensor  # (B, A) bool, the anchors the sampler drew
    gt_boxes: Tensor  # (B, M, 4) xyxy px, the padded ground truth rpn.gt_index points into
    rois: Tensor  # (N, 5) image index, xyxy px: the sampled proposals, per image
    # positives then negatives (mmdet's order)
    roi_labels: Tensor  # (N,) the class each RoI learns, or BACKGROUND (-1)
    roi_targets: Tensor  # (N, 4) xyxy px, the box each positive learns (zeros otherwise)
    roi_is_gt: Tensor  # (N,) bool, a ground-truth box added as a proposal


@dataclass(frozen=True)
class FasterRCNNConfig:
    """Everything that defines a Faster R-CNN; the defaults are mmdet's R50-FPN 1x."""

    name: str = "faster-rcnn-r50"  # command-line name
    num_classes: int = 80  # C
    img_size: int = 640  # side of the square network input for the schedules, px
    depth: int = 50  # ResNet depth
    backbone_width: int = 64  # channels of the ResNet's first stage (64: torchvision's)
    frozen_stages: int = 1  # stem and stage 2 frozen (mmdet: 1)
    norm_eval: bool = True  # backbone batch norms keep their running statistics
    pretrained: str | None = "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    fpn_channels: int = 256  # F: FPN output channels
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)  # P2 .. P6, the RPN's levels
    # -- RPN
    rpn_channels: int = 256  # the RPN's 3x3 conv
    anchor_scales: tuple[float, ...] = (8.0,)  # anchor side in strides
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_low_quality: bool = True  # low-quality matches
    rpn_num: int = 256  # anchors sampled per image
    rpn_pos_fraction: float = 0.5
    rpn_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    rpn_cls_weight: float = 1.0
    rpn_bbox_weight: float = 1.0
    # -- proposals
    train_nms_pre: int = 2000  # best anchors per level before NMS, training
    test_nms_pre: int = 1000  # ... at test time
    proposal_iou: float = 0.7  # NMS within each level
    train_proposals: int = 1000  # proposals kept per image, training
    test_proposals: int = 1000  # ... at test time
    min_proposal_size: float = 0.0  # proposals no wider or taller than this are dropped
    # -- RoI head
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)  # P2 .. P5, the levels RoIs pool from
    roi_size: int = 7  # RoIAlign output side
    roi_sampling_ratio: int = 0  # sample points per bin side (0: adaptive)
    finest_scale: float = 56.0  # RoIs below 2 x this pool from P2
    fc_channels: int = 1024  # the two shared fully connected layers
    roi_pos_iou: float = 0.5
    roi_neg_iou: float = 0.5
    roi_min_pos_iou: float = 0.5
    roi_low_quality: bool = False
    roi_num: int = 512  # proposals sampled per image
    roi_pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    roi_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    roi_cls_weight: float = 1.0
    roi_bbox_weight: float = 1.0
    roi_bbox_loss: str = "l1"  # "l1" on deltas, or "giou" (with roi_reg_decoded)
    roi_reg_decoded: bool = False  # the box loss compares decoded boxes (Co-DETR)
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, images in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB

    @property
    def num_anchors(self) -> int:
        """K: anchors per location."""
        return len(self.anchor_scales) * len(self.anchor_ratios)


class RPNHead(nn.Module):
    """The region proposal head over any feature pyramid: shared weights on every level.

    Args:
        in_channels: channels of every input map.
        feat_channels: channels of the 3x3 conv.
        num_anchors: K, anchors per location.

    Reference: mmdet ``RPNHead._init_layers``, ``forward_single`` (``num_convs=1``).
    """

    def __init__(self, in_channels: int, feat_channels: int = 256, num_anchors: int = 3) -> None:
        super().__init__()
        if min(in_channels, feat_channels, num_anchors) < 1:
            raise ValueError("channels and anchors must all be at least 1")
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):  # mmdet: Normal(std=0.01)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """L maps (B, in_channels, H_l, W_l) -> per level objectness logits (B, K, H_l,
        W_l) and deltas (B, K 4, H_l, W_l)."""
        objectness, deltas = [], []
        for x in features:
            hidden = F.relu(self.rpn_conv(x))
            objectness.append(self.rpn_cls(hidden))
            deltas.append(self.rpn_reg(hidden))
        return objectness, deltas


class RoIExtractor(nn.Module):
    """RoIAlign from the one level that suits each RoI's size.

    A RoI of scale ``s = sqrt(w h)`` pools from level ``floor(log2(s / finest_scale +
    1e-6))``, clamped to the levels given: with ``finest_scale`` 56 and strides 4 to 32,
    RoIs below 112 px pool from P2, up to 224 px from P3, up to 448 px from P4, larger
    ones from P5: the FPN paper's P_k with k = floor(4 + log2(s / 224)), counted from
    0 = P2 (torchvision's ``LevelMapper`` gives the same levels).

    Args:
        strides: of the maps RoIs pool from, finest first.
        output_size: side of the pooled map (7).
        sampling_ratio: bilinear samples per bin side; 0 chooses ``ceil(bin size)``.
        finest_scale: see above.

    Reference: mmdet ``SingleRoIExtractor`` (``map_roi_levels``, ``forward``) with
        ``RoIAlign(aligned=True)``; torchvision ``ops.roi_align``.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 0,
        finest_scale: float = 56.0,
    ) -> None:
        super().__init__()
        if not strides or output_size < 1 or sampling_ratio < 0 or finest_scale <= 0:
            raise ValueError("need strides, output_size >= 1, sampling_ratio >= 0, scale > 0")
        self.strides, self.output_size = tuple(strides), output_size
        self.sampling_ratio, self.finest_scale = sampling_ratio, finest_scale

    def map_levels(self, boxes: Tensor) -> Tensor:
        """(N, 4) xyxy px -> (N,) long, the level index each box pools from."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Maps (B, F, H_l, W_l) of the ``strides`` and RoIs (N, 5) (image index, xyxy px)
        -> (N, F, output_size, output_size)."""
        if len(features) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} maps, got {len(features)}")
        if rois.ndim != 2 or rois.shape[-1] != 5:
            raise ValueError(f"rois must be (N, 5): image index, x1, y1, x2, y2; got {rois.shape}")
        rois = rois.to(features[0].dtype)
        size = self.output_size
        pooled = features[0].new_zeros(rois.shape[0], features[0].shape[1], size, size)
        levels = self.map_levels(rois[:, 1:])
        for level, (x, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel():
                pooled[index] = roi_align(
                    x, rois[index], size, 1.0 / stride, self.sampling_ratio, aligned=True
                )
        return pooled


class BoxHead(nn.Module):
    """Two shared fully connected layers, then class logits and class-specific deltas.

    Args:
        in_channels: channels of the pooled maps.
        roi_size: their side.
        fc_channels: width of the hidden layers (1024).
        num_fcs: hidden layers (2).
        num_classes: C.

    Reference: mmdet ``Shared2FCBBoxHead`` (``ConvFCBBoxHead`` with two shared FCs).
    """

    def __init__(
        self,
        in_channels: int,
        roi_size: int = 7,
        fc_channels: int = 1024,
        num_fcs: int = 2,
        num_classes: int = 80,
    ) -> None:
        super().__init__()
        if min(in_channels, roi_size, fc_channels, num_classes) < 1 or num_fcs < 1:
            raise ValueError("channels, roi_size, layers and classes must all be at least 1")
        self.num_classes = num_classes
        widths = [in_channels * roi_size * roi_size] + [fc_channels] * num_fcs
        self.shared_fcs = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, 0.0, 0.01)
        nn.init.normal_(self.fc_reg.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(N, F, S, S) -> class logits (N, C + 1), deltas (N, 4 C)."""
        x = pooled.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """RoIAlign from a pyramid, then the box head: RoIs (N, 5) -> (N, C + 1), (N, 4 C)."""

    def __init__(self, extractor: RoIExtractor, box_head: BoxHead) -> None:
        super().__init__()
        self.extractor, self.box_head = extractor, box_head

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """The first ``len(extractor.strides)`` maps of ``features`` and RoIs (N, 5)."""
        pooled = self.extractor(features[: len(self.extractor.strides)], rois)
        return self.box_head(pooled)


class RPNRoIBranch(nn.Module):
    """Faster R-CNN's two heads over any feature pyramid: the RPN, its proposals, the RoI
    head, both stages' assignment and sampling, their losses and post-processing.

    :class:`FasterRCNN` is this branch on a ResNet + FPN; Co-DETR attaches it to its
    encoder's levels as an auxiliary branch. Only the head fields of ``config`` are read
    (strides, anchors, thresholds, samplers, RoI pooling, losses).

    Args:
        config: a :class:`FasterRCNNConfig`; ``fpn_channels`` is the channels of the
            maps the branch receives.
    """

    def __init__(self, config: FasterRCNNConfig) -> None:
        super().__init__()
        self._init_branch(config)

    def _init_branch(self, config: FasterRCNNConfig) -> None:
        strides, roi_strides = tuple(config.strides), tuple(config.roi_strides)
        if any(b != 2 * a for a, b in zip(strides[:-1], strides[1:], strict=True)):
            raise ValueError(f"strides must double from level to level, got {strides}")
        if not roi_strides or roi_strides != strides[: len(roi_strides)]:
            raise ValueError(f"roi_strides must be the first of {strides}, got {roi_strides}")
        if config.roi_bbox_loss not in ("l1", "giou") or (
            config.roi_bbox_loss == "giou" and not config.roi_reg_decoded
        ):
            raise ValueError("roi_bbox_loss must be 'l1', or 'giou' with roi_reg_decoded=True")
        self.config, self.name, self.num_classes = config, config.name, config.num_classes
        self.rpn_head = RPNHead(config.fpn_channels, config.rpn_channels, config.num_anchors)
        self.roi_head = RoIHead(
            RoIExtractor(roi_strides, config.roi_size, config.roi_sampling_ratio,
                         config.finest_scale),
            BoxHead(config.fpn_channels, config.roi_size, config.fc_channels, 2,
                    config.num_classes),
        )  # fmt: skip

    def forward(self, features: list[Tensor], image_size: tuple[int, int]) -> FasterRCNNOutputs:
        """The RPN's maps and the proposals on a pyramid (one map per stride of
        ``config.strides``), training or test settings by ``self.training``."""
        if len(features) != len(self.config.strides):
            raise ValueError(f"expected {len(self.config.strides)} maps, got {len(features)}")
        objectness, deltas = self.rpn_head(features)
        proposals, scores = self.propose(objectness, deltas, image_size)
        return FasterRCNNOutputs(list(features), objectness, deltas, proposals, scores)

    # ------------------------------------------------- anchors and proposals
    def anchors(
        self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str | None = None
    ) -> tuple[Tensor, list[int]]:
        """Anchors of every level -> (anchors (A, 4) xyxy px, num_per_level)."""
        config = self.config
        anchors = anchor_boxes(
            feature_sizes,
            config.strides,
            ratios=config.anchor_ratios,
            scales=config.anchor_scales,
            device=device,
        )
        counts = [height * width * config.num_anchors for height, width in feature_sizes]
        return anchors, counts

    def flatten(self, objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-level maps -> objectness (B, A) and deltas (B, A, 4): anchors level by
        level, row-major, the K anchors of a location adjacent (mmdet's layout)."""
        batch_size = objectness[0].shape[0]
        flat_objectness = torch.cat(
            [x.permute(0, 2, 3, 1).reshape(batch_size, -1) for x in objectness], dim=1
        )
        flat_deltas = torch.cat(
            [x.permute(0, 2, 3, 1).reshape(batch_size, -1, 4) for x in deltas], dim=1
        )
        return flat_objectness, flat_deltas

    @torch.no_grad()
    def propose(
        self, objectness: list[Tensor], deltas: list[Tensor], image_size: tuple[int, int]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals per image from the RPN's maps (mmdet's ``RPNHead.predict_by_feat``):
        per level the ``nms_pre`` anchors of highest objectness, decoded and clipped,
        then :func:`detutils.postprocess.select_proposals`.

        Returns:
            ``(proposals, scores)``: B tensors (P_i, 4) xyxy px and (P_i,), best first.
        """
        config = self.config
        nms_pre = config.train_nms_pre if self.training else config.test_nms_pre
        max_num = config.train_proposals if self.training else config.test_proposals
        feature_sizes = [tuple(x.shape[-2:]) for x in objectness]
        anchors, counts = self.anchors(feature_sizes, objectness[0].device)
        flat_objectness, flat_deltas = self.flatten(objectness, deltas)
        scores_all = flat_objectness.float().sigmoid()  # (B, A)
        kept_scores, kept_boxes, kept_levels = [], [], []
        start = 0
        for level, count in enumerate(counts):
            level_scores = scores_all[:, start : start + count]  # (B, A_l)
            scores, index = level_scores.topk(min(nms_pre, count), dim=1)  # (B, k)
            index = index + start
            level_deltas = flat_deltas.gather(1, index[..., None].expand(-1, -1, 4))
            boxes = decode_delta_xywh(
                anchors[index], level_deltas.float(), stds=config.rpn_stds, max_shape=image_size
            )  # (B, k, 4)
            kept_scores.append(scores)
            kept_boxes.append(boxes)
            kept_levels.append(torch.full_like(index, level))
            start += count
        scores, boxes, levels = (
            torch.cat(x, dim=1) for x in (kept_scores, kept_boxes, kept_levels)
        )
        proposals, proposal_scores = [], []
        for image_boxes, image_scores, image_levels in zip(boxes, scores, levels, strict=True):
            kept = select_proposals(
                image_boxes, image_scores, image_levels, config.proposal_iou, max_num,
                config.min_proposal_size,
            )  # fmt: skip
            proposals.append(kept[0])
            proposal_scores.append(kept[1])
        return proposals, proposal_scores

    # ------------------------------------------------------------- assignment
    def _check_outputs(self, outputs: FasterRCNNOutputs) -> list[tuple[int, int]]:
        if not isinstance(outputs, FasterRCNNOutputs):
            raise ValueError("outputs must be what FasterRCNN.forward returned")
        if len(outputs.objectness) != len(self.config.strides):
            raise ValueError(f"outputs must hold {len(self.config.strides)} RPN levels")
        return [tuple(x.shape[-2:]) for x in outputs.objectness]

    @torch.no_grad()
    def assign(
        self, outputs: FasterRCNNOutputs, targets: list[dict[str, Tensor]]
    ) -> FasterRCNNAssignment:
        """Both stages' assignment and sampling (see the module docstring).

        The RPN's anchors are assigned in one batched call (every image shares them),
        class-agnostic; each image's proposals are assigned to its boxes, the boxes
        (those of positive width and height) put in front of the proposals, and both
        stages sampled with :func:`detutils.assigners.sample_random` (the global random
        stream, seeded by the trainer).

        Args:
            outputs: what :meth:`forward` returned.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        """
        config = self.config
        feature_sizes = self._check_outputs(outputs)
        batch_size, device = outputs.objectness[0].shape[0], outputs.objectness[0].device
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        anchors, _ = self.anchors(feature_sizes, device)
        gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device)
        # stage one: the RPN tells objects from background, whatever their class
        rpn = assign_max_iou_batched(
            anchors, gt_boxes, torch.zeros_like(gt_labels), gt_mask, config.rpn_pos_iou,
            config.rpn_neg_iou, config.rpn_min_pos_iou, config.rpn_low_quality,
        )  # fmt: skip
        rpn_sampled = torch.zeros_like(rpn.gt_index, dtype=torch.bool)
        for image in range(batch_size):
            image_result = AssignResult(*(field[image] for field in rpn))
            pos, neg = sample_random(image_result, config.rpn_num, config.rpn_pos_fraction)
            rpn_sampled[image, pos] = True
            rpn_sampled[image, neg] = True
        # stage two: proposals (and the ground truth) against the ground truth
        rois, labels, roi_targets, is_gt = [], [], [], []
        for target, proposals in zip(targets, outputs.proposals, strict=True):
            boxes = target["boxes"].to(device=device, dtype=torch.float32)
            classes = target["labels"].to(device=device, dtype=torch.long)
            result = assign_max_iou(
                proposals, boxes, classes, config.roi_pos_iou, config.roi_neg_iou,
                config.roi_min_pos_iou, config.roi_low_quality,
            )  # fmt: skip
            priors, flags = proposals, torch.zeros(len(proposals), dtype=torch.bool, device=device)
            if config.add_gt_as_proposals:
                usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                index = torch.nonzero(usable).squeeze(1)
                priors = torch.cat([boxes[index], proposals])
                flags = torch.cat([torch.ones_like(index, dtype=torch.bool), flags])
                result = AssignResult(
                    torch.cat([index, result.gt_index]),
                    torch.cat([classes[index], result.labels]),
                    torch.cat([torch.ones_like(index, dtype=torch.float32), result.iou]),
                )
            pos, neg = sample_random(result, config.roi_num, config.roi_pos_fraction)
            order = torch.cat([pos, neg])
            image_targets = torch.zeros(len(order), 4, device=device)
            image_targets[: len(pos)] = boxes[result.gt_index[pos]]
            rois.append(priors[order])
            labels.append(result.labels[order])
            roi_targets.append(image_targets)
            is_gt.append(flags[order])
        return FasterRCNNAssignment(
            rpn, rpn_sampled, gt_boxes, boxes_to_rois(rois), torch.cat(labels),
            torch.cat(roi_targets), torch.cat(is_gt),
        )  # fmt: skip

    # ---------------------------------------------------------- the three calls
    def roi_forward(self, outputs: FasterRCNNOutputs, rois: Tensor) -> tuple[Tensor, Tensor]:
        """The RoI head on RoIs (N, 5) (image index, xyxy px) -> class logits (N, C + 1)
        and deltas (N, 4 C)."""
        return self.roi_head(outputs.features, rois)

    def rpn_losses(
        self, outputs: FasterRCNNOutputs, assignment: FasterRCNNAssignment
    ) -> dict[str, Tensor]:
        """The RPN's loss: ``{"rpn_cls", "rpn_bbox"}`` (weights applied)."""
        config = self.config
        anchors, _ = self.anchors(self._check_outputs(outputs), assignment.gt_boxes.device)
        objectness, deltas = self.flatten(outputs.objectness, outputs.deltas)
        return rpn_loss(
            objectness.float(), deltas.float(), anchors, assignment.rpn.gt_index,
            assignment.rpn_sampled, assignment.gt_boxes, stds=config.rpn_stds,
            cls_weight=config.rpn_cls_weight, bbox_weight=config.rpn_bbox_weight,
        )  # fmt: skip

    def roi_losses(
        self, cls_logits: Tensor, deltas: Tensor, assignment: FasterRCNNAssignment
    ) -> dict[str, Tensor]:
        """The RoI head's loss on its outputs for ``assignment.rois``: ``{"roi_cls",
        "roi_bbox", "roi_accuracy"}`` (weights applied; the accuracy in percent)."""
        config = self.config
        return roi_loss(
            cls_logits.float(), deltas.float(), assignment.rois[:, 1:], assignment.roi_labels,
            assignment.roi_targets, stds=config.roi_stds, cls_weight=config.roi_cls_weight,
            bbox_weight=config.roi_bbox_weight, bbox_loss=config.roi_bbox_loss,
            reg_decoded=config.roi_reg_decoded,
        )  # fmt: skip

    def loss(
        self,
        outputs: FasterRCNNOutputs,
        targets: list[dict[str, Tensor]],
        assignment: FasterRCNNAssignment | None = None,
    ) -> dict[str, Tensor]:
        """Both stages' losses: ``{"rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox", "loss"}``
        (weights applied), and ``"roi_accuracy"`` (percent, not part of ``"loss"``).

        The RoI head runs here, on the sampled proposals of ``assignment``.
        """
        if assignment is None:
            assignment = self.assign(outputs, targets)
        losses = self.rpn_losses(outputs, assignment)
        cls_logits, roi_deltas = self.roi_forward(outputs, assignment.rois)
        losses.update(self.roi_losses(cls_logits, roi_deltas, assignment))
        losses["loss"] = sum(
            losses[name] for name in ("rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox")
        )
        return losses

    @torch.no_grad()
    def decode(self, outputs: FasterRCNNOutputs) -> list[tuple[Tensor, Tensor]]:
        """The RoI head on every proposal -> per image boxes (P_i, C, 4) xyxy px (one box
        per class, clipped to the image) and class probabilities (P_i, C) (softmax over
        C + 1, background dropped)."""
        feature_sizes = self._check_outputs(outputs)
        image_size = (feature_sizes[0][0] * self.config.strides[0],
                      feature_sizes[0][1] * self.config.strides[0])  # fmt: skip
        rois = boxes_to_rois([proposals.float() for proposals in outputs.proposals])  # (N, 5)
        cls_logits, deltas = self.roi_forward(outputs, rois)
        scores = cls_logits.float().softmax(dim=1)[:, :-1]  # (N, C)
        boxes = decode_delta_xywh(
            rois[:, 1:], deltas.float(), stds=self.config.roi_stds, max_shape=image_size
        ).view(len(rois), self.num_classes, 4)
        counts = [len(p) for p in outputs.proposals]
        return list(zip(boxes.split(counts), scores.split(counts), strict=True))

    @torch.no_grad()
    def predict(
        self,
        outputs: FasterRCNNOutputs,
        score_thr: float = 0.05,
        iou_thr: float = 0.5,
        max_det: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Detections per image, as mmdet's ``BBoxHead.predict_by_feat``: every (proposal,
        class) pair whose softmax score exceeds ``score_thr``, with the box decoded from
        that class's deltas; NMS per class at ``iou_thr``; the ``max_det`` best.

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``.
        """
        return [
            select_detections(
                boxes,
                scores,
                score_thr=score_thr,
                iou_thr=iou_thr,
                max_det=max_det,
                multi_label=True,
                max_candidates=max(scores.numel(), 1),
            )  # fmt: skip
            for boxes, scores in self.decode(outputs)
        ]


class FasterRCNN(RPNRoIBranch):
    """Faster R-CNN: backbone, FPN, RPN and RoI head, with both stages' assignment,
    sampling, losses and post-processing.

    ``config.pretrained`` names the backbone weights a training run starts from (loaded
    by the trainer through :meth:`load_backbone`, as for ATSS).

    Args:
        config: a :class:`FasterRCNNConfig`.
    """

    def __init__(self, config: FasterRCNNConfig) -> None:
        nn.Module.__init__(self)
        strides = tuple(config.strides)
        if strides[:4] != (4, 8, 16, 32) or any(
            b != 2 * a for a, b in zip(strides[:-1], strides[1:], strict=True)
        ):
            raise ValueError(f"strides must be 4, 8, 16, 32, then doubling, got {strides}")
        if config.img_size % 32:
            raise ValueError(f"img_size {config.img_size} must be a multiple of 32")
        self.backbone = ResNetBackbone(
            config.depth,
            out_stages=(2, 3, 4, 5),
            width=config.backbone_width,
            frozen_stages=config.frozen_stages,
            norm_eval=config.norm_eval,
        )
        self.neck = FPN(
            self.backbone.out_channels, config.fpn_channels, len(strides), extra="maxpool"
        )
        self._init_branch(config)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)

    def load_backbone(self, state_dict: dict, source: str = "state dict") -> None:
        """Load backbone weights (a torchvision ResNet state dict)."""
        self.backbone.load_weights(state_dict, source)

    # ---------------------------------------------------------------- forward
    def forward(self, images: Tensor) -> FasterRCNNOutputs:
        """The pyramid, the RPN's maps and the proposals (training or test settings by
        ``self.training``).

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.
        """
        check_images(images, 32)
        normalised = (images - self.pixel_mean) / self.pixel_std
        return RPNRoIBranch.forward(
            self, self.neck(self.backbone(normalised)), tuple(images.shape[-2:])
        )


def build_faster_rcnn_r50(num_classes: int = 80) -> FasterRCNN:
    """mmdet's Faster R-CNN R50-FPN (``faster-rcnn_r50_fpn_1x_coco``)."""
    return FasterRCNN(FasterRCNNConfig(num_classes=num_classes))


def build_faster_rcnn_r18half_fpn64(num_classes: int = 80) -> FasterRCNN:
    """The CPU preset: ResNet-18 at half width (from the course's pre-trained backbone,
    every stage trained), FPN and RPN of 64 channels, a box head of two 256-wide layers,
    1000 proposals per level before NMS and 500 kept per image in training (500 / 500 at
    test time), 128 RoIs sampled per image; everything else as the R50 build."""
    return FasterRCNN(
        FasterRCNNConfig(
            name="faster-rcnn-r18half-fpn64",
            num_classes=num_classes,
            **CPU_PRESET_BACKBONE,
            fpn_channels=64,
            rpn_channels=64,
            fc_channels=256,
            train_nms_pre=1000,
            train_proposals=500,
            test_nms_pre=500,
            test_proposals=500,
            roi_num=128,
        )
    )
