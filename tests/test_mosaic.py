"""Mosaic: four letterboxed items in one, boxes following their pixels."""

import pytest
import torch

from detutils.data.mosaic import MIN_VISIBLE, Mosaic, build_train_set
from detutils.data.transforms import LETTERBOX_FILL
from detutils.engine.schedule import TrainSchedule

SIZE = 64


class Squares(torch.utils.data.Dataset):
    """Item i: a SIZE x SIZE image, black but for one square of value (i + 1) / 10
    at a place that depends on i, with its box and label i."""

    def __init__(self, count: int = 4, size: int = SIZE) -> None:
        self.count, self.size = count, size
        self.class_names = [f"c{i}" for i in range(count)]

    def __len__(self) -> int:
        return self.count

    def box(self, index: int) -> torch.Tensor:
        x0, y0 = 8 + 6 * index, 10 + 4 * index
        return torch.tensor([[x0, y0, x0 + 20, y0 + 16]], dtype=torch.float32)

    def __getitem__(self, index: int):
        image = torch.zeros(3, self.size, self.size)
        x0, y0, x1, y1 = self.box(index)[0].int().tolist()
        image[:, y0:y1, x0:x1] = (index + 1) / 10
        target = {"boxes": self.box(index), "labels": torch.tensor([index]), "image_id": index}
        return image, target


def test_boxes_follow_their_pixels():
    mosaic = Mosaic(Squares(), SIZE, scale_range=(0.8, 1.2), translate=0.2, min_size=4)
    torch.manual_seed(0)
    seen = 0
    for _ in range(20):
        image, target = mosaic[0]
        assert image.shape == (3, SIZE, SIZE)
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            assert (box >= 0).all() and (box <= SIZE).all()
            x0, y0, x1, y1 = box.tolist()
            centre = image[0, int((y0 + y1) / 2), int((x0 + x1) / 2)]
            assert centre.item() == pytest.approx((label.item() + 1) / 10, abs=0.03)
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_fixed_window_is_the_canvas_centre(seed):
    # scale 1 and no translation: the window is the canvas square [S/2, 3S/2)
    squares = Squares()
    mosaic = Mosaic(squares, SIZE, scale_range=(1.0, 1.0), translate=0.0, min_size=2)
    torch.manual_seed(seed)
    image, target = mosaic.mosaic(2)
    torch.manual_seed(seed)  # the same draws, in the same order, by hand
    others = torch.randint(4, (3,)).tolist()
    centre_x, centre_y = torch.randint(SIZE // 2, 3 * SIZE // 2 + 1, (2,)).tolist()
    corners = [(centre_x - SIZE, centre_y - SIZE), (centre_x, centre_y - SIZE),
               (centre_x - SIZE, centre_y), (centre_x, centre_y)]  # fmt: skip
    expected_boxes, expected_labels = [], []
    for item, (left, top) in zip([2, *others], corners, strict=True):
        shift = torch.tensor([left, top, left, top]) - SIZE // 2
        box = squares.box(item)[0] + shift
        clipped = box.clamp(0, SIZE)
        size = clipped[2:] - clipped[:2]
        area = (size[0] * size[1]) / ((box[2] - box[0]) * (box[3] - box[1]))
        if size.min() >= 2 and area >= 0.1:
            expected_boxes.append(clipped)
            expected_labels.append(item)
    assert target["labels"].tolist() == expected_labels
    if expected_boxes:
        torch.testing.assert_close(target["boxes"], torch.stack(expected_boxes))
    assert len(expected_boxes) >= 1


def test_cut_boxes_are_dropped_and_padding_is_grey():
    # at scale 0.5 the window is twice the canvas centre: grey borders appear
    mosaic = Mosaic(Squares(), SIZE, scale_range=(0.5, 0.5), translate=0.49)
    torch.manual_seed(1)
    image, target = mosaic.mosaic(0)
    corners = image[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners - LETTERBOX_FILL).abs().min() < 1e-4
    widths = target["boxes"][:, 2:] - target["boxes"][:, :2]
    assert (widths >= 2).all()
    assert len(target["boxes"]) == len(target["labels"]) <= 4


def test_probability_zero_gives_the_items_and_attributes_pass_through():
    squares = Squares()
    mosaic = Mosaic(squares, SIZE, prob=0.0)
    image, target = mosaic[1]
    torch.testing.assert_close(image, squares[1][0])
    torch.testing.assert_close(target["boxes"], squares.box(1))
    assert mosaic.class_names == squares.class_names and len(mosaic) == 4


def test_same_seed_same_mosaic():
    mosaic = Mosaic(Squares(), SIZE)
    torch.manual_seed(5)
    first = mosaic[0]
    torch.manual_seed(5)
    second = mosaic[0]
    torch.testing.assert_close(first[0], second[0])
    torch.testing.assert_close(first[1]["boxes"], second[1]["boxes"])


def test_bad_arguments_and_items_are_named():
    with pytest.raises(ValueError, match="prob"):
        Mosaic(Squares(), SIZE, prob=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        Mosaic(Squares(), SIZE, scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="translate"):
        Mosaic(Squares(), SIZE, translate=0.5)
    with pytest.raises(ValueError, match="non-empty"):
        Mosaic(Squares(count=0), SIZE)
    with pytest.raises(ValueError, match=r"item \d: image is \(32, 32\), expected \(64, 64\)"):
        Mosaic(Squares(size=32), SIZE).mosaic(0)


def test_build_train_set_wraps_only_with_augment_and_mosaic():
    class Settable(Squares):
        transforms = None
        cached = False

        def cache_images(self):
            self.cached = True

    plain = Settable()
    assert build_train_set(plain, TrainSchedule(img_size=SIZE, augment=True)) is plain
    assert plain.transforms is not None and not plain.cached
    schedule = TrainSchedule(img_size=SIZE, augment=True, mosaic=0.5, cache_images=True)
    wrapped = build_train_set(Settable(), schedule)
    assert isinstance(wrapped, Mosaic) and wrapped.prob == 0.5 and wrapped.dataset.cached
    off = TrainSchedule(img_size=SIZE, augment=False, mosaic=1.0)
    assert not isinstance(build_train_set(Settable(), off), Mosaic)
    with pytest.raises(ValueError, match="mosaic must lie in"):
        TrainSchedule(mosaic=2.0)


def test_build_train_set_takes_yolo_zoom_shift_and_hsv_from_the_schedule():
    from detutils.data.transforms import Letterbox, RandomHSV

    class Settable(Squares):
        transforms = None

    schedule = TrainSchedule(img_size=SIZE, scale=0.5, translate=0.1, hsv=(0.015, 0.7, 0.4))
    steps = build_train_set(Settable(), schedule).transforms.transforms
    letterbox = steps[0]
    assert isinstance(letterbox, Letterbox) and letterbox.scale_range == (0.5, 1.5)
    assert (letterbox.translate, letterbox.min_visible, letterbox.random_position) == (
        0.1, MIN_VISIBLE, False,
    )  # fmt: skip
    assert any(isinstance(step, RandomHSV) for step in steps)
    plain = build_train_set(Settable(), TrainSchedule(img_size=SIZE)).transforms.transforms
    assert plain[0].scale_range == (1.0, 1.0) and plain[0].min_visible == 0.0
    assert not any(isinstance(step, RandomHSV) for step in plain)
    stored = schedule.to_dict() | {"hsv": list(schedule.hsv)}  # as a JSON round trip gives it
    assert TrainSchedule.from_dict(stored) == schedule
    with pytest.raises(ValueError, match="scale and translate"):
        TrainSchedule(scale=1.0)
    with pytest.raises(ValueError, match="hsv"):
        TrainSchedule(hsv=(0.1, 0.2))
