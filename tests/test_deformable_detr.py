"""Deformable DETR: deformable attention, Hungarian matching, the set loss and the whole
network, compared with mmcv 2.1 / mmdet 3.3 on the same inputs.

The reference values were computed in a separate environment (mmdet 3.3.0, mmcv-lite
2.1.0, torch 2.14.1 on the CPU, where mmcv runs ``multi_scale_deformable_attn_pytorch``)
from the inputs that the functions below make. For the whole network, mmdet's
``DeformableDETR`` was given the weights that ``_randomised`` sets here (its parameter
names mapped one to one) and its decoder heads' outputs recorded.
"""

import pytest
import torch
from torch import nn

from detutils.assigners import BACKGROUND
from detutils.assigners.hungarian import (
    assign_hungarian,
    assign_hungarian_batched,
    hungarian_costs,
)
from detutils.boxes import cxcywh_norm_to_xyxy
from detutils.engine.presets import schedules_for
from detutils.engine.schedule import build_optimizer
from detutils.losses.detr import set_loss
from detutils.losses.focal import sigmoid_focal_loss
from detutils.models import build_detector
from detutils.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)
from detutils.models.deformable_detr import (
    DeformableDETR,
    DeformableDETRConfig,
    DeformableDETROutputs,
    build_deformable_detr_r50,
    build_deformable_detr_r50_refine_two_stage,
    sine_position_embedding,
)

IMG = (96, 128)  # H, W
SHAPES = torch.tensor([[6, 5], [3, 3], [2, 2]])

# mmcv's multi_scale_deformable_attn_pytorch on _op_inputs (float64), and the gradients of
# (output * grad_out).sum()
MMCV_OP = {
    "out_sum": 2.2286237, "out_abs": 233.15489,
    "out_0_3": [0.83050281, -0.98641988, 0.4006927, 0.21404487, 1.0946558, -0.95077895],
    "out_1_6": [0.181926, 0.74455029, 1.0468679, -0.34120411],
    "gv_sum": 52.22902, "gv_abs": 418.40919, "gl_abs": 1946.439,
    "gl_0": [-2.3120637, -9.108301, -3.7906261, 1.7805565, 0.0, 0.0],
    "gw_abs": 500.38648, "gw_1": [0.088182443, 0.9410705, 0.063475791],
}  # fmt: skip
# mmcv's MultiScaleDeformableAttention(32, 4 heads, 3 levels, 3 points), weights of _module_inputs
MMCV_MODULE = {
    "points": (-0.64425111, 317.47546,
               [0.91846883, 0.618873, -0.79947776, -0.86510998, 1.2649605, 0.62470776]),
    "boxes": (9.0713425, 406.0611,
              [1.620258, 0.76332533, 1.23262, -0.60764897, 0.067053437, -0.56804156]),
}  # fmt: skip
# mmdet's HungarianAssigner (FocalLossCost 2, BBoxL1Cost 5 xywh, IoUCost giou 2): gt_inds
# (1-based, 0 unmatched) and the sums of the three weighted cost matrices
MMDET_MATCHING = {
    0: ([0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 4, 3], [-42.204922, 183.28552, 44.873039]),
    1: ([6, 8, 7, 9, 1, 4], [-14.617846, 220.00371, 60.018703]),
    2: ([0, 0, 0, 0, 0, 0, 2, 0, 5, 0, 0, 0, 0, 6, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0, 1, 7, 0,
         0, 0], [-188.74097, 799.14374, 224.59396]),
    3: ([0, 0, 0, 0, 0], None),
    4: ([2], [-7.088994, 6.6537414, 3.0491791]),
}  # fmt: skip
MATCHING_CASES = {0: (12, 5, 4), 1: (6, 3, 9), 2: (30, 4, 7), 3: (5, 2, 0), 4: (1, 3, 2)}
# mmdet's DeformableDETRHead.loss_by_feat (3 decoder layers + two-stage proposals)
MMDET_LOSS = {
    "d0.cls": 30.186964, "d0.l1": 6.2509913, "d0.giou": 2.6745231,
    "d1.cls": 28.230764, "d1.l1": 3.8859253, "d1.giou": 1.6650505,
    "cls": 27.362127, "l1": 4.3706193, "giou": 1.951181,
    "enc.cls": 54.539116, "enc.l1": 4.2587986, "enc.giou": 2.1005702,
}  # fmt: skip
# mmdet's DeformableDETR (ResNet-18, 2 + 2 layers, 20 queries, 5 classes) on _randomised weights
MMDET_MODEL = {
    (False, False): {
        "cls_abs": 31.266724, "box_sum": 166.40033,
        "cls_row": [0.14158666, -0.13555619, -0.068476006, 0.080122292, 0.03197236],
        "box_row": [0.58101857, 0.47594744, 0.50049067, 0.51705515],
    },
    (True, False): {
        "cls_abs": 31.42963, "box_sum": 157.72803,
        "cls_row": [0.14159046, -0.13555726, -0.068477035, 0.08012183, 0.031970285],
        "box_row": [0.58360583, 0.46398872, 0.46018463, 0.48717642],
    },
    (True, True): {
        "cls_abs": 35.681458, "box_sum": 105.0687,
        "cls_row": [-0.1769082, 0.11616262, 0.04388959, -0.045068394, 0.2215015],
        "box_row": [0.28893787, 0.12640989, 0.20267835, 0.13826887],
        "enc_cls_abs": 702.15991, "enc_box_sum": 1198.1309,
    },
}  # fmt: skip


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ------------------------------------------------------------------ the shared inputs
def _op_inputs():
    generator = torch.Generator().manual_seed(0)
    num_keys = int(SHAPES.prod(1).sum())
    value = torch.randn((2, num_keys, 4, 8), generator=generator, dtype=torch.float64)
    locations = torch.rand((2, 7, 4, 3, 3, 2), generator=generator, dtype=torch.float64)
    locations = locations * 1.3 - 0.15  # some samples fall outside the map
    weights = torch.randn((2, 7, 4, 3, 3), generator=generator, dtype=torch.float64).softmax(-1)
    grad_out = torch.randn((2, 7, 32), generator=generator, dtype=torch.float64)
    return value, locations, weights, grad_out


def _module_inputs():
    generator = torch.Generator().manual_seed(1)
    num_keys = int(SHAPES.prod(1).sum())
    query = torch.randn((2, 5, 32), generator=generator)
    pos = torch.randn((2, 5, 32), generator=generator)
    value = torch.randn((2, num_keys, 32), generator=generator)
    points = torch.rand((2, 5, 3, 2), generator=generator)
    centres = torch.rand((2, 5, 3, 2), generator=generator)
    boxes = torch.cat([centres, torch.rand((2, 5, 3, 2), generator=generator) * 0.5], -1)
    shapes = {
        "sampling_offsets.weight": (72, 32), "sampling_offsets.bias": (72,),
        "attention_weights.weight": (36, 32), "attention_weights.bias": (36,),
        "value_proj.weight": (32, 32), "value_proj.bias": (32,),
        "output_proj.weight": (32, 32), "output_proj.bias": (32,),
    }  # fmt: skip
    state = {name: torch.randn(shape, generator=generator) * 0.3 for name, shape in shapes.items()}
    return query, pos, value, points, boxes, state


def _matching_case(seed: int, num_queries: int, num_classes: int, num_gts: int):
    generator = torch.Generator().manual_seed(seed)
    size_xy = torch.tensor([IMG[1], IMG[0]])
    logits = torch.randn((num_queries, num_classes), generator=generator) * 2
    xy = torch.rand((num_queries, 2), generator=generator) * size_xy * 0.8
    pred = torch.cat([xy, xy + torch.rand((num_queries, 2), generator=generator) * 40 + 1], 1)
    gt_xy = torch.rand((num_gts, 2), generator=generator) * size_xy * 0.7
    gt = torch.cat([gt_xy, gt_xy + torch.rand((num_gts, 2), generator=generator) * 50 + 2], 1)
    labels = torch.randint(0, num_classes, (num_gts,), generator=generator)
    return logits, pred, gt, labels


def _loss_inputs():
    """3 decoder layers, 3 images, 10 queries, 4 classes; 20 encoder proposals. Image 0
    has three boxes, image 1 one box covering the whole image, image 2 none."""
    generator = torch.Generator().manual_seed(5)

    def boxes(*shape):
        centres = torch.rand((*shape, 2), generator=generator) * 0.8 + 0.1
        return torch.cat([centres, torch.rand((*shape, 2), generator=generator) * 0.4 + 0.02], -1)

    cls = torch.randn((3, 3, 10, 4), generator=generator) * 2
    layer_boxes = boxes(3, 3, 10)
    enc_cls = torch.randn((3, 20, 4), generator=generator) * 2
    enc_boxes = boxes(3, 20)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0],
                                [30.0, 60.0, 42.0, 70.0]]),
         "labels": torch.tensor([0, 3, 2])},
        {"boxes": torch.tensor([[0.0, 0.0, 128.0, 96.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip
    return cls, layer_boxes, enc_cls, enc_boxes, targets


def _randomised(refine: bool, two_stage: bool) -> tuple[DeformableDETR, torch.Tensor]:
    """A small Deformable DETR with every weight and statistic drawn from a seed, and two
    128 x 192 images drawn after them from the same stream."""
    torch.manual_seed(0)
    model = DeformableDETR(
        DeformableDETRConfig(
            num_classes=5, depth=18, pretrained=None, embed_dims=256 if two_stage else 64,
            ffn_dims=128, num_encoder_layers=2, num_decoder_layers=2, num_queries=20,
            dropout=0.0, with_box_refine=refine, as_two_stage=two_stage,
        )
    )  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    state = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            state[name] = value
        elif "running_var" in name:
            state[name] = torch.rand(value.shape, generator=generator) + 0.5
        elif value.ndim > 1:
            scale = 0.5 / max(1, value[0].numel()) ** 0.5
            state[name] = torch.randn(value.shape, generator=generator) * scale
        else:
            state[name] = torch.randn(value.shape, generator=generator) * 0.1
    model.load_state_dict(state)
    return model, torch.rand((2, 3, 128, 192), generator=generator)


# ------------------------------------------------------------- deformable attention
def test_deformable_attention_equals_mmcv_with_gradients():
    value, locations, weights, grad_out = _op_inputs()
    for tensor in (value, locations, weights):
        tensor.requires_grad_(True)
    output = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    (output * grad_out).sum().backward()
    assert output.shape == (2, 7, 32)
    close = dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(output.sum().item(), MMCV_OP["out_sum"], **close)
    torch.testing.assert_close(output.abs().sum().item(), MMCV_OP["out_abs"], **close)
    torch.testing.assert_close(output[0, 3, :6].tolist(), MMCV_OP["out_0_3"], **close)
    torch.testing.assert_close(output[1, 6, -4:].tolist(), MMCV_OP["out_1_6"], **close)
    torch.testing.assert_close(value.grad.sum().item(), MMCV_OP["gv_sum"], **close)
    torch.testing.assert_close(value.grad.abs().sum().item(), MMCV_OP["gv_abs"], **close)
    torch.testing.assert_close(locations.grad.abs().sum().item(), MMCV_OP["gl_abs"], **close)
    torch.testing.assert_close(locations.grad[0, 2, 1, 0].flatten().tolist(), MMCV_OP["gl_0"])
    torch.testing.assert_close(weights.grad.abs().sum().item(), MMCV_OP["gw_abs"], **close)
    torch.testing.assert_close(weights.grad[1, 4, 3, 2].tolist(), MMCV_OP["gw_1"], **close)


def test_deformable_attention_is_bilinear_sampling_weighted():
    """One level of 2 x 2 pixels, one head, one point: the sample at the centre is the
    mean of the four pixels; at a pixel's centre, that pixel; outside, zero."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    weights = torch.ones(1, 3, 1, 1, 1)
    locations = torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.5, 0.5]]).view(1, 3, 1, 1, 1, 2)
    output = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(output.flatten(), torch.tensor([2.5, 3.0, 0.0]))


def test_deformable_attention_module_equals_mmcv():
    module = MultiScaleDeformableAttention(32, num_heads=4, num_levels=3, num_points=3, dropout=0)
    # the reference initialisation: head 1 of 4 points along +y, point p at p + 1
    expected = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 3.0] * 3)
    torch.testing.assert_close(module.sampling_offsets.bias[18:36], expected, atol=2e-7, rtol=0)
    assert module.attention_weights.weight.abs().sum() == 0
    query, pos, value, points, boxes, state = _module_inputs()
    module.load_state_dict(state)
    for name, reference in (("points", points), ("boxes", boxes)):
        total, absolute, row = MMCV_MODULE[name]
        output = module(query, value, reference, SHAPES, query_pos=pos)
        torch.testing.assert_close(output.sum().item(), total, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(output.abs().sum().item(), absolute, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(output[1, 2, :6].tolist(), row, rtol=1e-5, atol=1e-6)


def test_deformable_attention_rejects_shapes_that_disagree():
    value, locations, weights, _ = _op_inputs()
    with pytest.raises(ValueError, match="spatial_shapes give"):
        wrong = torch.tensor([[6, 5], [3, 3], [2, 3]])
        multi_scale_deformable_attention(value, wrong, locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, SHAPES, locations, weights[..., :2])
    module = MultiScaleDeformableAttention(32, 4, 3, 3)
    with pytest.raises(ValueError, match="reference_points"):
        module(torch.zeros(1, 2, 32), torch.zeros(1, 43, 32), torch.zeros(1, 2, 3, 3), SHAPES)
    with pytest.raises(ValueError, match="divide"):
        MultiScaleDeformableAttention(30, num_heads=4)


# ---------------------------------------------------------------- Hungarian matching
@pytest.mark.parametrize("seed", sorted(MATCHING_CASES))
def test_hungarian_matching_equals_mmdet(seed):
    num_queries, num_classes, num_gts = MATCHING_CASES[seed]
    logits, pred, gt, labels = _matching_case(seed, num_queries, num_classes, num_gts)
    result = assign_hungarian(logits, pred, gt, labels, IMG)
    gt_inds, cost_sums = MMDET_MATCHING[seed]
    assert (result.gt_index + 1).tolist() == gt_inds  # mmdet counts boxes from 1
    matched = result.gt_index >= 0
    assert int(matched.sum()) == min(num_queries, num_gts)  # one query per box at most
    assert result.labels[matched].tolist() == labels[result.gt_index[matched]].tolist()
    assert (result.labels[~matched] == BACKGROUND).all()
    if cost_sums is not None:
        costs = hungarian_costs(logits, pred, gt, labels, IMG)
        for cost, expected in zip(costs.values(), cost_sums, strict=True):
            torch.testing.assert_close(cost.sum().item(), expected, rtol=1e-5, atol=1e-4)


def test_hungarian_matching_is_the_least_total_cost():
    """On a 4 x 3 case, the total cost is the minimum over all assignments (brute force)."""
    from itertools import permutations

    logits, pred, gt, labels = _matching_case(7, 4, 3, 3)
    costs = hungarian_costs(logits, pred, gt, labels, IMG)
    total = costs["cls"] + costs["l1"] + costs["giou"]
    result = assign_hungarian(logits, pred, gt, labels, IMG)
    matched = result.gt_index >= 0
    best = min(sum(total[q, m] for m, q in enumerate(rows)) for rows in permutations(range(4), 3))
    torch.testing.assert_close(total[matched, result.gt_index[matched]].sum(), best)


def test_hungarian_matching_of_empty_sets():
    logits, pred, gt, labels = _matching_case(0, 12, 5, 4)
    no_box = assign_hungarian(logits, pred, gt[:0], labels[:0], IMG)
    assert (no_box.gt_index == BACKGROUND).all() and no_box.gt_index.shape == (12,)
    no_query = assign_hungarian(logits[:0], pred[:0], gt, labels, IMG)
    assert no_query.gt_index.shape == (0,)
    with pytest.raises(ValueError, match="gt_labels must lie"):
        assign_hungarian(logits, pred, gt, labels + 5, IMG)
    with pytest.raises(ValueError, match="pred_boxes"):
        assign_hungarian(logits, pred[:3], gt, labels, IMG)


# ------------------------------------------------------------------------ set loss
def test_set_loss_equals_mmdet_on_every_layer_and_the_encoder():
    cls, layer_boxes, enc_cls, enc_boxes, targets = _loss_inputs()
    model = build_detector("deformable-detr-r18half-d128", num_classes=4)
    # the loss reads the image size from the finest level (stride 8): 96 x 128 px
    fake = DeformableDETROutputs(
        cls, layer_boxes, enc_cls, enc_boxes, [], torch.zeros(3, 1, 8),
        torch.tensor([[12, 16], [6, 8], [3, 4], [2, 2]]),
    )  # fmt: skip
    terms = model.loss_terms(fake, targets)
    assert set(terms) == set(MMDET_LOSS)
    for name, expected in MMDET_LOSS.items():
        torch.testing.assert_close(terms[name].item(), expected, rtol=1e-5, atol=1e-5)
    losses = model.loss(fake, targets)
    total = sum(MMDET_LOSS.values())
    torch.testing.assert_close(losses["loss"].item(), total, rtol=1e-5, atol=1e-4)
    aux = sum(value for name, value in MMDET_LOSS.items() if "." in name)
    torch.testing.assert_close(losses["aux"].item(), aux, rtol=1e-5, atol=1e-4)


def test_set_loss_counts_matched_queries_and_handles_an_empty_batch():
    cls, layer_boxes, _, _, targets = _loss_inputs()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 3
    assignment = assign_hungarian_batched(
        cls[-1], cxcywh_norm_to_xyxy(layer_boxes[-1], IMG), empty, IMG
    )
    terms = set_loss(cls[-1], layer_boxes[-1], assignment, empty, IMG)
    assert terms["l1"].item() == 0 and terms["giou"].item() == 0
    # nothing matched: the focal loss of "no object" everywhere, divided by 1
    expected = 2 * sigmoid_focal_loss(cls[-1], torch.zeros_like(cls[-1]), reduction="sum")
    torch.testing.assert_close(terms["cls"], expected)


# ------------------------------------------------------------------------- network
def test_r50_has_the_parameters_of_mmdet():
    model = build_deformable_detr_r50(80)
    assert _count(model) == 40_118_934
    assert _count(model.backbone) == 23_508_032
    assert _count(model.neck) == 5_638_144
    assert _count(model.encoder) == 4_541_184
    assert _count(model.decoder) == 6_123_264
    assert _count(model.cls_branches) + _count(model.reg_branches) == 20_560 + 132_612
    refined = build_deformable_detr_r50_refine_two_stage(80)
    assert _count(refined) == 41_213_836
    # box refinement: seven heads of each kind (6 decoder layers + the encoder's proposals)
    assert _count(refined.cls_branches) == 7 * 20_560
    assert _count(refined.reg_branches) == 7 * 132_612


@pytest.mark.parametrize("refine, two_stage", sorted(MMDET_MODEL))
def test_network_equals_mmdet_on_the_same_weights(refine, two_stage):
    model, images = _randomised(refine, two_stage)
    outputs = model.train()(images)
    expected = MMDET_MODEL[(refine, two_stage)]
    close = dict(rtol=2e-5, atol=2e-6)
    assert outputs.cls_logits.shape == (2, 2, 20, 5) and outputs.boxes.shape == (2, 2, 20, 4)
    torch.testing.assert_close(outputs.cls_logits.abs().sum().item(), expected["cls_abs"], **close)
    torch.testing.assert_close(outputs.boxes.sum().item(), expected["box_sum"], **close)
    torch.testing.assert_close(outputs.cls_logits[-1, 1, 3].tolist(), expected["cls_row"], **close)
    torch.testing.assert_close(outputs.boxes[-1, 0, 7].tolist(), expected["box_row"], **close)
    if two_stage:
        enc_abs = outputs.enc_cls_logits.abs().sum().item()
        torch.testing.assert_close(enc_abs, expected["enc_cls_abs"], **close)
        torch.testing.assert_close(outputs.enc_boxes.sum().item(), expected["enc_box_sum"], **close)
    else:
        assert outputs.enc_cls_logits is None


def _tiny(**changes) -> DeformableDETR:
    fields = dict(
        num_classes=3, depth=18, backbone_width=8, pretrained=None, embed_dims=32, ffn_dims=64,
        num_encoder_layers=1, num_decoder_layers=2, num_queries=6, num_heads=4, norm_groups=8,
        dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return DeformableDETR(DeformableDETRConfig(**(fields | changes)))


def _targets() -> list[dict[str, torch.Tensor]]:
    """Image 0: two boxes; image 1: one box covering the whole 64 x 128 image."""
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [60.0, 10.0, 90.0, 50.0]]),
         "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[0.0, 0.0, 128.0, 64.0]]), "labels": torch.tensor([1])},
    ]  # fmt: skip


def test_cpu_preset_shapes_and_prediction():
    model = build_detector("deformable-detr-r18half-d128", num_classes=3).eval()
    assert model.name == "deformable-detr-r18half-d128" and _count(model) == 4_859_068
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 128, 192))
    assert outputs.cls_logits.shape == (3, 2, 100, 3) and outputs.boxes.shape == (3, 2, 100, 4)
    assert outputs.spatial_shapes.tolist() == [[16, 24], [8, 12], [4, 6], [2, 3]]
    assert outputs.enc_cls_logits.shape == (2, 16 * 24 + 8 * 12 + 4 * 6 + 2 * 3, 3)
    assert [tuple(r.shape) for r in outputs.references] == [(2, 100, 4)] * 3
    assert model.image_size(outputs) == (128, 192)
    detections = model.predict(outputs, max_det=100)
    for image, found in enumerate(detections):
        assert found["boxes"].shape == (100, 4) and found["scores"].shape == (100,)
        assert (found["scores"][:-1] >= found["scores"][1:]).all()  # best first
        assert (found["boxes"][:, 0::2] <= 192).all() and (found["boxes"] >= 0).all()
        scores = outputs.cls_logits[-1, image].sigmoid()
        # the top 100 of queries x classes: no NMS, a query may come with several classes
        torch.testing.assert_close(found["scores"], scores.flatten().topk(100)[0])
        query, label = found["labels"][0], scores.flatten().argmax() % 3
        assert query == label
    assert len(model.predict(outputs, score_thr=0.99)[0]["boxes"]) == 0


def test_training_step_reaches_every_part():
    model = _tiny(with_box_refine=True, as_two_stage=True, frozen_stages=-1, norm_eval=False)
    model.train()
    # positions reach the loss through the offsets and weights of deformable attention,
    # whose matrices start at zero (the first step gives them a value)
    for module in model.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            nn.init.normal_(module.sampling_offsets.weight, std=0.01)
            nn.init.normal_(module.attention_weights.weight, std=0.01)
    outputs = model(torch.rand(2, 3, 64, 128))
    losses = model.loss(outputs, _targets())
    assert set(losses) == {"cls", "l1", "giou", "aux", "loss"}
    losses["loss"].backward()
    names = (
        "backbone.conv1.weight", "neck.extra_convs.0.0.weight", "level_embed",
        "encoder.0.self_attn.sampling_offsets.weight", "decoder.1.cross_attn.value_proj.weight",
        "decoder.0.self_attn.in_proj_weight", "memory_trans_fc.weight", "pos_trans_fc.weight",
        "cls_branches.2.weight", "reg_branches.0.4.weight", "reg_branches.2.4.weight",
    )  # fmt: skip
    for name in names:
        gradient = dict(model.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_images_without_boxes_and_more_boxes_than_queries():
    model = _tiny().train()
    outputs = model(torch.rand(2, 3, 64, 128))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model.loss(outputs, empty)
    assert torch.isfinite(losses["loss"]) and losses["l1"] == 0 and losses["cls"] > 0
    # 9 boxes for 6 queries: every query learns one box, three boxes are left out
    corner = torch.arange(9.0)[:, None] * 5
    boxes = torch.cat([corner, corner, corner + 20, corner + 20], 1)
    crowded = [{"boxes": boxes, "labels": torch.zeros(9, dtype=torch.long)}] * 2
    assignment = model.assign(outputs, crowded)
    assert (assignment.layers.gt_index >= 0).all()
    assert all(len(set(row.tolist())) == 6 for row in assignment.layers.gt_index.flatten(0, 1))
    assert torch.isfinite(model.loss(outputs, crowded, assignment)["loss"])


def test_bad_input_names_the_culprit():
    model = _tiny()
    with pytest.raises(ValueError, match="64"):
        model(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="num_heads"):
        DeformableDETR(DeformableDETRConfig(embed_dims=100, num_heads=8, pretrained=None))
    outputs = model(torch.rand(2, 3, 64, 128))
    with pytest.raises(ValueError, match="targets"):
        model.loss(outputs, _targets()[:1])


def test_sine_position_embedding_layout():
    pos = sine_position_embedding(3, 4, 8)
    assert pos.shape == (16, 3, 4)
    # channel 0 is sin of y (row centre, scaled to 2 pi), channel 8 sin of x; odd ones cosines
    torch.testing.assert_close(pos[0, :, 0], torch.sin((torch.arange(3) + 0.5) / 3 * 2 * torch.pi))
    torch.testing.assert_close(pos[9, 0, :], torch.cos((torch.arange(4) + 0.5) / 4 * 2 * torch.pi))


def test_schedules_scale_the_learning_rate_of_backbone_offsets_and_references():
    model = build_detector("deformable-detr-r18half-d128", num_classes=3)
    schedules = schedules_for(model)
    cpu, gpu = schedules["cpu"], schedules["gpu"]
    assert gpu.lr == 2e-4 and gpu.grad_clip == 0.1 and gpu.epochs == 50
    assert gpu.step_milestones == (0.8,) and cpu.grad_clip == 0.1
    optimizer = build_optimizer(model, cpu)
    assert optimizer.param_groups[0]["lr"] == cpu.lr  # the schedule's own rate first
    rates = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            rates[id(parameter)] = group["lr"]
    for name, parameter in model.named_parameters():
        slow = any(part in name for part in ("backbone", "sampling_offsets", "reference_points"))
        assert rates[id(parameter)] == pytest.approx(cpu.lr * (0.1 if slow else 1.0)), name


def test_two_stages_need_as_many_tokens_as_queries():
    model = _tiny(as_two_stage=True, num_queries=90)
    with pytest.raises(ValueError, match="90 queries among the encoder's 85 tokens"):
        model(torch.rand(1, 3, 64, 64))
    assert schedules_for(model)["ci"].img_size == 128
