"""The course's Faster R-CNN beside torchvision's: AP50 after a number of steps, step time.

    python benchmarks/faster_rcnn_peer.py [--steps 500] [--every 100] [--data data/shapes]
        [--out runs/faster-rcnn-peer] [--threads 2] [--seed 0] [--peer-only | --course-only]

The peer is torchvision's ``FasterRCNN`` built from the same parts as the course's CPU
preset ``faster-rcnn-r18half-fpn64``: the same half-width ResNet-18 with the same
weights the course pre-trained on the shapes set (notebook 04), an FPN of 64 channels
over C2 to C5 with P6 max-pooled from P5 (torchvision's ``LastLevelMaxPool``), the same
anchors (8 strides square, ratios 0.5, 1, 2 on strides 4 to 64), an RPN conv of 64
channels, 1000 proposals per level before NMS and 500 kept per image in training (500 /
500 at test time), 256 anchors sampled at 0.5 and 128 RoIs at 0.25 per image, a box head
of two 256-wide layers. Both train in the course's engine on the course's ``cpu``
schedule of Faster R-CNN (the same data, 320 px images, flips and colour jitter, batch,
AdamW, learning rate, warm-up and cosine, gradient clipping), in float32, for exactly
``--steps`` steps, and both are scored by the same COCO evaluation after every
``--every`` steps; the peer's own post-processing makes its boxes.

What stays torchvision's own: smooth L1 (beta 1/9) where mmdet and the course use L1,
losses divided by the samples actually drawn (mmdet counts at least one positive and one
negative per image),
RoIAlign with ``aligned=False`` and 2 samples per bin side, the level of a RoI by
``4 + log2(sqrt(area) / 224)`` (the same levels as mmdet's ``finest_scale`` 56), and
class 0 as background (the wrapper below shifts the labels). Set up fairly (see the
README): the backbone's batch norms are trainable in both, and torchvision's resize is
the identity (``min_size = max_size = 320``). A benchmark run should have the machine
to itself.
"""

import sys
from pathlib import Path

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from atss_peer import TorchvisionPeer, compare  # noqa: E402

from detutils.engine.presets import schedules_for  # noqa: E402
from detutils.engine.pretrain import load_pretrained  # noqa: E402
from detutils.models import build_detector  # noqa: E402

COURSE = "faster-rcnn-r18half-fpn64"


class FasterRCNNPeer(TorchvisionPeer):
    """torchvision's Faster R-CNN behind the course's calls: its class 0 is background,
    so labels go in shifted up by one and come out shifted down."""

    def loss(self, outputs, targets, assignment=None) -> dict[str, torch.Tensor]:
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        losses = self.detector(list(outputs), shifted)
        return {**losses, "loss": sum(losses.values())}

    @torch.no_grad()
    def predict(self, outputs, score_thr=0.05, iou_thr=0.5, max_det=100):
        heads = self.detector.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = score_thr, iou_thr, max_det
        detections = self.detector(list(outputs))
        return [{**d, "labels": d["labels"] - 1} for d in detections]


def build_faster_rcnn_peer(num_classes: int) -> FasterRCNNPeer:
    """torchvision's Faster R-CNN on the course preset's backbone and settings."""
    course = build_detector(COURSE, num_classes=num_classes)
    load_pretrained(course)  # the same weights the course's run starts from
    config = course.config
    channels = config.fpn_channels
    backbone = BackboneWithFPN(
        course.backbone,  # conv1, bn1, relu, maxpool, layer1..4: what the getter walks
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=list(course.backbone.out_channels),
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
    )
    sizes = tuple((config.anchor_scales[0] * stride,) for stride in config.strides)
    size = schedules_for(COURSE)["cpu"].img_size
    detector = FasterRCNN(
        backbone, None, min_size=size, max_size=size,
        image_mean=list(config.pixel_mean), image_std=list(config.pixel_std),
        rpn_anchor_generator=AnchorGenerator(sizes, (config.anchor_ratios,) * len(sizes)),
        rpn_head=RPNHead(channels, config.num_anchors),
        rpn_pre_nms_top_n_train=config.train_nms_pre,
        rpn_post_nms_top_n_train=config.train_proposals,
        rpn_pre_nms_top_n_test=config.test_nms_pre, rpn_post_nms_top_n_test=config.test_proposals,
        rpn_nms_thresh=config.proposal_iou, rpn_fg_iou_thresh=config.rpn_pos_iou,
        rpn_bg_iou_thresh=config.rpn_neg_iou, rpn_batch_size_per_image=config.rpn_num,
        rpn_positive_fraction=config.rpn_pos_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], config.roi_size, 2),
        box_head=TwoMLPHead(channels * config.roi_size**2, config.fc_channels),
        box_predictor=FastRCNNPredictor(config.fc_channels, num_classes + 1),
        box_fg_iou_thresh=config.roi_pos_iou, box_bg_iou_thresh=config.roi_neg_iou,
        box_batch_size_per_image=config.roi_num, box_positive_fraction=config.roi_pos_fraction,
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
    )  # fmt: skip
    return FasterRCNNPeer(detector, "torchvision-faster-rcnn", num_classes)


def main(argv: list[str] | None = None) -> int:
    return compare(
        argv, COURSE, build_faster_rcnn_peer, __doc__.split("\n")[0], "runs/faster-rcnn-peer"
    )


if __name__ == "__main__":
    sys.exit(main())
