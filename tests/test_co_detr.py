"""Co-DETR: the encoder's pyramid, the auxiliary branches, the positive query groups and
their loss, and the inference network (Sense-X/Co-DETR ``co_deformable_detr_r50_1x``)."""

import dataclasses

import pytest
import torch

from detutils.assigners import BACKGROUND, IGNORE, AssignResult
from detutils.boxes import xyxy_to_cxcywh_norm
from detutils.engine.presets import schedules_for
from detutils.losses.detr import set_loss, set_loss_on_targets
from detutils.models import build_detector
from detutils.models.co_detr import (
    CoDETR,
    CoDETRConfig,
    build_co_deformable_detr_r50,
    padding_attention_mask,
    positive_query_group,
)
from detutils.models.deformable_detr import DeformableDETR, DeformableDETRConfig

PRESET = "co-deformable-detr-r18half-d128"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _preset(num_classes: int = 3, **changes) -> CoDETR:
    torch.manual_seed(0)
    model = build_detector(PRESET, num_classes=num_classes)
    if changes:
        torch.manual_seed(0)
        model = CoDETR(dataclasses.replace(model.config, **changes))
    return model


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 20.0, 120.0, 100.0],
                                [30.0, 70.0, 42.0, 84.0]]),
         "labels": torch.tensor([0, 2, 1])},
        {"boxes": torch.tensor([[0.0, 0.0, 128.0, 128.0]]), "labels": torch.tensor([1])},
    ]  # fmt: skip


def _empty_targets(batch: int = 2) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * batch


def test_r50_has_the_reference_parts():
    model = build_co_deformable_detr_r50()
    detr = model.detr
    # the inference network: Deformable DETR R50 with refinement, two stages, FFN 2048
    # (the reference's encoder and decoder), mixed selection's 300 x 256 content
    assert isinstance(detr, DeformableDETR)
    assert _count(detr.backbone) == 23_508_032
    assert _count(detr.neck) == 5_638_144
    assert _count(detr.encoder) == 7_693_056  # 6 x (deformable attention + FFN 2048)
    assert _count(detr.decoder) == 9_275_136
    assert detr.query_embedding.weight.shape == (300, 256)
    assert _count(detr) == 47_594_380
    torch.manual_seed(0)
    base = DeformableDETR(model.config.detr)
    assert _count(base) == _count(detr)
    aux = {name: _count(module) for name, module in model.aux.items()}
    assert aux == {
        "downsample": 590_592,  # 3x3 stride-2 conv 256 -> 256 with bias, GroupNorm
        "rcnn": 601_645 + 14_306_705,  # RPN (9 anchors), RoI head (2 FC 1024, 80 classes)
        "atss": 1_376_602,  # one stacked conv per tower, 5 scales
        "queries": 659_970,  # per head: 512 -> 512 + LN, 256 -> 256 + LN; one number each
    }
    assert _count(model) == 65_129_894
    config = model.config
    assert config.aux_weight == 12.0
    assert config.rcnn.anchor_scales == pytest.approx((4.0, 5.0397, 6.3496), rel=1e-4)
    assert config.rcnn.strides == config.atss.strides == (8, 16, 32, 64, 128)
    assert config.rcnn.roi_strides == (8, 16, 32, 64) and config.rcnn.finest_scale == 112
    assert (config.rcnn.roi_num, config.rcnn.roi_pos_fraction, config.rcnn.rpn_num) == (
        512, 0.25, 256,
    )  # fmt: skip
    assert config.atss.stacked_convs == 1 and config.query_groups == ("roi", "atss")


def test_inference_is_the_deformable_detr_alone():
    model = _preset().eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        outputs = model(images)
        alone = DeformableDETR(model.config.detr).eval()
        alone.load_state_dict(model.detr.state_dict())
        reference = alone(images)
    assert outputs.pyramid is None and outputs.atss is None and outputs.rpn is None
    assert torch.equal(outputs.one_to_one.cls_logits, reference.cls_logits)
    assert torch.equal(outputs.one_to_one.boxes, reference.boxes)
    for ours, theirs in zip(model.predict(outputs), alone.predict(reference), strict=True):
        assert all(torch.equal(ours[key], theirs[key]) for key in ("boxes", "scores", "labels"))
    # the auxiliary heads change nothing of the one-to-one outputs when they run
    with torch.no_grad():
        both = model(images, aux=True)
    assert torch.equal(both.one_to_one.boxes, reference.boxes)
    with pytest.raises(ValueError, match="aux=True"):
        model.assign(outputs, _targets())


def test_encoder_pyramid_is_the_memory_split_back_into_levels():
    model = _preset().train()
    outputs = model(torch.rand(2, 3, 128, 128))
    memory, shapes = outputs.one_to_one.memory, outputs.one_to_one.spatial_shapes
    pyramid = outputs.pyramid
    assert [tuple(level.shape) for level in pyramid] == [
        (2, 128, 16, 16), (2, 128, 8, 8), (2, 128, 4, 4), (2, 128, 2, 2), (2, 128, 1, 1),
    ]  # fmt: skip
    # token (level 1, y 3, x 5) of image 1
    start = int(shapes[0].prod())
    assert torch.equal(pyramid[1][1, :, 3, 5], memory[1, start + 3 * 8 + 5])
    assert len(outputs.atss[0]) == 5 and len(outputs.rpn.objectness) == 5
    assert outputs.rpn.objectness[0].shape == (2, 9, 16, 16)  # 3 scales x 3 ratios


def test_look_forward_twice_trains_one_layer_back():
    images = torch.rand(1, 3, 128, 128)
    grads = {}
    for twice in (False, True):
        torch.manual_seed(0)
        config = dataclasses.replace(
            DeformableDETRConfig(
                num_classes=3, depth=18, pretrained=None, embed_dims=64, num_heads=4,
                num_encoder_layers=1, num_decoder_layers=3, ffn_dims=64, num_queries=20,
                dropout=0.0, with_box_refine=True, as_two_stage=True,
            ),
            look_forward_twice=twice,
        )  # fmt: skip
        model = DeformableDETR(config)
        outputs = model(images)
        outputs.boxes[2].sum().backward()  # the last layer's boxes only
        grads[twice] = [
            head[-1].weight.grad is not None and bool(head[-1].weight.grad.abs().sum() > 0)
            for head in model.reg_branches[:3]
        ]
        grads[f"boxes {twice}"] = outputs.boxes.detach()
    assert torch.equal(grads["boxes False"], grads["boxes True"])  # the same values
    assert grads[False] == [False, False, True]
    assert grads[True] == [False, True, True]  # one layer back, not two


def test_mixed_selection_learns_the_content_and_takes_positions_from_proposals():
    model = _preset()
    detr = model.detr
    memory = torch.rand(2, 340, 128)
    shapes = torch.tensor([[16, 16], [8, 8], [4, 4], [2, 2]])
    query, query_pos, reference, enc_logits, _ = detr.select_queries(memory, shapes)
    assert torch.equal(query[0], detr.query_embedding.weight)
    assert torch.equal(query[1], detr.query_embedding.weight)
    assert not torch.equal(query_pos[0], query_pos[1])  # from each image's proposals
    assert reference.shape == (2, 100, 4) and enc_logits.shape == (2, 340, 3)
    with pytest.raises(ValueError, match="as_two_stage"):
        DeformableDETR(DeformableDETRConfig(pretrained=None, depth=18, mixed_selection=True))


def test_positive_query_group_pads_with_negatives_or_masked_queries():
    boxes = torch.arange(2 * 6 * 4, dtype=torch.float32).view(2, 6, 4)
    targets = boxes + 100
    bg = BACKGROUND
    labels = torch.tensor([[bg, 2, bg, 0, IGNORE, 1], [bg, bg, IGNORE, bg, bg, 1]])
    group = positive_query_group(boxes, labels, targets, max_queries=5, min_queries=4,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert group.index.shape == (2, 4)  # the largest count 3, at least 4
    assert group.index[0, :3].tolist() == [1, 3, 5] and group.index[1, 0].item() == 5
    assert group.positive.tolist() == [[True] * 3 + [False], [True] + [False] * 3]
    assert group.valid.all()  # padded with the head's negatives
    assert group.labels.tolist() == [[2, 0, 1, -1], [1, -1, -1, -1]]  # BACKGROUND = -1
    assert (labels.gather(1, group.index)[~group.positive] == BACKGROUND).all()
    assert torch.equal(group.boxes, boxes[torch.arange(2)[:, None], group.index])
    expected = torch.cat([targets[0, [1, 3, 5]], targets[1, [5]]])
    assert torch.equal(group.targets[group.positive], expected)
    assert (group.targets[~group.positive] == 0).all()
    masked = positive_query_group(boxes, labels, targets, 5, 4, zero_padding=True)
    assert masked.valid.tolist() == masked.positive.tolist()
    # more positives than max_queries: a random draw of max_queries
    many = torch.zeros(1, 20, dtype=torch.long)
    drawn = positive_query_group(torch.rand(1, 20, 4), many, torch.rand(1, 20, 4), 7, 4)
    assert drawn.index.shape == (1, 7) and drawn.positive.all()
    assert len(set(drawn.index[0].tolist())) == 7
    with pytest.raises(ValueError, match="min_queries"):
        positive_query_group(boxes, labels, targets, max_queries=3, min_queries=4)
    with pytest.raises(ValueError, match="agree"):
        positive_query_group(boxes, labels[:, :5], targets)


def test_padding_attention_mask_hides_padding_from_every_query():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mask = padding_attention_mask(valid, num_heads=2)
    assert mask.shape == (4, 3, 3)
    assert mask[0].tolist() == [[False, False, True], [False, False, True], [True, True, False]]
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[2], mask[3])
    assert mask[2].tolist() == [[False, True, True], [True, False, True], [True, True, False]]


def test_masked_padding_does_not_reach_the_real_queries():
    model = _preset(zero_padding=True).train()
    targets = _targets()
    outputs = model(torch.rand(2, 3, 128, 128))
    assignment = model.assign(outputs, targets)
    group = assignment.queries["atss"]
    assert not group.valid.all()  # image 1 has fewer positives than image 0
    features = torch.rand(*group.index.shape, 128)
    logits, boxes = model.decode_queries(outputs, "atss", group, features)
    changed = features.clone()
    changed[~group.valid] = 5.0
    logits2, boxes2 = model.decode_queries(outputs, "atss", group, changed)
    assert torch.allclose(logits[:, group.valid], logits2[:, group.valid], atol=1e-6)
    assert torch.allclose(boxes[:, group.valid], boxes2[:, group.valid], atol=1e-6)
    assert not torch.allclose(logits[:, ~group.valid], logits2[:, ~group.valid])


def test_assignment_has_one_record_per_branch():
    model = _preset().train()
    targets = _targets()
    outputs = model(torch.rand(2, 3, 128, 128))
    assignment = model.assign(outputs, targets)
    # one-to-one: min(Q, M) queries per image, in every decoder layer; M proposals
    assert (assignment.one_to_one.layers.gt_index >= 0).sum(-1).tolist() == [[3, 1]] * 3
    assert (assignment.one_to_one.encoder.gt_index >= 0).sum(-1).tolist() == [3, 1]
    atss_positive = (assignment.atss.assignment.labels >= 0).sum(1)
    atss_group = assignment.queries["atss"]
    assert atss_group.positive.sum(1).tolist() == atss_positive.tolist()
    assert atss_group.index.shape[1] == max(9, int(atss_positive.max()))
    assert list(assignment.by_branch()) == [
        "one_to_one", "atss", "rpn", "roi", "roi_queries", "atss_queries",
    ]  # fmt: skip
    rcnn = assignment.rcnn
    roi_positive = [int((rcnn.roi_labels[rcnn.rois[:, 0] == i] >= 0).sum()) for i in range(2)]
    assert assignment.queries["roi"].positive.sum(1).tolist() == roi_positive
    assert rcnn.rpn_sampled.sum(1).tolist() == [256, 256]
    # what a positive query learns: its prior's assigned box and class
    positive = atss_group.positive
    anchors_index = atss_group.index[positive]
    images = torch.arange(2)[:, None].expand_as(atss_group.index)[positive]
    gt = assignment.atss.assignment.gt_index[images, anchors_index]
    assert torch.equal(atss_group.targets[positive], assignment.atss.gt_boxes[images, gt])
    labels = assignment.atss.assignment.labels[images, anchors_index]
    assert torch.equal(atss_group.labels[positive], labels)


def test_positive_query_loss_is_the_set_loss_with_the_assignment_as_matching():
    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 9, 3), torch.rand(2, 9, 4) * 0.5 + 0.25
    gt_index = torch.tensor([[0, 1, -1, 2, -1, -1, -1, -1, -1], [-1] * 8 + [0]])
    targets = _targets()[:1] + [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]),
                                 "labels": torch.tensor([2])}]  # fmt: skip
    image_size = (128, 128)
    matched = set_loss(logits, boxes, AssignResult(gt_index, gt_index, gt_index.float()),
                       targets, image_size)  # fmt: skip
    positive = gt_index >= 0
    class_targets = torch.zeros(2, 9, 3)
    box_targets = torch.zeros(2, 9, 4)
    for image, target in enumerate(targets):
        rows = positive[image].nonzero().squeeze(1)
        class_targets[image, rows, target["labels"][gt_index[image, rows]]] = 1
        box_targets[image, rows] = xyxy_to_cxcywh_norm(
            target["boxes"][gt_index[image, rows]], image_size
        )
    direct = set_loss_on_targets(logits, boxes, class_targets, box_targets, positive, image_size)
    for key in ("cls", "l1", "giou"):
        torch.testing.assert_close(direct[key], matched[key])
    # a query of weight 0 (masked padding) adds nothing to the class term
    weights = torch.ones(2, 9)
    weights[1, 0] = 0
    lighter = set_loss_on_targets(logits, boxes, class_targets, box_targets, positive,
                                  image_size, query_weights=weights)  # fmt: skip
    assert lighter["cls"] < direct["cls"] and torch.equal(lighter["l1"], direct["l1"])


def test_loss_terms_weights_and_gradients():
    model = _preset().train()
    targets = _targets()
    outputs = model(torch.rand(2, 3, 128, 128))
    torch.manual_seed(1)
    assignment = model.assign(outputs, targets)
    terms = model.loss_terms(outputs, targets, assignment)
    weight = model.config.aux_weight
    assert weight == 6.0
    atss = model.aux["atss"].loss(outputs.atss, targets, assignment.atss)
    torch.testing.assert_close(terms["atss.bbox"], atss["bbox"] * weight)
    rpn = model.aux["rcnn"].rpn_losses(outputs.rpn, assignment.rcnn)
    torch.testing.assert_close(terms["rpn.cls"], rpn["rpn_cls"] * weight)
    layers = model.config.detr.num_decoder_layers
    for group in ("roi", "atss"):
        names = [name for name in terms if name.startswith(f"{group}_queries.")]
        assert len(names) == 3 * layers  # cls, l1, giou on every decoder layer
    detr_terms = model.detr.loss_terms(outputs.one_to_one, targets, assignment.one_to_one)
    for name, value in detr_terms.items():
        torch.testing.assert_close(terms[name], value)
    losses = model.loss(outputs, targets, assignment)
    assert set(losses) == {"cls", "l1", "giou", "aux", "atss", "rpn", "roi", "queries", "loss"}
    torch.testing.assert_close(losses["loss"], sum(terms.values()))
    parts = sum(value for key, value in losses.items() if key != "loss")
    torch.testing.assert_close(losses["loss"], parts)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("zero_padding", [False, True])
def test_images_without_boxes_give_finite_losses(zero_padding):
    model = _preset(zero_padding=zero_padding).train()
    images = torch.rand(2, 3, 128, 128)
    for targets in (_empty_targets(), [_targets()[1], _empty_targets(1)[0]]):
        outputs = model(images)
        assignment = model.assign(outputs, targets)
        if not targets[0]["labels"].numel():  # no positive anywhere: groups of 9 padding
            for group in assignment.queries.values():
                assert group.index.shape == (2, 9) and not group.positive.any()
        losses = model.loss(outputs, targets, assignment)
        assert all(torch.isfinite(value) for value in losses.values()), losses
        losses["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(grad).all() for grad in grads)
        model.zero_grad()


def test_bad_configs_name_the_culprit():
    config = _preset().config
    with pytest.raises(ValueError, match="config.atss must read strides"):
        atss = dataclasses.replace(config.atss, strides=(8, 16, 32, 64, 128, 256))
        CoDETR(dataclasses.replace(config, atss=atss))
    with pytest.raises(ValueError, match="config.rcnn must read"):
        rcnn = dataclasses.replace(config.rcnn, fpn_channels=64)
        CoDETR(dataclasses.replace(config, rcnn=rcnn))
    with pytest.raises(ValueError, match="num_classes"):
        CoDETR(dataclasses.replace(config, atss=dataclasses.replace(config.atss, num_classes=5)))
    with pytest.raises(ValueError, match="refinement and two stages"):
        CoDETR(CoDETRConfig(detr=DeformableDETRConfig(pretrained=None, depth=18)))


def test_without_an_auxiliary_head():
    model = _preset(atss=None).train()
    assert "atss" not in model.aux and model.config.query_groups == ("roi",)
    targets = _targets()
    outputs = model(torch.rand(2, 3, 128, 128))
    assert outputs.atss is None
    losses = model.loss(outputs, targets)
    assert "atss" not in losses and torch.isfinite(losses["loss"])


def test_schedules_are_deformable_detrs_on_the_same_budget():
    co, detr = schedules_for(PRESET), schedules_for("deformable-detr-r18half-d128")
    assert co["cpu"].max_minutes > detr["cpu"].max_minutes  # a longer time guard only
    assert dataclasses.replace(co["cpu"], max_minutes=detr["cpu"].max_minutes) == detr["cpu"]
    gpu = schedules_for("co-deformable-detr-r50")["gpu"]
    assert (gpu.epochs, gpu.batch_size, gpu.lr, gpu.grad_clip) == (12, 16, 2e-4, 0.1)
    assert gpu.step_milestones == pytest.approx((11 / 12,))
    assert dict(gpu.lr_multipliers) == {
        "backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1,
    }  # fmt: skip
