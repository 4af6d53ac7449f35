"""Object crops of a detection set: a classification set to pre-train a backbone on.

Every annotated box of a COCO-format set becomes one sample: the box enlarged by a
context margin, cut out and resized to a square; its label is the box's class. Random
patches that hold no box centre are added as one more class, "background", so the
features learn to tell objects from clutter too. The crops are cut once and kept in
memory (uint8); each read takes a random sub-square (a zoom and a shift) and a random
flip, so no two epochs see the same pixels.

    crops = ObjectCrops(dataset, size=64)      # dataset: detutils.data.CocoDetection
    image, label = crops[0]                    # (3, 64, 64) float in [0, 1], int

This is how the course pre-trains the backbones of its two-stage and transformer
detectors (notebook 04), where the references start from ImageNet weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ObjectCrops", "crop_squares"]


class ObjectCrops(Dataset):
    """Crops of every box of a detection set, plus background patches.

    Args:
        dataset: a ``CocoDetection`` without transforms (its ``load_image`` and
            ``load_target`` are read).
        size: side of the returned crops, px.
        context: the object's context: a read shows a square around the box centre
            (the object keeps its aspect ratio) of about ``context`` x the box's longer
            side. The square cut and stored is 1.25 times larger (``context`` x 1.25),
            so that the random zoom can read 0.8 to 1 of it (``context`` x 1 to x 1.25);
            without ``augment`` a read takes its centre 0.9 (``context`` x 1.125).
        background_fraction: background patches, as a fraction of the number of boxes.
        min_side: boxes whose longer side is below this many pixels are left out.
        augment: random zoom (the crop's side times 0.8 .. 1.0), shift and flip.
        seed: of the background patches' positions.

    Attributes:
        class_names: the set's class names and ``"background"`` last.
        labels: (N,) int64 label of every crop.

    Raises:
        ValueError: the set has no box to crop (background alone teaches nothing), or a
            bad argument.
    """

    def __init__(
        self,
        dataset,
        size: int = 64,
        context: float = 1.5,
        background_fraction: float = 0.2,
        min_side: float = 4.0,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if size < 8 or context < 1.0 or background_fraction < 0 or min_side < 0:
            raise ValueError(
                f"size >= 8, context >= 1, background_fraction >= 0 and min_side >= 0, got "
                f"{size}, {context}, {background_fraction}, {min_side}"
            )
        self.size, self.augment = size, augment
        self.class_names = [*dataset.class_names, "background"]
        background_label = len(dataset.class_names)
        # cut a little more than needed, so the random zoom can still show context
        cut = round(size * 1.25)
        rng = np.random.default_rng(seed)
        crops, labels = [], []
        for image_id in dataset.image_ids:
            image = dataset.load_image(image_id)  # (3, H, W) float in [0, 1]
            target = dataset.load_target(image_id)
            boxes = target["boxes"].as_subclass(Tensor)
            height, width = image.shape[1:]
            keep = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) >= min_side
            squares = crop_squares(boxes[keep], context * 1.25)
            for square, label in zip(squares, target["labels"][keep].tolist(), strict=True):
                crops.append(_cut(image, square, cut))
                labels.append(label)
            # background: squares of a random side whose centre is in no box
            for _ in range(rng.binomial(max(len(boxes), 1), background_fraction)):
                side = float(rng.uniform(16, min(height, width) / 2))
                cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
                inside = (
                    (boxes[:, 0] < cx) & (cx < boxes[:, 2]) & (boxes[:, 1] < cy) & (cy < boxes[:, 3])
                )
                if not inside.any():
                    square = torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
                    crops.append(_cut(image, square * 1.0, cut))
                    labels.append(background_label)
        if not (torch.tensor(labels) != background_label).any():
            raise ValueError(f"{dataset!r} has no box of at least {min_side} px to crop")
        self.crops = torch.stack(crops)  # (N, 3, cut, cut) uint8
        self.labels = torch.tensor(labels, dtype=torch.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        crop = self.crops[index].float() / 255.0  # (3, cut, cut)
        cut = crop.shape[-1]
        if self.augment:
            side = int(torch.randint(round(0.8 * cut), cut + 1, ()))
            top, left = (int(torch.randint(0, cut - side + 1, ())) for _ in range(2))
            crop = crop[:, top : top + side, left : left + side]
            if torch.rand(()) < 0.5:
                crop = crop.flip(-1)
        else:  # the centre, at the size the random zoom gives on average
            side = round(0.9 * cut)
            start = (cut - side) // 2
            crop = crop[:, start : start + side, start : start + side]
        crop = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=True)[0]  # fmt: skip
        return crop.clamp(0, 1), int(self.labels[index])

    def __repr__(self) -> str:
        counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return f"ObjectCrops({len(self)} crops of {self.size} px, per class {counts})"


def crop_squares(boxes: Tensor, scale: float) -> Tensor:
    """(M, 4) xyxy -> (M, 4) squares around the centres, side ``scale`` x the longer side
    (``ObjectCrops`` cuts ``scale = context * 1.25``)."""
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True) * scale / 2
    return torch.cat([centers - half, centers + half], dim=1)


def _cut(image: Tensor, square: Tensor, size: int) -> Tensor:
    """The square (xyxy px, may reach outside the image: zero padding) resized to
    ``size`` px, as uint8 (3, size, size)."""
    _, height, width = image.shape
    x1, y1, x2, y2 = square.tolist()
    left, top = int(np.floor(x1)), int(np.floor(y1))
    right, bottom = max(int(np.ceil(x2)), left + 1), max(int(np.ceil(y2)), top + 1)
    pad = (max(0, -left), max(0, right - width), max(0, -top), max(0, bottom - height))
    padded = F.pad(image, pad)  # zeros outside the image
    region = padded[:, top + pad[2] : bottom + pad[2], left + pad[0] : right + pad[0]]
    resized = F.interpolate(region[None], size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)[0]  # fmt: skip
    return (resized.clamp(0, 1) * 255).round().to(torch.uint8)
