"""The course's ATSS beside torchvision's RetinaNet: AP50 after a number of steps, step time.

    python benchmarks/atss_retinanet_peer.py [--steps 500] [--every 100] [--data data/shapes]
        [--out runs/atss-retinanet-peer] [--threads 2] [--seed 0] [--peer-only | --course-only]

ATSS's other natural peer: RetinaNet (Lin et al., 2017), the anchor-based detector that
ATSS changes in its assignment (max IoU 0.5 / 0.4 over 9 anchors per location, against
adaptive training sample selection over one), built from the same parts as the course's
CPU preset ``atss-r18half-fpn64`` and set up as ``benchmarks/atss_peer.py`` sets up FCOS:
the same half-width ResNet-18 with the same pre-trained weights, an FPN of 64 channels
over C3 to C5 with P6 and P7 from P5's output, towers of 2 stacked convs, trained by the
course's engine on ATSS's ``cpu`` schedule for exactly ``--steps`` steps and scored by the
same COCO evaluation. The head is torchvision's ``retinanet_resnet50_fpn_v2`` variant
(GroupNorm in the towers, GIoU for the boxes: the same losses' kinds as ATSS, focal and
GIoU) with its towers cut from 4 convs to the preset's 2; torchvision's anchors (sides 4,
5 and 6.3 strides, ratios 0.5, 1 and 2), matcher (0.5 / 0.4, low-quality matches) and
post-processing (score 0.05, the 1000 best per level, NMS 0.6 here as ATSS's, 100 per
image). A benchmark run should have the machine to itself.
"""

import sys
from functools import partial
from pathlib import Path

from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

sys.path.insert(0, str(Path(__file__).resolve().parent))

from atss_peer import COURSE, TorchvisionPeer, compare, peer_backbone  # noqa: E402

from detutils.engine.presets import schedules_for  # noqa: E402


def build_retinanet_peer(num_classes: int) -> TorchvisionPeer:
    """torchvision RetinaNet (v2 head) on the course preset's backbone and weights."""
    course, backbone = peer_backbone(num_classes)
    channels = course.config.fpn_channels
    head = RetinaNetHead(channels, 9, num_classes, norm_layer=partial(nn.GroupNorm, 32))
    convs = course.config.stacked_convs
    head.classification_head.conv = head.classification_head.conv[:convs]
    head.regression_head.conv = head.regression_head.conv[:convs]
    head.regression_head._loss_type = "giou"  # as retinanet_resnet50_fpn_v2
    size = schedules_for(COURSE)["cpu"].img_size
    detector = RetinaNet(
        backbone, num_classes, min_size=size, max_size=size, head=head,
        image_mean=list(course.config.pixel_mean), image_std=list(course.config.pixel_std),
        score_thresh=0.05, nms_thresh=0.6, detections_per_img=100, topk_candidates=1000,
    )  # fmt: skip
    return TorchvisionPeer(detector, "torchvision-retinanet", num_classes)


def main(argv: list[str] | None = None) -> int:
    return compare(
        argv, COURSE, build_retinanet_peer, __doc__.split("\n")[0], "runs/atss-retinanet-peer"
    )


if __name__ == "__main__":
    sys.exit(main())
