"""Letterbox, flip, colour jitter and box sanitising of build_transforms."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from detutils.data.transforms import (
    LETTERBOX_FILL,
    Letterbox,
    RandomHSV,
    build_transforms,
    undo_letterbox,
)


def _sample(height, width, boxes, labels=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.rand(3, height, width, generator=generator))
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes)) if labels is None else torch.tensor(labels)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": labels,
        "image_id": 7,
        "orig_size": torch.tensor([height, width]),
        "scale": 1.0,
        "pad": torch.zeros(2),
    }
    return image, target


def test_letterbox_landscape_hand_computed():
    # 40 wide, 20 high -> 80: scale 2, resized to 80 x 40, 20 px of padding above and below.
    image, target = _sample(20, 40, [[10, 5, 20, 15]])
    out_image, out = build_transforms(80, train=False)(image, target)
    assert out_image.shape == (3, 80, 80)
    assert out["scale"] == 2.0 and out["pad"].tolist() == [0.0, 20.0]
    assert out["boxes"].tolist() == [[20.0, 30.0, 40.0, 50.0]]
    assert out["boxes"].canvas_size == (80, 80)
    resized = F.resize(image, [40, 80], antialias=True)
    torch.testing.assert_close(out_image[:, 20:60], resized.as_subclass(torch.Tensor))
    assert torch.all(out_image[:, :20] == LETTERBOX_FILL)
    assert torch.all(out_image[:, 60:] == LETTERBOX_FILL)


def test_letterbox_portrait_pads_left_and_right():
    # 10 wide, 40 high -> 20: scale 0.5, resized to 5 x 20, 7 px on the left, 8 on the right.
    image, target = _sample(40, 10, [[0, 0, 10, 40]])
    out_image, out = build_transforms(20, train=False)(image, target)
    assert out["scale"] == 0.5 and out["pad"].tolist() == [7.0, 0.0]
    assert out["boxes"].tolist() == [[7.0, 0.0, 12.0, 20.0]]
    assert torch.all(out_image[:, :, :7] == LETTERBOX_FILL)
    assert torch.all(out_image[:, :, 12:] == LETTERBOX_FILL)


@pytest.mark.parametrize(("height", "width"), [(333, 500), (500, 333), (17, 301), (320, 320)])
def test_undo_letterbox_maps_back_to_file_pixels(height, width):
    boxes = [[0, 0, width, height], [3.5, 7.25, width / 2, height - 1], [width - 9, 2, width, 11]]
    image, target = _sample(height, width, boxes)
    _, out = build_transforms(320, train=False)(image, target)
    back = undo_letterbox(out["boxes"].as_subclass(torch.Tensor), out["scale"], out["pad"])
    # Exact up to the rounding of the resized side: under half a pixel of the square.
    tolerance = 0.5 / out["scale"] + 1e-4
    torch.testing.assert_close(
        back, target["boxes"].as_subclass(torch.Tensor), atol=tolerance, rtol=0
    )


def test_two_letterboxes_compose_their_mapping():
    image, target = _sample(60, 100, [[10, 20, 50, 40]])
    image, target = Letterbox(50)(image, target)  # scale 0.5, pad (0, 10)
    image, target = Letterbox(100)(image, target)  # scale 2 more, pad (0, 0)
    assert target["scale"] == 1.0
    assert target["pad"].tolist() == [0.0, 20.0]
    back = undo_letterbox(target["boxes"].as_subclass(torch.Tensor), target["scale"], target["pad"])
    torch.testing.assert_close(back, torch.tensor([[10.0, 20.0, 50.0, 40.0]]))


def test_degenerate_boxes_are_dropped_with_their_labels():
    # 100 -> 10 divides by 10: box 0 becomes 0.5 px wide, box 2 becomes 0.3 px high.
    boxes = [[0, 0, 5, 50], [10, 10, 60, 60], [20, 20, 90, 23], [0, 0, 100, 100]]
    image, target = _sample(100, 100, boxes, labels=[4, 5, 6, 7])
    _, out = build_transforms(10, train=False)(image, target)
    assert out["labels"].tolist() == [5, 7]
    assert out["boxes"].tolist() == [[1.0, 1.0, 6.0, 6.0], [0.0, 0.0, 10.0, 10.0]]
    _, out = build_transforms(10, train=False, min_size=6)(image, target)  # configurable
    assert out["labels"].tolist() == [7]


def test_empty_targets_pass_through():
    image, target = _sample(30, 40, [])
    for train in (False, True):
        out_image, out = build_transforms(64, train=train)(image, target)
        assert out_image.shape == (3, 64, 64)
        assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_flip_mirrors_boxes_and_pixels():
    image, target = _sample(32, 32, [[2, 4, 10, 20]])
    no_jitter = build_transforms(32, train=True, flip_prob=1.0, color_jitter=(0, 0, 0, 0))
    out_image, out = no_jitter(image, target)
    assert out["boxes"].tolist() == [[22.0, 4.0, 30.0, 20.0]]  # x -> 32 - x
    torch.testing.assert_close(out_image, image.flip(-1))


def test_eval_transforms_are_deterministic():
    image, target = _sample(50, 70, [[5, 5, 30, 40]])
    transforms = build_transforms(64, train=False)
    first_image, first = transforms(image, target)
    torch.manual_seed(123)
    second_image, second = transforms(image, target)
    torch.testing.assert_close(first_image, second_image)
    torch.testing.assert_close(first["boxes"], second["boxes"])


def test_train_transforms_keep_the_invariants():
    boxes = [[0, 0, 120, 80], [50, 30, 70, 45], [110, 70, 120, 80], [10, 60, 14, 62]]
    image, target = _sample(80, 120, boxes)
    transforms = build_transforms(96, train=True, scale_range=(0.5, 1.5))
    seen_counts = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = transforms(image, target)
        assert out_image.shape == (3, 96, 96)
        assert out_image.min() >= 0 and out_image.max() <= 1
        box = out["boxes"]
        assert len(box) == len(out["labels"])
        assert torch.all(box >= 0) and torch.all(box <= 96)
        assert torch.all(box[:, 2] - box[:, 0] >= 1) and torch.all(box[:, 3] - box[:, 1] >= 1)
        seen_counts.add(len(box))
    assert len(seen_counts) > 1  # crops at scale > 1 do drop boxes now and then


def test_random_scale_and_position_still_map_back():
    # A box near the middle stays whole for scales up to 1.1 whatever the window.
    image, target = _sample(100, 100, [[40, 40, 60, 60]])
    letterbox = Letterbox(100, scale_range=(0.6, 1.1), random_position=True)
    pads = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, out = letterbox(image, target)
        back = undo_letterbox(out["boxes"].as_subclass(torch.Tensor), out["scale"], out["pad"])
        torch.testing.assert_close(back, torch.tensor([[40.0, 40.0, 60.0, 60.0]]), atol=1.0, rtol=0)
        pads.add(tuple(out["pad"].tolist()))
    assert len(pads) > 10  # the position really is random


def test_translate_shifts_the_centre_by_at_most_its_fraction():
    # 100 px square, no zoom: the image is shifted by at most 10 px along each axis.
    image, target = _sample(100, 100, [[40, 40, 60, 60]])
    letterbox = Letterbox(100, translate=0.1)
    shifts = set()
    for seed in range(30):
        torch.manual_seed(seed)
        _, out = letterbox(image, target)
        left, top = out["pad"].tolist()
        assert abs(left) <= 10 and abs(top) <= 10
        shifts.add((left, top))
        back = undo_letterbox(out["boxes"].as_subclass(torch.Tensor), out["scale"], out["pad"])
        torch.testing.assert_close(back, torch.tensor([[40.0, 40.0, 60.0, 60.0]]))
    assert len(shifts) > 10


def test_min_visible_drops_boxes_mostly_cut_away():
    # Zoom 2 about the centre of a 100 px image: the square keeps pixels 25..75 of it.
    # [0, 40, 30, 60]: 5 of 30 columns stay (1/6 of its area); [60, 40, 100, 60]: 15 of 40.
    image, target = _sample(100, 100, [[0, 40, 30, 60], [60, 40, 100, 60]], labels=[3, 4])
    keep_all = build_transforms(100, train=True, scale_range=(2.0, 2.0), translate=0.0,
                                flip_prob=0.0, color_jitter=(0, 0, 0, 0))  # fmt: skip
    _, out = keep_all(image, target)
    assert out["labels"].tolist() == [3, 4]
    cut = build_transforms(100, train=True, scale_range=(2.0, 2.0), translate=0.0, flip_prob=0.0,
                           color_jitter=(0, 0, 0, 0), min_visible=0.2)  # fmt: skip
    _, out = cut(image, target)
    assert out["labels"].tolist() == [4]
    assert out["boxes"].tolist() == [[70.0, 30.0, 100.0, 70.0]]


def test_random_hsv_keeps_grey_grey_and_scales_value():
    grey = tv_tensors.Image(torch.full((3, 4, 4), 0.5))
    torch.manual_seed(0)
    out, _ = RandomHSV(hue=0.5, saturation=0.9, value=0.0)(grey, {})
    torch.testing.assert_close(out.as_subclass(torch.Tensor), grey.as_subclass(torch.Tensor))
    assert isinstance(out, tv_tensors.Image)
    # Value only: every pixel scales by the same gain, clipped at 1 by its maximum.
    image = tv_tensors.Image(torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1))
    for seed in range(10):
        torch.manual_seed(seed)
        out, _ = RandomHSV(hue=0.0, saturation=0.0, value=0.9)(image, {})
        ratio = out.as_subclass(torch.Tensor).flatten() / torch.tensor([0.2, 0.4, 0.8])
        torch.testing.assert_close(ratio, ratio[:1].expand(3))
        assert out.max() <= 1.0


def test_random_hsv_saturation_keeps_the_maximum_and_clips_at_grey_or_full():
    image = tv_tensors.Image(torch.tensor([0.2, 0.4, 0.8]).view(3, 1, 1))
    for seed in range(20):
        torch.manual_seed(seed)
        out, _ = RandomHSV(hue=0.0, saturation=1.0, value=0.0)(image, {})
        pixel = out.as_subclass(torch.Tensor).flatten()
        assert pixel.max() == pytest.approx(0.8) and pixel.min() >= 0
        # Saturation (max - min) / max moves, the order of the channels does not.
        assert pixel[0] <= pixel[1] <= pixel[2]


def test_yolo_style_train_transforms_keep_the_invariants():
    boxes = [[0, 0, 120, 80], [50, 30, 70, 45], [110, 70, 120, 80], [10, 60, 14, 62]]
    image, target = _sample(80, 120, boxes)
    transforms = build_transforms(
        96, train=True, scale_range=(0.5, 1.5), translate=0.1, hsv=(0.015, 0.7, 0.4),
        min_visible=0.1,
    )  # fmt: skip
    assert any(isinstance(step, RandomHSV) for step in transforms.transforms)
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = transforms(image, target)
        assert out_image.shape == (3, 96, 96)
        assert out_image.min() >= 0 and out_image.max() <= 1
        assert len(out["boxes"]) == len(out["labels"])
        assert torch.all(out["boxes"] >= 0) and torch.all(out["boxes"] <= 96)


def test_plain_tensors_are_taken_as_image_and_xyxy_boxes():
    image, target = _sample(20, 40, [[10, 5, 20, 15]])
    plain_target = {**target, "boxes": target["boxes"].as_subclass(torch.Tensor)}
    out_image, out = build_transforms(80, train=False)(
        image.as_subclass(torch.Tensor), plain_target
    )
    assert isinstance(out_image, tv_tensors.Image)
    assert out["boxes"].tolist() == [[20.0, 30.0, 40.0, 50.0]]
    _, no_boxes = Letterbox(80)(image, {"labels": torch.zeros(0)})  # a target without boxes
    assert no_boxes["scale"] == 2.0 and "boxes" not in no_boxes


def test_pass_through_fields_are_kept():
    image, target = _sample(30, 30, [[1, 1, 9, 9]])
    _, out = build_transforms(60, train=True)(image, target)
    assert out["image_id"] == 7 and out["orig_size"].tolist() == [30, 30]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": 0}, "size"),
        ({"size": 8, "scale_range": (2, 1)}, "scale_range"),
        ({"size": 8, "translate": 1.0}, "translate"),
        ({"size": 8, "min_visible": -0.1}, "min_visible"),
    ],
)
def test_bad_letterbox_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        Letterbox(**arguments)


@pytest.mark.parametrize("shape", [(3, 0, 10), (3, 10, 0), (10, 10)])
def test_empty_or_flat_images_are_refused(shape):
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(ValueError, match="image must be"):
        build_transforms(32, train=False)(torch.zeros(shape), target)


def test_undo_letterbox_rejects_a_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        undo_letterbox(torch.zeros(1, 4), 0.0, torch.zeros(2))
