"""Mosaic augmentation: four training images in one, at a random scale and offset.

YOLOv4 introduced it and the YOLOv5 and YOLOv8 trainers use it by default: the four
letterboxed images are placed around a random centre of a canvas twice the input
size, and a window of the canvas, at a random scale (0.5 to 1.5 by default) and
offset, becomes the training image. A step then sees objects of four images, cut at
the image borders and at scales the set alone would not show, which matters most on a
small set such as the shapes set.

    canvas (2S x 2S)                 the window (side S / scale) -> resized to S x S
    +---------+---------+
    |  img 0  |  img 1  |            boxes: shifted with their image, cut by the
    |      (xc, yc)     |            window, kept when at least ``area_thr`` of their
    |  img 2  |  img 3  |            area and ``min_size`` px of each side remain
    +---------+---------+

Reference: ultralytics ``Mosaic`` and ``RandomPerspective`` (``ultralytics/data/
augment.py``): the same canvas and centre range; there, a full random affine
(degrees, shear, perspective are all 0 by default for detection, leaving scale and
translation) maps the canvas back to S x S. Here the window does the same with a crop
and a resize.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from detutils.data.transforms import LETTERBOX_FILL

__all__ = ["MIN_VISIBLE", "Mosaic", "build_train_set"]

# With a random zoom or shift, a box keeps its label only if this fraction of its
# area stays in the image (ultralytics ``box_candidates``, ``area_thr=0.1``).
MIN_VISIBLE = 0.1


class Mosaic(Dataset):
    """A training set whose items are, with probability ``prob``, mosaics of four.

    Args:
        dataset: items ``(image (3, S, S), target)`` letterboxed to ``img_size``, with
            ``target["boxes"]`` (M, 4) xyxy px and ``target["labels"]`` (M,): give it
            the evaluation transforms, ``build_transforms(img_size, train=False)``.
        img_size: S, the side of its images and of the mosaics.
        prob: probability that an item is a mosaic (else the image itself).
        scale_range: the window is S / scale on a side, scale drawn uniformly here.
        translate: the window's centre moves up to this fraction of S from the canvas
            centre.
        min_size: a box narrower or shorter than this (px, after the resize) is dropped.
        area_thr: a box keeping less than this fraction of its area is dropped.
        transforms: applied to every item afterwards, mosaic or not (flip, colour
            jitter: ``build_transforms(img_size, train=True)``).

    Random draws use torch's generator, which the course's loader seeds per worker.
    Other attributes (``coco``, ``class_names``, ...) are those of ``dataset``.
    """

    def __init__(
        self,
        dataset: Dataset,
        img_size: int,
        prob: float = 1.0,
        scale_range: tuple[float, float] = (0.5, 1.5),
        translate: float = 0.1,
        min_size: float = 2.0,
        area_thr: float = 0.1,
        transforms: Callable | None = None,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be a positive number of pixels, got {img_size}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {prob}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if not 0.0 <= translate < 0.5:
            raise ValueError(f"translate must lie in [0, 0.5), got {translate}")
        if len(dataset) == 0:
            raise ValueError("Mosaic needs a non-empty dataset")
        self.dataset, self.img_size, self.prob = dataset, img_size, prob
        self.scale_range, self.translate = scale_range, translate
        self.min_size, self.area_thr, self.transforms = min_size, area_thr, transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if self.prob > 0 and torch.rand(()).item() < self.prob:
            image, target = self.mosaic(index)
        else:
            image, target = self._item(index)
        if self.transforms is not None:
            image, target = self.transforms(tv_tensors.Image(image), target)
            target["boxes"] = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
            image = image.as_subclass(torch.Tensor)
        return image, target

    def _item(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.dataset[index]
        size = self.img_size
        if tuple(image.shape[-2:]) != (size, size):
            raise ValueError(
                f"item {index}: image is {tuple(image.shape[-2:])}, expected ({size}, {size}); "
                "letterbox the dataset to img_size first"
            )
        return image, target

    def mosaic(self, index: int) -> tuple[torch.Tensor, dict]:
        """Item ``index`` and three random others as one ``(3, S, S)`` image and target."""
        size = self.img_size
        others = torch.randint(len(self.dataset), (3,)).tolist()
        centre_x, centre_y = torch.randint(size // 2, 3 * size // 2 + 1, (2,)).tolist()
        # The window: side size / scale, centred near the canvas centre (size, size).
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        side = max(1, round(size / scale))
        shift = (torch.rand(2) * 2 - 1) * self.translate * size
        left = round(size + shift[0].item() - side / 2)
        top = round(size + shift[1].item() - side / 2)
        # Only the window is built: each image is pasted where it meets the window and
        # the canvas; the rest is the grey of the letterbox padding.
        window, first = None, None
        boxes, labels = [], []
        corners = [(centre_x - size, centre_y - size), (centre_x, centre_y - size),
                   (centre_x - size, centre_y), (centre_x, centre_y)]  # fmt: skip
        for item, (image_left, image_top) in zip([index, *others], corners, strict=True):
            image, target = self._item(item)
            if window is None:
                window = image.new_full((image.shape[0], side, side), LETTERBOX_FILL)
                first = target
            x0, y0 = max(image_left, left, 0), max(image_top, top, 0)
            x1 = min(image_left + size, left + side, 2 * size)
            y1 = min(image_top + size, top + side, 2 * size)
            if x1 > x0 and y1 > y0:
                window[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[
                    :, y0 - image_top : y1 - image_top, x0 - image_left : x1 - image_left
                ]
            offset = torch.tensor([image_left - left, image_top - top] * 2, dtype=torch.float32)
            boxes.append(target["boxes"].float().reshape(-1, 4) + offset)
            labels.append(target["labels"].reshape(-1))
        image = window if side == size else F.resize(window, [size, size], antialias=True)
        boxes = torch.cat(boxes) * (size / side)  # (M, 4) window px -> output px
        kept_boxes, keep = _cut(boxes, size, self.min_size, self.area_thr)
        target = {
            "boxes": tv_tensors.BoundingBoxes(kept_boxes, format="XYXY", canvas_size=(size, size)),
            "labels": torch.cat(labels)[keep],
            "image_id": first["image_id"],
            "orig_size": torch.tensor([size, size]),
            "scale": 1.0,
            "pad": torch.zeros(2),
        }
        return image, target

    def __repr__(self) -> str:
        return (
            f"Mosaic(prob={self.prob}, img_size={self.img_size}, scale_range={self.scale_range}, "
            f"translate={self.translate}, dataset={self.dataset!r})"
        )


def _cut(
    boxes: torch.Tensor, size: int, min_size: float, area_thr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip (M, 4) boxes to the square; keep those with enough of their area and size."""
    clipped = boxes.clamp(0, size)
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (width >= min_size) & (height >= min_size)
    keep &= width * height >= area_thr * area.clamp(min=math.ulp(1.0))
    return clipped[keep], keep


def build_train_set(dataset: Dataset, schedule) -> Dataset:
    """``dataset`` ready to train on with ``schedule`` (a ``TrainSchedule``).

    Sets ``dataset.transforms`` (a ``CocoDetection``) from the schedule's ``img_size``
    and ``augment``: the letterbox, and with ``augment`` the flip and colour jitter of
    ``build_transforms``, or YOLO's zoom, shift and HSV gains where the schedule sets
    ``scale``, ``translate`` and ``hsv`` (boxes then keep at least ``MIN_VISIBLE`` of
    their area, as in ultralytics). With ``augment`` and a ``mosaic`` probability the
    dataset keeps the letterbox only and is wrapped in ``Mosaic``, which applies the
    rest after the mosaic. With ``cache_images`` the images are decoded into memory first.

    Returns:
        the dataset to train on: ``dataset`` itself or a ``Mosaic`` around it.
    """
    from detutils.data.transforms import build_transforms

    size = schedule.img_size
    if schedule.cache_images:
        dataset.cache_images()
    train_transforms = build_transforms(size, train=False)
    if schedule.augment:
        zoom, shift = schedule.scale, schedule.translate
        affine = bool(zoom or shift)
        train_transforms = build_transforms(
            size, train=True, scale_range=(1.0 - zoom, 1.0 + zoom),
            translate=shift if affine else None, hsv=schedule.hsv,
            min_visible=MIN_VISIBLE if affine else 0.0,
        )  # fmt: skip
    if schedule.augment and schedule.mosaic > 0:
        dataset.transforms = build_transforms(size, train=False)
        return Mosaic(dataset, size, prob=schedule.mosaic, transforms=train_transforms)
    dataset.transforms = train_transforms
    return dataset
