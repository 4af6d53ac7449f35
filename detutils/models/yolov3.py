"""YOLOv3 and YOLOv3-tiny: a Darknet cfg network with the course's three detector calls.

::

    model = build_yolov3(num_classes=80)
    outputs = model(images)                 # train: [(B, 3, H/s, W/s, 5 + C) per head]
                                            # eval: ((B, N, 5 + C) decoded, raw list)
    assignment = model.assign(outputs, targets)         # per head: matched anchors, cells
    losses = model.loss(outputs, targets, assignment)   # {"box", "obj", "cls", "loss"}
    dets = model.predict(outputs)           # [{"boxes", "scores", "labels"} per image]

The network comes from a Darknet cfg (``detutils/models/cfg``), built by
:mod:`detutils.models.darknet`; targets from :func:`detutils.assigners.build_yolov3_targets`;
the loss from :func:`detutils.losses.yolov3_loss`.

Prior-probability bias initialisation. A fresh head would say "object, 50 %" in every
cell and "class c, 50 %" for every class. Almost every cell is background, so the
objectness BCE over some ten thousand cells starts huge and its gradient, all pushing
towards "no object", swamps the few positive cells for the first iterations. As in
RetinaNet (Lin et al., 2017, section 3.3), the head conv's biases are moved so that the
first predictions already hold a sensible prior probability p: for very negative b,
sigmoid(b) is close to e^b, so adding b = log(p) gives about p.

    objectness  p = 8 / (640 / s)^2: about 8 objects in a 640 x 640 image, spread over
                the (640 / s)^2 cells of a head of stride s (log p = -3.9, -5.3, -6.7
                at strides 32, 16, 8)
    classes     p = 0.6 / (C - 0.99), a little under 1 / C (log p = -4.9 for C = 80)

The offsets are added to PyTorch's default (small, random) conv biases, as in the
reference; the box channels keep the default. The objectness prior per stride is
YOLOv5's (``models/yolo.py``, ``_initialize_biases``); the archive branch of
ultralytics/yolov3, which the rest of this module follows, adds a flat -4.5 at every
stride instead (p = 0.011).

Reference: ultralytics/yolov3 (archive branch) ``models.py`` (``create_modules`` bias
initialisation, ``YOLOLayer``, ``Darknet``), ``utils/utils.py`` (``compute_loss``,
``build_targets``, ``non_max_suppression``), ``train.py`` (``hyp``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor, nn

from detutils.assigners.batch import pad_ground_truth
from detutils.assigners.yolov3_targets import YOLOv3Targets, build_yolov3_targets
from detutils.losses.yolov3 import yolov3_loss
from detutils.models.darknet import Darknet, YOLOLayer, read_darknet_cfg
from detutils.postprocess import postprocess_detections

__all__ = [
    "CFG_DIR",
    "YOLOV3_PRESETS",
    "YOLOv3",
    "YOLOv3Config",
    "build_yolov3",
    "build_yolov3_tiny",
    "init_head_biases",
]

CFG_DIR = Path(__file__).parent / "cfg"


@dataclass(frozen=True)
class YOLOv3Config:
    """Everything that defines a YOLOv3 detector; one preset per network size."""

    name: str = "yolov3"  # preset name, as on the command line
    cfg: str = "yolov3.cfg"  # Darknet cfg: a file in detutils/models/cfg, or a path
    num_classes: int = 80  # C; rewrites classes= and the head convs' filters=3 (5 + C)
    img_size: int = 416  # side of the square network input, px, a multiple of 32
    giou_gain: float = 3.54  # weight of the GIoU box loss (hyp['giou'])
    obj_gain: float = 64.3  # weight of the objectness BCE (hyp['obj'])
    cls_gain: float = 37.4  # weight of the class BCE (hyp['cls']), kept for every C: the
    # reference's train.py multiplies it by C / 80, which trained worse in 500 steps (nb 12)
    iou_t: float = 0.2  # wh-IoU a box and an anchor must exceed to match (hyp['iou_t'])
    gr: float = 1.0  # objectness target at positives: (1 - gr) + gr * GIoU (model.gr)
    objects_per_image: float = 8.0  # objectness prior of the bias init: objects in a
    # prior_image_size x prior_image_size image
    prior_image_size: int = 640  # see objects_per_image


YOLOV3_PRESETS: MappingProxyType[str, YOLOv3Config] = MappingProxyType(
    {
        "yolov3": YOLOv3Config(name="yolov3", cfg="yolov3.cfg"),
        "yolov3-tiny": YOLOv3Config(name="yolov3-tiny", cfg="yolov3-tiny.cfg"),
    }
)


def init_head_biases(
    network: Darknet, objects_per_image: float = 8.0, image_size: int = 640
) -> None:
    """Add the prior-probability offsets to the biases of the conv before each YOLO head.

    objectness bias += log(objects_per_image / (image_size / stride)^2);
    class biases += log(0.6 / (C - 0.99)). Why: see the module docstring.

    Reference: ultralytics/yolov3 (archive) ``models.py`` ``create_modules``, "Initialize
    preceding Conv2d() bias (https://arxiv.org/pdf/1708.02002.pdf section 3.3)", for the
    class biases; the objectness offset per stride is YOLOv5's ``_initialize_biases``
    (the archive adds -4.5 at every stride).
    """
    for index in network.head_indices:
        head: YOLOLayer = network.layers[index]
        conv = network.layers[index - 1].conv
        with torch.no_grad():
            bias = conv.bias.view(head.num_anchors, 5 + head.num_classes)  # (K, 5 + C)
            bias[:, 4] += math.log(objects_per_image / (image_size / head.stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (head.num_classes - 0.99))


def _cfg_path(cfg: str | Path) -> Path:
    """A bare name of a cfg shipped in ``CFG_DIR`` means that file; anything else is a path."""
    shipped = CFG_DIR / str(cfg)
    return shipped if Path(cfg).name == str(cfg) and shipped.is_file() else Path(cfg)


class YOLOv3(nn.Module):
    """YOLOv3 (or YOLOv3-tiny): the Darknet network, its loss and its post-processing.

    Args:
        config: a :class:`YOLOv3Config`, e.g. ``YOLOV3_PRESETS["yolov3-tiny"]``.
    """

    def __init__(self, config: YOLOv3Config) -> None:
        super().__init__()
        self.config = config
        self.name = config.name  # the command-line name, stored in checkpoints
        self.network = Darknet(read_darknet_cfg(_cfg_path(config.cfg)), config.num_classes)
        if config.img_size % self.network.max_stride:
            raise ValueError(
                f"img_size {config.img_size} must be a multiple of {self.network.max_stride}"
            )
        init_head_biases(self.network, config.objects_per_image, config.prior_image_size)

    @property
    def heads(self) -> list[YOLOLayer]:
        """The YOLO layers, coarsest first (strides 32, 16, 8)."""
        return self.network.heads

    @property
    def strides(self) -> list[int]:
        return [head.stride for head in self.heads]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, images: Tensor) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Raw head outputs in training mode; decoded boxes and raw outputs in eval mode.

        Args:
            images: (B, 3, H, W), normalised, H and W multiples of 32.

        Returns:
            training: one (B, 3, H / s, W / s, 5 + C) raw tensor per head (13, 26, 52
            cells at 416 px for YOLOv3; 13, 26 for YOLOv3-tiny).
            eval: ``(decoded, raw)``: decoded (B, N, 5 + C) = x1, y1, x2, y2 in input
            pixels, objectness, class probabilities, N = 3 (sum of H W) over heads, heads
            in order; and the raw list, as the reference's ``(io, p)``.
        """
        raw = self.network(images)
        if self.training:
            return raw
        return self.decode(raw), raw

    def decode(self, raw: list[Tensor]) -> Tensor:
        """Raw outputs of every head -> (B, N, 5 + C) decoded (see :meth:`forward`)."""
        return torch.cat([head.decode(x) for head, x in zip(self.heads, raw, strict=True)], 1)

    @staticmethod
    def _raw(outputs: list[Tensor] | tuple[Tensor, list[Tensor]]) -> list[Tensor]:
        """The raw list, from training outputs or from eval outputs ``(decoded, raw)``."""
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            return outputs[1]
        return list(outputs)

    @torch.no_grad()
    def assign(
        self,
        outputs: list[Tensor] | tuple[Tensor, list[Tensor]],
        targets: list[dict[str, Tensor]],
    ) -> list[YOLOv3Targets]:
        """Which layer, anchor and cell learns each box (wh-IoU > ``iou_t`` matching).

        Args:
            outputs: what :meth:`forward` returned, in either mode (only the map sizes
                are read: the matching does not look at the predictions).
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.

        Returns:
            one :class:`~detutils.assigners.YOLOv3Targets` per output layer (see
            :func:`~detutils.assigners.build_yolov3_targets`).
        """
        raw = self._raw(outputs)
        if len(targets) != raw[0].shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {raw[0].shape[0]}")
        gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device=raw[0].device)
        return build_yolov3_targets(
            gt_boxes,
            gt_labels,
            gt_mask,
            anchors=[head.anchors for head in self.heads],
            strides=self.strides,
            feature_sizes=[tuple(x.shape[2:4]) for x in raw],
            iou_t=self.config.iou_t,
        )

    def loss(
        self,
        outputs: list[Tensor] | tuple[Tensor, list[Tensor]],
        targets: list[dict[str, Tensor]],
        assignment: list[YOLOv3Targets] | None = None,
    ) -> dict[str, Tensor]:
        """The YOLOv3 loss of a batch.

        Args:
            outputs: what :meth:`forward` returned, in either mode.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
            assignment: what :meth:`assign` returned for these outputs and targets;
                ``None`` assigns here.

        Returns:
            ``{"box", "obj", "cls", "loss"}`` scalars (see :func:`detutils.losses.yolov3_loss`).
        """
        if assignment is None:
            assignment = self.assign(outputs, targets)
        return yolov3_loss(
            self._raw(outputs),
            assignment,
            giou_gain=self.config.giou_gain,
            obj_gain=self.config.obj_gain,
            cls_gain=self.config.cls_gain,
            gr=self.config.gr,
        )

    @torch.no_grad()
    def predict(
        self,
        outputs: list[Tensor] | tuple[Tensor, list[Tensor]],
        score_thr: float = 0.001,
        iou_thr: float = 0.6,
        max_det: int = 300,
        multi_label: bool = True,
        min_wh: float = 2.0,
        max_wh: float = 4096.0,
    ) -> list[dict[str, Tensor]]:
        """Detections per image: score = objectness x class probability, then NMS.

        As the reference: a box keeps every class whose score exceeds ``score_thr``
        (multi-label; one class per box with ``multi_label=False``), boxes with a side
        outside (``min_wh``, ``max_wh``) pixels are dropped, and NMS runs per class. The
        reference also drops boxes with objectness below ``score_thr`` first, which
        changes nothing (a score never exceeds its objectness); its optional "merge"
        NMS (boxes averaged with their suppressed neighbours) is not used here.

        Args:
            outputs: what :meth:`forward` returned, in either mode.
            score_thr: keep (box, class) pairs scoring above this (0.001 for mAP).
            iou_thr: NMS IoU threshold.
            max_det: detections kept per image.
            multi_label: allow several classes per box.
            min_wh, max_wh: box side limits, pixels.

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``.

        Reference: ultralytics/yolov3 (archive) ``utils/utils.py`` ``non_max_suppression``
        (``test.py``: conf_thres 0.001, iou_thres 0.6).
        """
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            decoded = outputs[0]
        else:
            decoded = self.decode(self._raw(outputs))
        boxes = decoded[..., :4]  # (B, N, 4)
        scores = decoded[..., 4:5] * decoded[..., 5:]  # (B, N, C)
        sizes = boxes[..., 2:] - boxes[..., :2]  # (B, N, 2)
        size_ok = ((sizes > min_wh) & (sizes < max_wh)).all(dim=-1)  # (B, N)
        scores = scores * size_ok[..., None]
        return postprocess_detections(
            boxes,
            scores,
            score_thr=score_thr,
            iou_thr=iou_thr,
            max_det=max_det,
            multi_label=multi_label,
        )


def build_yolov3(num_classes: int = 80) -> YOLOv3:
    """YOLOv3 (Darknet-53, heads at strides 32, 16, 8): 61,949,149 parameters at 80 classes."""
    return YOLOv3(replace(copy.deepcopy(YOLOV3_PRESETS["yolov3"]), num_classes=num_classes))


def build_yolov3_tiny(num_classes: int = 80) -> YOLOv3:
    """YOLOv3-tiny (heads at strides 32, 16): 8,852,366 parameters at 80 classes."""
    preset = copy.deepcopy(YOLOV3_PRESETS["yolov3-tiny"])
    return YOLOv3(replace(preset, num_classes=num_classes))
