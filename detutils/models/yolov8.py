"""YOLOv8 (n and s): C2f backbone, PAN-FPN neck, decoupled anchor-free head with DFL.

::

    model = build_yolov8n(num_classes=80)
    outputs = model(images)                 # train: [(B, 4 reg_max + C, H/s, W/s) per level]
                                            # eval: ((B, 4 + C, A) decoded, raw list)
    assignment = model.assign(outputs, targets)         # task-aligned, (B, A) fields
    losses = model.loss(outputs, targets, assignment)   # {"box", "cls", "dfl", "loss"}
    dets = model.predict(outputs)           # [{"boxes", "scores", "labels"} per image]

At 640 x 640 the three levels (strides 8, 16, 32) have 80 x 80, 40 x 40 and 20 x 20
cells: 8400 anchor points, one per cell centre. Per level the head runs two branches of
two 3x3 ConvBNSiLU and a 1x1 conv: one gives 4 x 16 distribution logits (sides left,
top, right, bottom, each over 16 bins: ``reg_max = 16`` in ultralytics' words; in the
course's letters a distribution has R + 1 = 16 bins, R = 15), the other C class logits.
Training outputs concatenate them per level, box channels first, as the reference does.
A side's distance is the expected bin of its distribution, in strides (at most 15).

Targets: the task-aligned assigner (:func:`detutils.assigners.assign_task_aligned`,
topk 10, alpha 0.5, beta 6); losses: BCE, CIoU and DFL (:func:`detutils.losses.yolov8_loss`).

Input: images (B, 3, H, W) RGB in [0, 1], H and W multiples of 32, as ultralytics feeds
its network (no mean or standard deviation).

Parameters at 80 classes: yolov8n 3,157,200 and yolov8s 11,166,560, the official counts;
16 of them are the frozen bin values 0 .. 15 of the DFL integral (:class:`DFLIntegral`),
as in ultralytics, whose summary shows 16 fewer gradients.

Bias initialisation (ultralytics ``Detect.bias_init``): the last conv of every box branch
starts with bias 1.0, every class bias of level s with log(5 / C / (640 / s)^2), a
probability of about 5 objects per 640 x 640 image spread over its C classes and its
(640 / s)^2 cells: -8.8 at stride 8, -7.4 at 16, -6.0 at 32 for C = 80.

Reference: ultralytics ``cfg/models/v8/yolov8.yaml``, ``nn/modules/head.py`` (``Detect``,
``bias_init``), ``nn/modules/block.py`` (``DFL``), ``utils/loss.py`` (``v8DetectionLoss``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch
from torch import Tensor, nn

from detutils.assigners.batch import pad_ground_truth
from detutils.assigners.tal import TaskAlignedResult
from detutils.coders import decode_distance, dfl_distances
from detutils.losses.yolov8 import yolov8_assign, yolov8_loss
from detutils.models.inputs import check_images
from detutils.models.yolov8_blocks import (
    ConvBNSiLU,
    YOLOv8Backbone,
    YOLOv8Neck,
    scale_channels,
    scale_depth,
)
from detutils.postprocess import postprocess_detections
from detutils.priors import anchor_points

__all__ = [
    "DFLIntegral",
    "YOLOV8_PRESETS",
    "YOLOv8",
    "YOLOv8Config",
    "YOLOv8Head",
    "build_yolov8n",
    "build_yolov8s",
]

YOLOv8Outputs = list[Tensor] | tuple[Tensor, list[Tensor]]  # training | eval


@dataclass(frozen=True)
class YOLOv8Config:
    """Everything that defines a YOLOv8 detector; the defaults are YOLOv8n."""

    name: str = "yolov8n"  # command-line name
    num_classes: int = 80  # C
    depth: float = 0.33  # multiplies the C2f depths 3, 6, 6, 3 (n and s: 0.33)
    width: float = 0.25  # multiplies the channels 64 ... 1024 (n: 0.25, s: 0.50)
    max_channels: int = 1024  # channels are capped at this before the width multiple
    img_size: int = 640  # side of the square network input, px, a multiple of 32
    reg_max: int = 16  # bins per side (ultralytics' reg_max): distances 0 .. 15 strides
    strides: tuple[int, ...] = (8, 16, 32)  # pixels per cell of each level
    box_gain: float = 7.5  # weight of the CIoU loss (hyp box)
    cls_gain: float = 0.5  # weight of the BCE class loss (hyp cls)
    dfl_gain: float = 1.5  # weight of the distribution focal loss (hyp dfl)
    topk: int = 10  # task-aligned assigner: positives per box before conflicts
    alpha: float = 0.5  # task-aligned assigner: exponent of the class score
    beta: float = 6.0  # task-aligned assigner: exponent of the CIoU
    prior_objects: float = 5.0  # class-bias prior: objects per prior_image_size^2 image
    prior_image_size: int = 640  # see prior_objects


YOLOV8_PRESETS: MappingProxyType[str, YOLOv8Config] = MappingProxyType(
    {
        "yolov8n": YOLOv8Config(name="yolov8n", depth=0.33, width=0.25, max_channels=1024),
        "yolov8s": YOLOv8Config(name="yolov8s", depth=0.33, width=0.50, max_channels=1024),
    }
)


class DFLIntegral(nn.Module):
    """Side distances from distribution logits: softmax over the bins, dot [0, 1, ..., n - 1].

    The bin values are a frozen parameter, as the weights of ultralytics' ``DFL`` 1x1
    conv are (so the parameter count is ultralytics'); the arithmetic is
    :func:`detutils.coders.dfl_distances`.
    """

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        bins = torch.arange(num_bins, dtype=torch.float32)
        self.bins = nn.Parameter(bins, requires_grad=False)  # (n,)

    def forward(self, dist_logits: Tensor) -> Tensor:
        """(..., 4 n) logits, side-major -> (..., 4) l, t, r, b in bins."""
        return dfl_distances(dist_logits, self.bins)


class YOLOv8Head(nn.Module):
    """Decoupled head: per level a box branch (4 n channels) and a class branch (C channels).

    Args:
        in_channels: channels of the neck's three maps.
        num_classes: C.
        reg_max: bins per side, n.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, reg_max: int) -> None:
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        box_width = max(16, in_channels[0] // 4, 4 * reg_max)  # ultralytics c2
        class_width = max(in_channels[0], min(num_classes, 100))  # ultralytics c3

        def branch(channels: int, width: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBNSiLU(channels, width, 3),
                ConvBNSiLU(width, width, 3),
                nn.Conv2d(width, outputs, 1),
            )

        self.box_branches = nn.ModuleList(branch(c, box_width, 4 * reg_max) for c in in_channels)
        self.class_branches = nn.ModuleList(
            branch(c, class_width, num_classes) for c in in_channels
        )

    def init_biases(self, strides: Sequence[int], objects: float, image_size: int) -> None:
        """Box biases 1.0; class biases log(objects / C / (image_size / s)^2) at stride s."""
        for box_branch, class_branch, stride in zip(
            self.box_branches, self.class_branches, strides, strict=True
        ):
            nn.init.constant_(box_branch[-1].bias, 1.0)
            prior = objects / self.num_classes / (image_size / stride) ** 2
            nn.init.constant_(class_branch[-1].bias, math.log(prior))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Three maps (B, c_l, H_l, W_l) -> three (B, 4 n + C, H_l, W_l), box channels first."""
        return [
            torch.cat([box_branch(x), class_branch(x)], dim=1)
            for x, box_branch, class_branch in zip(
                features, self.box_branches, self.class_branches, strict=True
            )
        ]


class YOLOv8(nn.Module):
    """YOLOv8: backbone, neck and head, with its assigner, loss and post-processing.

    Args:
        config: a :class:`YOLOv8Config`, e.g. ``YOLOV8_PRESETS["yolov8s"]``.
    """

    def __init__(self, config: YOLOv8Config) -> None:
        super().__init__()
        if tuple(config.strides) != YOLOv8Backbone.strides:
            raise ValueError(f"the YOLOv8 backbone gives strides 8, 16, 32, not {config.strides}")
        if config.img_size % max(config.strides):
            raise ValueError(f"img_size {config.img_size} must be a multiple of 32")
        if config.num_classes < 1 or config.reg_max < 2:
            raise ValueError(
                f"need num_classes >= 1 and reg_max >= 2, got {config.num_classes}, "
                f"{config.reg_max}"
            )
        self.config, self.name, self.num_classes = config, config.name, config.num_classes
        channels = [
            scale_channels(c, config.width, config.max_channels) for c in (64, 128, 256, 512, 1024)
        ]
        depths = [scale_depth(n, config.depth) for n in (3, 6, 6, 3)]
        self.backbone = YOLOv8Backbone(channels, depths)
        self.neck = YOLOv8Neck(self.backbone.out_channels, scale_depth(3, config.depth))
        self.head = YOLOv8Head(self.neck.out_channels, config.num_classes, config.reg_max)
        self.dfl = DFLIntegral(config.reg_max)
        self.head.init_biases(config.strides, config.prior_objects, config.prior_image_size)

    def forward(self, images: Tensor) -> YOLOv8Outputs:
        """Raw per-level maps in training mode; decoded predictions and the maps in eval mode.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.

        Returns:
            training: three (B, 4 reg_max + C, H / s, W / s) maps, strides 8, 16, 32.
            eval: ``(decoded, maps)``, decoded (B, 4 + C, A): x1, y1, x2, y2 in input
            pixels and C class probabilities per anchor point (ultralytics gives cx, cy,
            w, h there), A = the sum of H / s x W / s; and the maps, as the reference's
            ``(y, x)``.
        """
        check_images(images, 32)
        maps = self.head(self.neck(self.backbone(images)))
        if self.training:
            return maps
        boxes, scores = self.decode(maps)
        return torch.cat([boxes, scores], dim=-1).transpose(1, 2), maps  # (B, 4 + C, A)

    # ---------------------------------------------------------- outputs to anchors
    @staticmethod
    def _maps(outputs: YOLOv8Outputs) -> list[Tensor]:
        """The per-level maps, from training outputs or from eval outputs ``(decoded, maps)``."""
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            return outputs[1]
        return list(outputs)

    def flatten(self, outputs: YOLOv8Outputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Maps -> distribution logits (B, A, 4 n), class logits (B, A, C), anchor points
        (A, 2) px and their strides (A,); anchors level by level, row-major."""
        maps = self._maps(outputs)
        if len(maps) != len(self.config.strides):
            raise ValueError(f"outputs must hold {len(self.config.strides)} maps, got {len(maps)}")
        batch_size, num_bins = maps[0].shape[0], 4 * self.config.reg_max
        flat = torch.cat([x.reshape(batch_size, x.shape[1], -1) for x in maps], 2)  # (B, 4n+C, A)
        dist_logits, cls_logits = flat.transpose(1, 2).split([num_bins, self.num_classes], -1)
        feature_sizes = [tuple(x.shape[-2:]) for x in maps]
        points, point_strides = anchor_points(
            feature_sizes, self.config.strides, device=flat.device
        )  # (A, 2), (A,)
        return dist_logits, cls_logits, points, point_strides

    def decode(self, outputs: YOLOv8Outputs) -> tuple[Tensor, Tensor]:
        """Outputs -> boxes (B, A, 4) xyxy, input pixels, and class probabilities (B, A, C)."""
        dist_logits, cls_logits, points, point_strides = self.flatten(outputs)
        distances = self.dfl(dist_logits.float()) * point_strides[:, None]  # (B, A, 4) px
        return decode_distance(points, distances), cls_logits.float().sigmoid()

    # ------------------------------------------------------------ the three calls
    def _loss_inputs(
        self, outputs: YOLOv8Outputs, targets: list[dict[str, Tensor]]
    ) -> tuple[Tensor, ...]:
        """Flattened outputs and padded ground truth, as the loss functions take them."""
        dist_logits, cls_logits, points, point_strides = self.flatten(outputs)
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {cls_logits.shape[0]}")
        gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device=cls_logits.device)
        return cls_logits, dist_logits, points, point_strides, gt_boxes, gt_labels, gt_mask

    @torch.no_grad()
    def assign(self, outputs: YOLOv8Outputs, targets: list[dict[str, Tensor]]) -> TaskAlignedResult:
        """The task-aligned assignment of a batch, from the current predictions.

        Args:
            outputs: what :meth:`forward` returned, in either mode.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.

        Returns:
            a (B, A) :class:`~detutils.assigners.TaskAlignedResult` (labels, target boxes,
            soft target scores, foreground mask, gt index per anchor point).
        """
        config = self.config
        return yolov8_assign(
            *self._loss_inputs(outputs, targets),
            topk=config.topk,
            alpha=config.alpha,
            beta=config.beta,
        )

    def loss(
        self,
        outputs: YOLOv8Outputs,
        targets: list[dict[str, Tensor]],
        assignment: TaskAlignedResult | None = None,
    ) -> dict[str, Tensor]:
        """The YOLOv8 loss of a batch.

        Args:
            outputs: what :meth:`forward` returned, in either mode.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
            assignment: what :meth:`assign` returned for these outputs and targets;
                ``None`` assigns here.

        Returns:
            ``{"box", "cls", "dfl", "loss"}`` scalars: ultralytics' ``loss_items`` and
            their sum (see :mod:`detutils.losses.yolov8` for the batch-size factor).
        """
        config = self.config
        return yolov8_loss(
            *self._loss_inputs(outputs, targets),
            box_gain=config.box_gain,
            cls_gain=config.cls_gain,
            dfl_gain=config.dfl_gain,
            topk=config.topk,
            alpha=config.alpha,
            beta=config.beta,
            assignment=assignment,
        )

    @torch.no_grad()
    def predict(
        self,
        outputs: YOLOv8Outputs,
        score_thr: float = 0.001,
        iou_thr: float = 0.7,
        max_det: int = 300,
        multi_label: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Detections per image: every (anchor, class) above ``score_thr``, class-aware NMS.

        Args:
            outputs: what :meth:`forward` returned, in either mode.
            score_thr: keep (anchor, class) pairs whose probability exceeds this (0.001
                for mAP, ultralytics' validation; 0.25 for showing detections).
            iou_thr: NMS IoU threshold.
            max_det: detections kept per image.
            multi_label: allow several classes per anchor.

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``;
            boxes not clipped to the image: the reference clips them after NMS, when it
            scales them back to the original image, as the course's evaluate and predict
            commands do.

        Reference: ultralytics ``utils/ops.py`` ``non_max_suppression`` (validation:
        conf 0.001, iou 0.7, max_det 300, multi_label).
        """
        boxes, scores = self.decode(outputs)
        return postprocess_detections(
            boxes,
            scores,
            score_thr=score_thr,
            iou_thr=iou_thr,
            max_det=max_det,
            multi_label=multi_label,
        )


def build_yolov8n(num_classes: int = 80) -> YOLOv8:
    """YOLOv8n (depth 0.33, width 0.25): 3,157,200 parameters at 80 classes."""
    return YOLOv8(replace(copy.deepcopy(YOLOV8_PRESETS["yolov8n"]), num_classes=num_classes))


def build_yolov8s(num_classes: int = 80) -> YOLOv8:
    """YOLOv8s (depth 0.33, width 0.50): 11,166,560 parameters at 80 classes."""
    return YOLOv8(replace(copy.deepcopy(YOLOV8_PRESETS["yolov8s"]), num_classes=num_classes))
