"""Tests of the ATSS detector: ResNet + FPN + ATSS head, its loss and its predictions,
against values computed by mmdet 3.3 (``ATSSHead.loss_by_feat`` and ``predict_by_feat``
on the same head outputs)."""

import pytest
import torch
from torch import nn

from detutils.assigners import assign_atss, assign_atss_batched, pad_ground_truth
from detutils.losses import atss_loss
from detutils.losses.atss import centerness_targets
from detutils.models import build_detector
from detutils.models.atss import ATSS, ATSSConfig, ATSSHead, build_atss_r50
from detutils.models.backbones import ResNetBackbone
from detutils.models.necks import FPN


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _bare(num_classes: int, img_size: int = 128) -> ATSS:
    """The smallest ATSS: only its anchors, assignment, loss and predictions are used."""
    config = ATSSConfig(
        num_classes=num_classes, img_size=img_size, depth=18, backbone_width=8,
        fpn_channels=8, head_channels=8, stacked_convs=1, norm_groups=8,
    )  # fmt: skip
    return ATSS(config)


def test_r50_has_the_parameters_of_mmdet():
    model = build_atss_r50(num_classes=80)
    # ResNet-50 without fc; FPN: 1x1 laterals from 512, 1024, 2048 and five 3x3 convs of
    # 256 (three outputs, P6 and P7); head: two towers of 4 x (3x3 conv 256 without
    # bias + GroupNorm), 3x3 convs to 80 classes, 4 deltas, 1 centerness, 5 scales.
    assert _count(model.backbone) == 23_508_032
    assert _count(model.neck) == (512 + 1024 + 2048) * 256 + 3 * 256 + 5 * (9 * 256 * 256 + 256)
    tower = 4 * (9 * 256 * 256 + 2 * 256)
    outputs = 9 * 256 * (80 + 4 + 1) + 80 + 4 + 1
    assert _count(model.head) == 2 * tower + outputs + 5 == 4_918_618
    assert _count(model) == 32_295_322


def test_cpu_preset_is_built_by_name():
    model = build_detector("atss-r18half-fpn64", num_classes=6)
    assert model.name == "atss-r18half-fpn64" and model.config.pretrained
    assert model.backbone.out_channels == (64, 128, 256)
    assert _count(model) < 3.5e6


def test_output_shapes_and_initial_probability():
    torch.manual_seed(0)
    model = build_detector("atss-r18half-fpn64", num_classes=6).eval()
    class_maps, delta_maps, centerness_maps = model(torch.rand(2, 3, 320, 320))
    sides = [40, 20, 10, 5, 3]
    assert [tuple(x.shape) for x in class_maps] == [(2, 6, s, s) for s in sides]
    assert [tuple(x.shape) for x in delta_maps] == [(2, 4, s, s) for s in sides]
    assert [tuple(x.shape) for x in centerness_maps] == [(2, 1, s, s) for s in sides]
    anchors, num_per_level = model.anchors([(s, s) for s in sides])
    assert num_per_level == [s * s for s in sides] and anchors.shape == (2134, 4)
    # one square of 8 strides centred on each grid point (mmdet's anchors: offset 0)
    torch.testing.assert_close(anchors[0], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    torch.testing.assert_close(anchors[-1], torch.tensor([-256.0, -256.0, 768.0, 768.0]))
    prior_bias = torch.full((6,), -4.59512)
    torch.testing.assert_close(model.head.atss_cls.bias, prior_bias, atol=1e-5, rtol=0)


def test_head_works_on_any_pyramid():
    # Co-DETR's auxiliary use: one stacked conv on four levels of 32 channels
    head = ATSSHead(num_classes=3, in_channels=32, feat_channels=32, stacked_convs=1, num_levels=4)
    maps = [torch.rand(1, 32, s, s) for s in (16, 8, 4, 2)]
    classes, deltas, centerness = head(maps)
    assert [tuple(x.shape) for x in classes] == [(1, 3, s, s) for s in (16, 8, 4, 2)]
    with pytest.raises(ValueError, match="4 levels, got 3"):
        head(maps[:3])


def test_fpn_levels():
    fpn = FPN([64, 128, 256], 32, num_outs=5)
    maps = fpn([torch.rand(1, 64, 40, 40), torch.rand(1, 128, 20, 20), torch.rand(1, 256, 10, 10)])
    assert [tuple(x.shape[-2:]) for x in maps] == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    with pytest.raises(ValueError, match="expects 3 maps"):
        fpn(maps[:2])


def test_backbone_freezing_and_weights():
    backbone = ResNetBackbone(50, frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert not backbone.layer3[0].bn1.training  # norm_eval: running statistics
    half = ResNetBackbone(18, width=32)
    half.load_weights(ResNetBackbone(18, width=32).state_dict())
    with pytest.raises(ValueError, match="conv1.weight has shape"):
        half.load_weights(ResNetBackbone(18).state_dict(), "resnet18.pth")
    with pytest.raises(ValueError, match="no weights for"):
        half.load_weights({})


# --------------------------------------------------------------- against mmdet 3.3
def _small_case():
    """Batch of three 128 px images, 3 classes: boxes of three sizes; a sub-pixel box and
    a box the size of the image; no box at all."""
    torch.manual_seed(0)
    sides = [16, 8, 4, 2, 1]
    cls = [torch.randn(3, 3, s, s) * 1.5 - 2.0 for s in sides]
    deltas = [torch.randn(3, 4, s, s) * 0.5 for s in sides]
    centerness = [torch.randn(3, 1, s, s) for s in sides]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12, 40, 50], [60, 20, 120, 110], [5, 70, 20, 78]]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {
            "boxes": torch.tensor([[30.2, 30.1, 30.7, 30.6], [0.0, 0, 128, 128]]),
            "labels": torch.tensor([1, 0]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return (cls, deltas, centerness), targets


def _large_case():
    """One 512 px image, 3 classes, three boxes (nms_pre=1000 binds on P3 here)."""
    torch.manual_seed(1)
    sides = [64, 32, 16, 8, 4]
    cls = [torch.randn(1, 3, s, s) * 2 for s in sides]
    deltas = [torch.randn(1, 4, s, s) * 0.3 for s in sides]
    centerness = [torch.randn(1, 1, s, s) for s in sides]
    targets = [
        {
            "boxes": torch.tensor([[50.0, 60, 200, 220], [300, 100, 480, 400], [10, 400, 60, 500]]),
            "labels": torch.tensor([0, 1, 2]),
        }
    ]
    return (cls, deltas, centerness), targets


# mmdet's positives, (image, anchor, label), and loss sums over the five levels
MMDET_SMALL_POSITIVES = (
    [(0, a, 0) for a in (50, 51, 52, 66, 67, 68, 82, 83, 84)]
    + [(0, a, 2) for a in (122, 123, 124, 138, 139, 140)]
    + [(0, 145, 1), (0, 146, 1)]
    + [(0, a, 2) for a in (154, 155, 156)]
    + [(1, a, 0) for a in (283, 284, 285, 291, 292, 293, 299, 300, 301)]
)
MMDET_SMALL_LOSSES = {"cls": 5.688523769378662, "bbox": 1.0240094661712646,
                      "centerness": 0.7351202964782715, "loss": 7.447653293609619}  # fmt: skip
MMDET_LARGE_POSITIVES = (
    [(0, a, 2) for a in (3524, 3525, 3587, 3588, 3589, 3590, 3651, 3652, 3653)]
    + [(0, a, 0) for a in (4359, 4360, 4361, 4391, 4392, 4393, 4423, 4424, 4425)]
    + [(0, a, 1) for a in (5243, 5244, 5245, 5259, 5260, 5261, 5275, 5276, 5277)]
)
MMDET_LARGE_LOSSES = {"cls": 318.4694519042969, "bbox": 0.9408293962478638,
                      "centerness": 0.7963790893554688, "loss": 320.2066650390625}  # fmt: skip


def _positives(assignment) -> list[tuple[int, int, int]]:
    image, anchor = (assignment.gt_index >= 0).nonzero(as_tuple=True)
    labels = assignment.labels[image, anchor]
    return list(zip(image.tolist(), anchor.tolist(), labels.tolist(), strict=True))


@pytest.mark.parametrize(
    "case, img_size, positives, losses",
    [
        (_small_case, 128, MMDET_SMALL_POSITIVES, MMDET_SMALL_LOSSES),
        (_large_case, 512, MMDET_LARGE_POSITIVES, MMDET_LARGE_LOSSES),
    ],
)
def test_assignment_and_loss_equal_mmdet(case, img_size, positives, losses):
    outputs, targets = case()
    model = _bare(3, img_size)
    assignment = model.assign(outputs, targets)
    assert _positives(assignment.assignment) == positives
    ours = model.loss(outputs, targets, assignment)
    for name, value in losses.items():
        torch.testing.assert_close(ours[name].item(), value, rtol=2e-6, atol=0)


def test_predictions_equal_mmdet():
    # mmdet's predict_by_feat on the large case: 100 detections, the five best scores,
    # the three best boxes, the sum of the scores and the labels' counts
    outputs, _ = _large_case()
    (dets,) = _bare(3, 512).predict(outputs)
    assert len(dets["scores"]) == 100
    torch.testing.assert_close(
        dets["scores"][:5],
        torch.tensor(
            [
                0.9321765303611755,
                0.9207407236099243,
                0.9206792116165161,
                0.919211208820343,
                0.9187562465667725,
            ]
        ),  # fmt: skip
    )
    torch.testing.assert_close(
        dets["boxes"][:3],
        torch.tensor(
            [
                [180.38739013671875, 256.9002380371094, 245.4410400390625, 316.8050231933594],
                [320.937255859375, 341.4493713378906, 439.678466796875, 467.6130676269531],
                [69.00527954101562, 105.5501708984375, 512.0, 512.0],
            ]
        ),  # fmt: skip
    )
    assert dets["labels"][:10].tolist() == [0, 1, 0, 1, 2, 0, 0, 0, 1, 1]
    torch.testing.assert_close(dets["scores"].sum().item(), 84.07408905029297, rtol=1e-6, atol=0)
    assert torch.bincount(dets["labels"], minlength=3).tolist() == [32, 37, 31]
    outputs, _ = _small_case()
    first = _bare(3).predict(outputs)[0]
    assert first["labels"][:10].tolist() == [2, 0, 2, 0, 2, 1, 0, 0, 1, 1]
    torch.testing.assert_close(first["scores"].sum().item(), 31.41550636291504, rtol=1e-6, atol=0)


def test_centerness_is_multiplied_after_the_threshold():
    # a class score above 0.05 times a centerness of 0.1 still gives a detection, below it
    model = _bare(1)
    sides = [16, 8, 4, 2, 1]
    cls = [torch.full((1, 1, s, s), -20.0) for s in sides]
    cls[0][0, 0, 5, 5] = 0.0  # probability 0.5
    cls[0][0, 0, 9, 9] = -3.5  # probability 0.029: under the threshold
    deltas = [torch.zeros(1, 4, s, s) for s in sides]
    centerness = [torch.full((1, 1, s, s), -2.1972246) for s in sides]  # sigmoid: 0.1
    (dets,) = model.predict((cls, deltas, centerness))
    torch.testing.assert_close(dets["scores"], torch.tensor([0.05]))
    torch.testing.assert_close(dets["boxes"], torch.tensor([[8.0, 8.0, 72.0, 72.0]]))


# ---------------------------------------------------------- batched = per image
def test_batched_assignment_equals_per_image_on_anchors():
    generator = torch.Generator().manual_seed(3)
    model = _bare(5, 320)
    sizes = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    anchors, num_per_level = model.anchors(sizes)
    targets = []
    for count in (0, 1, 7, 20):
        corner = torch.randint(0, 300, (count, 2), generator=generator).float()
        side = torch.randint(1, 200, (count, 2), generator=generator).float()
        targets.append(
            {
                "boxes": torch.cat([corner, corner + side], 1),
                "labels": torch.randint(0, 5, (count,), generator=generator),
            }  # fmt: skip
        )
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
    batched = assign_atss_batched(anchors, num_per_level, gt_boxes, gt_labels, gt_mask)
    for image, target in enumerate(targets):
        single = assign_atss(anchors, num_per_level, target["boxes"], target["labels"])
        assert torch.equal(batched.gt_index[image], single.gt_index)
        assert torch.equal(batched.labels[image], single.labels)
        torch.testing.assert_close(batched.iou[image], single.iou)


# ----------------------------------------------------------------- bad input
def test_degenerate_boxes_give_finite_losses_and_gradients():
    torch.manual_seed(0)
    model = build_detector("atss-r18half-fpn64", num_classes=3).train()
    images = torch.rand(3, 3, 128, 128)
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # none
        # smaller than a pixel; the second one holds the anchor centre (8, 8)
        {
            "boxes": torch.tensor([[40.2, 40.1, 40.6, 40.9], [7.9, 7.9, 8.4, 8.4]]),
            "labels": torch.tensor([0, 1]),
        },  # fmt: skip
        {"boxes": torch.tensor([[-50.0, -20.0, 300.0, 200.0]]), "labels": torch.tensor([2])},
    ]
    losses = model.loss(model(images), targets)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_no_box_in_the_batch_trains_background_only():
    outputs, _ = _small_case()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 3
    losses = _bare(3).loss(outputs, empty)
    assert losses["bbox"] == 0 and losses["centerness"] == 0 and losses["cls"] > 0


def test_bad_arguments_name_the_culprit():
    model = _bare(3)
    outputs, targets = _small_case()
    with pytest.raises(ValueError, match="got 2 targets for a batch of 3"):
        model.assign(outputs, targets[:2])
    with pytest.raises(ValueError, match="three lists"):
        model.loss(outputs[:2], targets)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 128))
    bad = [dict(targets[0], boxes=torch.tensor([[10.0, 10, 5, 20], [0, 0, 1, 1], [0, 0, 1, 1]]))]
    with pytest.raises(ValueError, match="not an xyxy box"):
        model.assign(tuple([m[:1] for m in maps] for maps in outputs), bad)
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        ATSS(ATSSConfig(img_size=100))


def test_loss_shapes_are_checked():
    outputs, targets = _small_case()
    model = _bare(3)
    cls, deltas, centerness = model.flatten(outputs)
    anchors, _ = model.anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])
    result, gt_boxes = model.assign(outputs, targets)
    with pytest.raises(ValueError, match="centerness must be"):
        atss_loss(cls, deltas, centerness[:, :5], anchors, result, gt_boxes)


def test_centerness_targets():
    anchors = torch.tensor([[0.0, 0, 20, 20], [-5.0, 0, 15, 20]])  # centres (10, 10), (5, 10)
    boxes = torch.tensor([[0.0, 0, 20, 20], [0.0, 0, 20, 20]])
    torch.testing.assert_close(centerness_targets(anchors, boxes), torch.tensor([1.0, 3**-0.5]))
