"""Tests of the NanoDet network (backbone, neck, head) and its three detector calls."""

import math

import pytest
import torch
from torch import nn

from detutils.assigners import assign_atss_batched, pad_ground_truth
from detutils.boxes import box_iou
from detutils.losses import gfl_loss
from detutils.models import build_detector
from detutils.models.backbones import ShuffleNetV2Backbone
from detutils.models.nanodet import NanoDet, NanoDetConfig, build_nanodet_m
from detutils.models.necks import PAN


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture(scope="module")
def model() -> NanoDet:
    torch.manual_seed(0)
    return build_nanodet_m(num_classes=80)


def test_parameter_count_is_the_published_one(model):
    # NanoDet-m: 0.95 M parameters. Backbone: torchvision's ShuffleNetV2 1.0x without its
    # last conv and classifier; neck: three 1x1 convs to 96 channels (with bias);
    # head: per level two depthwise-separable convs (96 x 9 + 96 x 96 weights, two batch
    # norms) and a 1x1 conv to 80 + 32 channels.
    assert _count(model.backbone) == 776_420
    assert _count(model.neck) == sum(channels * 96 + 96 for channels in (116, 232, 464))
    per_level = 2 * (96 * 9 + 2 * 96 + 96 * 96 + 2 * 96) + 96 * 112 + 112
    assert _count(model.head) == 3 * per_level == 95_376
    assert _count(model) == 950_036
    assert abs(_count(model) / 0.95e6 - 1) < 0.03


def test_output_shapes_at_320(model):
    model.train()
    class_maps, dist_maps = model(torch.rand(1, 3, 320, 320))
    assert [tuple(x.shape) for x in class_maps] == [
        (1, 80, 40, 40),
        (1, 80, 20, 20),
        (1, 80, 10, 10),
    ]
    assert [tuple(x.shape) for x in dist_maps] == [
        (1, 32, 40, 40),
        (1, 32, 20, 20),
        (1, 32, 10, 10),
    ]
    cells, num_per_level, prior_strides = model.priors([(40, 40), (20, 20), (10, 10)])
    assert cells.shape == (2100, 4) and num_per_level == [1600, 400, 100]
    # grid cells: side 5 x stride, centred on the cells
    torch.testing.assert_close(cells[:, 2] - cells[:, 0], 5 * prior_strides)


def test_initial_class_probability_is_one_percent(model):
    # bias -4.595 and weights of std 0.01: every class starts near sigmoid(-4.595) = 0.01
    for conv in model.head.gfl_cls:
        assert torch.all(conv.bias == -4.595)
    model.eval()
    with torch.no_grad():
        class_maps, _ = model(torch.rand(1, 3, 64, 64))
    probs = torch.cat([x.flatten() for x in class_maps]).sigmoid()
    assert abs(1 / (1 + math.exp(4.595)) - 0.01) < 1e-5
    torch.testing.assert_close(probs.mean(), torch.tensor(0.01), atol=2e-3, rtol=0)


def test_backbone_is_torchvision_shufflenet_with_leaky_relu():
    backbone = ShuffleNetV2Backbone()
    assert not any(isinstance(module, nn.ReLU) for module in backbone.modules())
    slopes = {m.negative_slope for m in backbone.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    features = backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(x.shape) for x in features] == [(1, 116, 8, 8), (1, 232, 4, 4), (1, 464, 2, 2)]
    relu = ShuffleNetV2Backbone(negative_slope=0.0)
    assert not any(isinstance(module, nn.LeakyReLU) for module in relu.modules())


def test_pan_sums_top_down_then_bottom_up():
    # Identity 1x1 convs on constant maps a, b, c (finest first): bilinear resampling of
    # a constant is the same constant, so top-down gives (a + b + c, b + c, c) and then
    # bottom-up gives (a + b + c, a + 2b + 2c, a + 2b + 3c).
    neck = PAN([1, 1, 1], 1)
    for conv in neck.lateral_convs:
        nn.init.ones_(conv.weight)
    a, b, c = 1.0, 10.0, 100.0
    maps = [torch.full((1, 1, 8, 8), a), torch.full((1, 1, 4, 4), b), torch.full((1, 1, 2, 2), c)]
    outputs = neck(maps)
    for output, value in zip(
        outputs, (a + b + c, a + 2 * b + 2 * c, a + 2 * b + 3 * c), strict=True
    ):
        torch.testing.assert_close(output, torch.full_like(output, value))


def test_separate_towers_without_shared_output():
    config = NanoDetConfig(num_classes=3, share_cls_reg=False, img_size=64)
    separate = NanoDet(config)
    class_maps, dist_maps = separate(torch.rand(2, 3, 64, 64))
    assert [tuple(x.shape) for x in class_maps] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(x.shape) for x in dist_maps] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    shared = NanoDet(NanoDetConfig(num_classes=3, img_size=64))
    assert _count(separate.head) > _count(shared.head)


def test_loss_trains_every_parameter_and_equals_gfl_loss():
    torch.manual_seed(1)
    detector = NanoDet(NanoDetConfig(num_classes=4, img_size=64))
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 30.0, 60.0, 62.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    outputs = detector(images)
    losses = detector.loss(outputs, targets)
    assert set(losses) == {"qfl", "bbox", "dfl", "loss"}
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    losses["loss"].backward()
    for name, parameter in detector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # the same numbers from the pieces: grid cells, batched ATSS, gfl_loss
    cells, num_per_level, prior_strides = detector.priors([(8, 8), (4, 4), (2, 2)])
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
    assignment = assign_atss_batched(cells, num_per_level, gt_boxes, gt_labels, gt_mask)
    cls_logits, dist_logits = detector.flatten(outputs)
    assert cls_logits.shape == (2, 84, 4) and dist_logits.shape == (2, 84, 32)
    expected = gfl_loss(cls_logits, dist_logits, cells, prior_strides, assignment, gt_boxes)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)


def test_loss_without_any_box_is_zero():
    detector = NanoDet(NanoDetConfig(num_classes=4, img_size=64))
    outputs = detector(torch.rand(1, 3, 64, 64))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detector.loss(outputs, empty)
    assert all(value.item() == 0.0 for value in losses.values())


def test_predict_decodes_one_confident_prior():
    # Every class logit -10 except class 2 at level 0, cell (y=2, x=3): logit 5.
    # Its four distributions put nearly all mass on bin 2: distances 2 strides = 16 px
    # around the cell centre ((3 + 0.5) 8, (2 + 0.5) 8) = (28, 20): box (12, 4, 44, 36).
    detector = NanoDet(NanoDetConfig(num_classes=4, img_size=64))
    class_maps = [torch.full((1, 4, size, size), -10.0) for size in (8, 4, 2)]
    dist_maps = [torch.zeros(1, 32, size, size) for size in (8, 4, 2)]
    class_maps[0][0, 2, 2, 3] = 5.0
    dist_maps[0][0, [2, 10, 18, 26], 2, 3] = 30.0  # bin 2 of each side
    detections = detector.predict((class_maps, dist_maps))
    assert len(detections) == 1 and detections[0]["labels"].tolist() == [2]
    torch.testing.assert_close(detections[0]["boxes"], torch.tensor([[12.0, 4.0, 44.0, 36.0]]))
    torch.testing.assert_close(detections[0]["scores"], torch.sigmoid(torch.tensor([5.0])))
    boxes, scores = detector.decode((class_maps, dist_maps))
    assert boxes.shape == (1, 84, 4) and scores.shape == (1, 84, 4)
    assert (boxes >= 0).all() and (boxes <= 64).all()  # clipped to the image


def test_predict_on_a_network_output(model):
    model.eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 64))
    detections = model.predict(outputs, score_thr=0.0, max_det=7)
    assert len(detections) == 2
    for detection in detections:
        assert detection["boxes"].shape == (7, 4) and detection["labels"].max() < 80
        assert (detection["boxes"] >= 0).all() and (detection["boxes"] <= 64).all()


def test_a_few_steps_fit_two_images():
    # 30 AdamW steps on two images with one box each: the loss falls several times,
    # and the best detection of each image has the right class and overlaps its box.
    torch.manual_seed(0)
    detector = NanoDet(NanoDetConfig(num_classes=2, img_size=64))
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 4.0, 60.0, 30.0]]), "labels": torch.tensor([0])},
    ]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = detector.loss(detector(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < history[0] / 3
    with torch.no_grad():  # batch statistics: 30 steps are too few for the running ones
        detections = detector.predict(detector(images), score_thr=0.0, max_det=1)
    for detection, target in zip(detections, targets, strict=True):
        assert detection["labels"].tolist() == target["labels"].tolist()
        assert box_iou(detection["boxes"], target["boxes"]).item() > 0.5


def test_builds_through_build_detector():
    detector = build_detector("detutils.models.nanodet:build_nanodet_m", num_classes=3)
    assert isinstance(detector, NanoDet) and detector.name == "nanodet-m"
    assert detector.num_classes == 3 and detector.config.num_classes == 3


def test_bad_inputs():
    detector = NanoDet(NanoDetConfig(num_classes=2, img_size=64))
    with pytest.raises(ValueError, match="multiples of 32"):
        detector(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        detector(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="img_size"):
        NanoDet(NanoDetConfig(img_size=300))
    outputs = detector(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="targets for a batch"):
        detector.loss(outputs, [])
    with pytest.raises(ValueError, match="labels"):
        detector.loss(outputs, [{"boxes": torch.zeros(2, 4), "labels": torch.zeros(3)}])
    with pytest.raises(ValueError, match="'boxes' and 'labels'"):
        detector.loss(outputs, [{"boxes": torch.zeros(2, 4)}])
