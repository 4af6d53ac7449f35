"""Faster R-CNN: the network, both stages' assignment and sampling, the losses, the
proposals and the predictions, compared with mmdet 3.3 on the same inputs.

The mmdet values were computed in a separate environment (mmdet 3.3.0, mmcv-lite 2.1.0,
torch 2.14.1 on the CPU, torchvision's roi_align in place of mmcv's) from the inputs
that the functions below make; a sampler of 10**6 takes every candidate, which makes
the comparison independent of the random stream.
"""

import pytest
import torch
from torch import nn

from detutils.assigners import BACKGROUND
from detutils.boxes import box_recall
from detutils.losses.faster_rcnn import roi_loss, rpn_loss
from detutils.models import build_detector
from detutils.models.faster_rcnn import (
    BoxHead,
    FasterRCNN,
    FasterRCNNConfig,
    FasterRCNNOutputs,
    RoIExtractor,
    RPNHead,
    build_faster_rcnn_r50,
)
from detutils.models.necks import FPN

STRIDES = (4, 8, 16, 32, 64)
IMG = 128


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ------------------------------------------------------------------ the shared inputs
def _targets() -> list[dict[str, torch.Tensor]]:
    """Image 0: five boxes (one of 0.6 x 0.5 px, two overlapping); image 1: one box the
    size of the image; image 2: none."""
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 20.0, 120.0, 110.0],
                                [30.0, 80.0, 42.0, 90.0], [5.0, 5.0, 5.6, 5.5],
                                [40.0, 30.0, 90.0, 70.0]]),
         "labels": torch.tensor([0, 1, 2, 0, 1])},
        {"boxes": torch.tensor([[0.0, 0.0, 128.0, 128.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip


def _rpn_outputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    objectness, deltas = [], []
    for stride in STRIDES:
        side = IMG // stride
        objectness.append(torch.randn((3, 3, side, side), generator=generator) * 2.0)
        deltas.append(torch.randn((3, 12, side, side), generator=generator) * 0.5)
    return objectness, deltas


def _proposals() -> list[torch.Tensor]:
    """Per image: each box jittered three times, then 40 random boxes."""
    generator = torch.Generator().manual_seed(1)
    proposals = []
    for target in _targets():
        boxes = target["boxes"]
        jitter = boxes.repeat(3, 1) + torch.randn((3 * len(boxes), 4), generator=generator) * 6
        xy = torch.rand((40, 2), generator=generator) * 110.0
        wh = torch.rand((40, 2), generator=generator) * 60.0 + 2.0
        image = torch.cat([jitter, torch.cat([xy, xy + wh], 1)]).clamp(0, 128)
        image[:, 2:] = torch.maximum(image[:, 2:], image[:, :2] + 1.0)
        proposals.append(image)
    return proposals


def _features() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn((3, 8, IMG // s, IMG // s), generator=generator) for s in STRIDES[:4]]


def _roi_outputs(num_rois: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn((num_rois, 4), generator=generator) * 2.0,
        torch.randn((num_rois, 12), generator=generator) * 0.5,
    )


def _model(**overrides) -> FasterRCNN:
    config = dict(
        num_classes=3, img_size=128, depth=18, backbone_width=8, frozen_stages=-1,
        norm_eval=False, pretrained=None, fpn_channels=8, rpn_channels=8, fc_channels=16,
        rpn_num=10**6, roi_num=10**6, test_nms_pre=300, test_proposals=100,
    )  # fmt: skip
    return FasterRCNN(FasterRCNNConfig(**(config | overrides)))


def _given_outputs() -> FasterRCNNOutputs:
    objectness, deltas = _rpn_outputs()
    features = _features()
    features.append(features[-1][..., ::2, ::2])  # P6 (unused by these checks)
    proposals = _proposals()
    return FasterRCNNOutputs(features, objectness, deltas, proposals, [p[:, 0] for p in proposals])


# --------------------------------------------------------------------- the network
def test_r50_has_the_parameters_of_mmdet():
    model = build_faster_rcnn_r50(80)
    assert _count(model) == 41_753_056
    assert _count(model.backbone) == 23_508_032
    assert _count(model.neck) == 3_344_384  # 4 laterals + 4 output convs; P6 has no weights
    assert _count(model.rpn_head) == 256 * 256 * 9 + 256 + 256 * 3 + 3 + 256 * 12 + 12
    fc = 256 * 7 * 7 * 1024 + 1024 + 1024 * 1024 + 1024
    assert _count(model.roi_head) == fc + 1024 * 81 + 81 + 1024 * 320 + 320
    assert model.config.num_anchors == 3


def test_cpu_preset_is_built_by_name():
    model = build_detector("faster-rcnn-r18half-fpn64", num_classes=3)
    assert model.name == "faster-rcnn-r18half-fpn64" and model.config.fc_channels == 256
    assert model.config.pretrained == "shapes-resnet18-half"


def test_output_shapes_in_training_and_at_test_time():
    torch.manual_seed(0)
    model = _model(test_nms_pre=1000, test_proposals=1000)
    images = torch.rand(2, 3, 128, 96)
    outputs = model.train()(images)
    sizes = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    assert [tuple(x.shape) for x in outputs.objectness] == [(2, 3, *s) for s in sizes]
    assert [tuple(x.shape) for x in outputs.deltas] == [(2, 12, *s) for s in sizes]
    assert [tuple(x.shape[-2:]) for x in outputs.features] == sizes
    for proposals, scores in zip(outputs.proposals, outputs.proposal_scores, strict=True):
        assert proposals.shape[0] == scores.shape[0] <= 1000 and not proposals.requires_grad
        assert (proposals[:, 0::2] <= 96).all() and (proposals[:, 1::2] <= 128).all()
        assert (proposals[:, 2:] > proposals[:, :2]).all()  # no zero-width proposal
        assert torch.equal(scores, scores.sort(descending=True).values)
    # initial objectness: normal(0, 0.01) weights, zero bias -> probabilities near 0.5
    assert (outputs.objectness[0].sigmoid() - 0.5).abs().max() < 0.05
    dets = model.eval().predict(model(images))
    assert len(dets) == 2 and all(d["boxes"].shape[1] == 4 for d in dets)


def test_fpn_makes_p6_by_max_pooling():
    fpn = FPN((8, 16, 32, 64), 8, 5, extra="maxpool")
    maps = [torch.randn(1, c, 40 // 2**i, 40 // 2**i) for i, c in enumerate((8, 16, 32, 64))]
    outputs = fpn(maps)
    assert [x.shape[-1] for x in outputs] == [40, 20, 10, 5, 3]
    assert torch.equal(outputs[4], outputs[3][..., ::2, ::2])
    with pytest.raises(ValueError, match="extra must be"):
        FPN((8,), 8, 2, extra="pool")


def test_heads_work_on_any_pyramid():
    head = RPNHead(16, 16, num_anchors=9)  # Co-DETR: 3 scales per octave x 3 ratios
    objectness, deltas = head([torch.randn(2, 16, s, s) for s in (16, 8, 4, 2)])
    assert [x.shape[1] for x in objectness] == [9] * 4 and deltas[0].shape[1] == 36
    box_head = BoxHead(16, 7, 32, num_classes=5)
    cls, reg = box_head(torch.randn(4, 16, 7, 7))
    assert cls.shape == (4, 6) and reg.shape == (4, 20)


# ----------------------------------------------------------- against mmdet 3.3
def test_rpn_assignment_and_loss_equal_mmdet():
    model = _model()
    outputs = _given_outputs()
    assignment = model.assign(outputs, _targets())
    rpn = assignment.rpn
    anchors, counts = model.anchors([tuple(x.shape[-2:]) for x in outputs.objectness])
    assert counts == [3072, 768, 192, 48, 12]
    positives = [torch.nonzero(row >= 0).squeeze(1).tolist() for row in rpn.gt_index]
    assert positives == [
        [603, 699, 795, 891, 1104, 1200, 1296, 3446, 3491, 3494, 3542],
        [3925, 3946, 3949, 3952, 3973],
        [],
    ]
    assert (rpn.gt_index == BACKGROUND).sum(dim=1).tolist() == [3494, 3957, 4092]
    assert (~assignment.rpn_sampled).sum(dim=1).tolist() == [587, 130, 0]  # ignored
    objectness, deltas = model.flatten(outputs.objectness, outputs.deltas)
    losses = rpn_loss(
        objectness, deltas, anchors, rpn.gt_index, assignment.rpn_sampled, assignment.gt_boxes
    )
    # mmdet: sums of the per-level losses, divided by 11560 (11559 sampled anchors, plus
    # one for image 2, which has no positive)
    assert losses["rpn_cls"].item() == pytest.approx(1.061050534248352, rel=2e-6)
    assert losses["rpn_bbox"].item() == pytest.approx(0.0026083518750965595, rel=2e-6)


def test_proposals_equal_mmdet():
    model = _model().eval()
    objectness, deltas = _rpn_outputs()
    proposals, scores = model.propose(objectness, deltas, (IMG, IMG))
    expected = [
        (24543.08894252777, 98.9631952047348,
         [[16.122859954833984, 32.00084686279297, 74.34075927734375, 54.78289794921875],
          [43.31973648071289, 3.6550235748291016, 87.9873046875, 43.19044494628906]],
         [0.9997262358665466, 0.9996142387390137]),
        (27640.883276462555, 98.74413985013962,
         [[0.0, 85.30278015136719, 7.05081844329834, 122.65261840820312],
          [14.632415771484375, 58.57286071777344, 95.04902648925781, 110.73924255371094]],
         [0.9994359612464905, 0.9988383650779724]),
        (22784.972903251648, 98.95102387666702,
         [[0.0, 16.918537139892578, 0.43410491943359375, 121.72842407226562],
          [14.108442306518555, 110.41041564941406, 33.06549835205078, 128.0]],
         [0.9991279244422913, 0.9989253878593445]),
    ]  # fmt: skip
    for image, (box_sum, score_sum, first_boxes, first_scores) in enumerate(expected):
        assert proposals[image].shape == (100, 4)
        assert proposals[image].double().sum().item() == pytest.approx(box_sum, rel=1e-6)
        assert scores[image].double().sum().item() == pytest.approx(score_sum, rel=1e-6)
        torch.testing.assert_close(proposals[image][:2], torch.tensor(first_boxes))
        torch.testing.assert_close(scores[image][:2], torch.tensor(first_scores))


def test_roi_sampling_and_losses_equal_mmdet():
    model = _model()
    assignment = model.assign(_given_outputs(), _targets())
    labels = assignment.roi_labels
    # mmdet: per image the positives (ground truth first), then the negatives, in order
    assert len(labels) == 144
    assert labels[:14].tolist() == [0, 1, 2, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    assert (labels[14:60] == BACKGROUND).all() and labels[60:64].tolist() == [2, 2, 2, 2]
    assert (labels[64:] == BACKGROUND).all()
    assert assignment.roi_is_gt.nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4, 60]
    assert assignment.rois[:, 0].long().bincount().tolist() == [60, 44, 40]
    assert assignment.rois[:, 1:].double().sum().item() == pytest.approx(38854.11050796509)
    cls_logits, deltas = _roi_outputs(144, seed=3)
    rois = assignment.rois[:, 1:]
    l1 = roi_loss(cls_logits, deltas, rois, labels, assignment.roi_targets)
    assert l1["roi_cls"].item() == pytest.approx(2.4740355014801025, rel=2e-6)
    assert l1["roi_bbox"].item() == pytest.approx(0.2823069393634796, rel=2e-6)
    assert l1["roi_accuracy"].item() == pytest.approx(25.694442749023438)
    giou = roi_loss(
        cls_logits, deltas, rois, labels, assignment.roi_targets, bbox_weight=10.0,
        bbox_loss="giou", reg_decoded=True,
    )  # fmt: skip
    assert giou["roi_bbox"].item() == pytest.approx(0.33894461393356323, rel=2e-6)


def test_roi_extractor_equals_mmdet():
    model = _model()
    assignment = model.assign(_given_outputs(), _targets())
    extractor = RoIExtractor((4, 8, 16, 32), 7, 0, 56.0)
    levels = extractor.map_levels(assignment.rois[:, 1:])
    assert levels.bincount(minlength=4).tolist() == [140, 4, 0, 0]
    assert levels.nonzero().squeeze(1).tolist() == [60, 61, 62, 63]  # image 1's big box
    pooled = extractor(_features(), assignment.rois)
    assert pooled.shape == (144, 8, 7, 7)
    assert pooled.double().sum().item() == pytest.approx(445.2555765829311, rel=1e-5)
    assert pooled.double().square().sum().item() == pytest.approx(18720.634715797125, rel=1e-6)
    torch.testing.assert_close(
        pooled[0, 0, 0],
        torch.tensor([0.19965574145317078, -0.015413559973239899, 0.47515764832496643,
                      -0.1741400808095932, -0.3592555820941925, -0.12243543565273285,
                      -0.292025625705719]),
    )  # fmt: skip


def test_predictions_equal_mmdet():
    model = _model().eval()
    outputs = _given_outputs()
    given = [_roi_outputs(len(p), seed=10 + i) for i, p in enumerate(outputs.proposals)]
    logits, deltas = (torch.cat([pair[k] for pair in given]) for k in (0, 1))
    model.roi_forward = lambda outputs, rois: (logits, deltas)
    dets = model.predict(outputs)
    expected = [
        (100, 25967.449553012848, 38.32610433548689, [2, 0, 1, 1, 2, 0, 2, 0, 1, 0],
         [88.06843566894531, 24.366355895996094, 101.96733093261719, 60.27235412597656],
         [0.9585978984832764, 0.9053881764411926, 0.8581799864768982]),
        (76, 20425.46395635605, 30.534375809133053, [2, 0, 2, 2, 0, 0, 1, 1, 0, 0],
         [0.0, 3.034698486328125, 117.53990173339844, 126.84906005859375],
         [0.99613356590271, 0.9774408936500549, 0.9696871042251587]),
        (75, 21435.916937828064, 28.659003648906946, [1, 1, 2, 1, 1, 0, 0, 0, 0, 1],
         [17.289949417114258, 45.36817932128906, 26.13694190979004, 101.17617797851562],
         [0.979221761226654, 0.9660477638244629, 0.9494433999061584]),
    ]  # fmt: skip
    for det, (count, box_sum, score_sum, labels, first_box, scores) in zip(
        dets, expected, strict=True
    ):
        assert len(det["scores"]) == count
        assert det["labels"][:10].tolist() == labels
        assert det["boxes"].double().sum().item() == pytest.approx(box_sum, rel=1e-6)
        assert det["scores"].double().sum().item() == pytest.approx(score_sum, rel=1e-6)
        torch.testing.assert_close(det["boxes"][0], torch.tensor(first_box))
        torch.testing.assert_close(det["scores"][:3], torch.tensor(scores))


# ------------------------------------------------------------- the whole detector
def test_training_step_reaches_every_part():
    torch.manual_seed(0)
    model = _model(rpn_num=256, roi_num=64).train()
    outputs = model(torch.rand(3, 3, 128, 128))
    losses = model.loss(outputs, _targets())
    assert set(losses) == {"rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox", "roi_accuracy", "loss"}
    total = sum(losses[k] for k in ("rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox"))
    torch.testing.assert_close(losses["loss"], total)
    losses["loss"].backward()
    for part in (model.backbone, model.neck, model.rpn_head, model.roi_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_sampling_follows_the_seed_and_the_sizes():
    model = _model(rpn_num=64, roi_num=32)
    outputs = _given_outputs()
    torch.manual_seed(3)
    first = model.assign(outputs, _targets())
    torch.manual_seed(3)
    again = model.assign(outputs, _targets())
    assert torch.equal(first.rpn_sampled, again.rpn_sampled) and torch.equal(first.rois, again.rois)
    assert (first.rpn_sampled.sum(dim=1) == 64).all()
    assert first.rois[:, 0].long().bincount().tolist() == [32, 32, 32]
    positives = (first.roi_labels >= 0).view(3, 32).sum(dim=1)
    assert (positives <= 8).all() and positives[2] == 0  # at most a quarter; none without boxes


def test_degenerate_boxes_give_finite_losses():
    torch.manual_seed(0)
    model = _model(rpn_num=256, roi_num=64).train()
    outputs = model(torch.rand(2, 3, 64, 64))
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 10.4, 10.3], [20.0, 5.0, 20.0, 30.0]]),
         "labels": torch.tensor([0, 1])},  # a sub-pixel box and one of zero width
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip
    losses = model.loss(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a zero-width box is not added as a proposal (its deltas would be infinite)
    assignment = model.assign(outputs, targets)
    assert assignment.roi_is_gt.sum() == 1
    # proposals that collapsed to zero area never become positives
    flat = outputs._replace(proposals=[torch.tensor([[5.0, 5.0, 5.0, 9.0]]).repeat(10, 1)] * 2)
    flat_assignment = model.assign(flat, targets)
    assert (flat_assignment.roi_labels[~flat_assignment.roi_is_gt] == BACKGROUND).all()
    assert all(torch.isfinite(v) for v in model.loss(flat, targets, flat_assignment).values())


def test_no_box_in_the_batch_trains_background_only():
    torch.manual_seed(0)
    model = _model(rpn_num=256, roi_num=64).train()
    outputs = model(torch.rand(2, 3, 64, 64))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model.loss(outputs, empty)
    assert losses["rpn_bbox"] == 0 and losses["roi_bbox"] == 0 and losses["rpn_cls"] > 0
    assert losses["roi_accuracy"] >= 0 and torch.isfinite(losses["loss"])


def test_bad_arguments_name_the_culprit():
    model = _model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 128))
    with pytest.raises(ValueError, match="strides must be"):
        _model(strides=(8, 16, 32, 64, 128))
    with pytest.raises(ValueError, match="roi_bbox_loss"):
        _model(roi_bbox_loss="giou")
    outputs = _given_outputs()
    with pytest.raises(ValueError, match="targets for a batch of 3"):
        model.assign(outputs, _targets()[:2])
    with pytest.raises(ValueError, match="outputs must be what"):
        model.loss(tuple(outputs), _targets())
    cls_logits, deltas = _roi_outputs(4, seed=0)
    with pytest.raises(ValueError, match="class ids below 3"):
        roi_loss(
            cls_logits, deltas, torch.rand(4, 4), torch.tensor([0, 3, -1, 1]), torch.rand(4, 4)
        )


def test_proposal_recall():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 12.0], [21.0, 21.0, 31.0, 31.0]]), torch.rand(3, 4)]
    # IoUs 0.833 and 0.681: both found at 0.5, one at 0.7; with one proposal, one at 0.5
    assert box_recall(proposals, gt) == {0.5: 1.0, 0.7: 0.5}
    assert box_recall(proposals, gt, max_proposals=1) == {0.5: 0.5, 0.7: 0.5}
    assert box_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)]) == {0.5: 0.0, 0.7: 0.0}
    with pytest.raises(ValueError, match="1 proposal sets for 2 images"):
        box_recall(proposals[:1], gt)
