"""Detection transforms on ``torchvision.transforms.v2``: letterbox, flip, colour jitter.

Every transform takes and returns ``(image, target)``: image a ``tv_tensors.Image``
(3, H, W) float in [0, 1], target a dict whose ``boxes`` are ``tv_tensors.BoundingBoxes``
(xyxy pixels), so v2 moves the boxes with the pixels. After the geometric steps the
boxes are clipped to the image, and boxes whose width or height falls below
``min_size`` pixels are dropped together with their labels.

Letterbox keeps the aspect ratio: the image is resized so that its longer side is
the square's side, then padded (grey, as in the YOLO family) to a square. It
records the mapping in the target, ``scale`` and ``pad`` = (left, top), so a box on
the square maps back to the file's pixels as ``(box - [left, top, left, top]) / scale``
(exact up to the rounding of the resized size, under half a pixel of the square).

Two training recipes are available. The course's: a letterbox, a horizontal flip and
``v2.ColorJitter``. YOLOv8's (ultralytics' defaults without mosaic): a random zoom
(``scale_range`` (0.5, 1.5)) about the centre, a random shift of the centre by up to a
``translate`` fraction (0.1) of the side, boxes cut to less than ``min_visible`` (0.1)
of their area dropped, then ``RandomHSV`` (gains 0.015, 0.7, 0.4) and the flip.

Reference: torchvision ``transforms.v2`` (``SanitizeBoundingBoxes``,
``ClampBoundingBoxes``), the letterbox of ultralytics ``LetterBox``, its
``RandomPerspective`` (scale, translate, ``box_candidates``) and ``RandomHSV``
(``ultralytics/data/augment.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["LETTERBOX_FILL", "Letterbox", "RandomHSV", "build_transforms", "undo_letterbox"]

LETTERBOX_FILL = 114 / 255  # grey of the padding


class Letterbox(nn.Module):
    """Resize keeping the aspect ratio, then pad (or crop) to a ``size`` x ``size`` square.

    Args:
        size: side of the output square, pixels.
        scale_range: (low, high) factor drawn uniformly and applied on top of the fit
            of the longer side; (1, 1) is a plain letterbox. Above 1 the image is
            larger than the square and a window of it is kept.
        random_position: place the image at a random offset in the square (or take a
            random window) instead of centring it.
        fill: value of the padding, in [0, 1].
        translate: without ``random_position``, shift the centred image by a random
            offset of up to this fraction of ``size`` along each axis (ultralytics'
            ``translate``); 0 keeps it centred.
        min_visible: drop boxes of which less than this fraction of the area (after
            the resize) stays inside the square (ultralytics' ``box_candidates`` keeps
            boxes above 0.1); 0 keeps every box that is not cut away entirely. A dropped
            box is collapsed to zero width here, so that ``SanitizeBoundingBoxes``
            removes it together with its label.

    Reference: ultralytics ``LetterBox`` (``ultralytics/data/augment.py``): the same
    fit of the longer side, centred padding and grey 114 fill.
    """

    def __init__(
        self,
        size: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        random_position: bool = False,
        fill: float = LETTERBOX_FILL,
        translate: float = 0.0,
        min_visible: float = 0.0,
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if not 0 <= translate < 1 or not 0 <= min_visible <= 1:
            raise ValueError(
                f"translate must lie in [0, 1), min_visible in [0, 1]; got {translate}, "
                f"{min_visible}"
            )
        self.size = size
        self.scale_range = scale_range
        self.random_position = random_position
        self.fill = fill
        self.translate = translate
        self.min_visible = min_visible

    def _offset(self, free: int) -> int:
        """Offset of the image in the square along one axis; ``free`` = size - image side."""
        if not self.random_position:
            centred = free // 2 if free >= 0 else -((-free) // 2)
            if not self.translate:
                return centred
            shift = (2.0 * torch.rand(()).item() - 1.0) * self.translate * self.size
            return centred + round(shift)
        low, high = min(free, 0), max(free, 0)
        return int(torch.randint(low, high + 1, ()).item())

    def forward(self, image: torch.Tensor, target: dict) -> tuple[tv_tensors.Image, dict]:
        """Letterbox ``image`` (3, H, W) and ``target["boxes"]`` (M, 4) xyxy pixels.

        Plain tensors are wrapped as ``tv_tensors.Image`` and ``BoundingBoxes``, so
        the later v2 steps know which is which; a target without boxes is fine.
        """
        if image.dim() != 3 or min(image.shape[-2:]) < 1:
            raise ValueError(f"image must be (C, H, W) with H, W >= 1, got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        boxes = target.get("boxes")
        if boxes is not None and not isinstance(boxes, tv_tensors.BoundingBoxes):
            boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
        low, high = self.scale_range
        jitter = low if low == high else low + (high - low) * torch.rand(()).item()
        scale = self.size / max(height, width) * jitter
        new_height = max(1, round(height * scale))
        new_width = max(1, round(width * scale))
        left = self._offset(self.size - new_width)
        top = self._offset(self.size - new_height)

        if (new_height, new_width) != (height, width):
            image = F.resize(image, [new_height, new_width], antialias=True)
            if boxes is not None:
                boxes = F.resize(boxes, [new_height, new_width])
        # Pad where the image is smaller than the square, crop where it is larger.
        padding = [max(left, 0), max(top, 0)]
        padding += [max(self.size - new_width - left, 0), max(self.size - new_height - top, 0)]
        if any(padding):
            image = F.pad(image, padding, fill=self.fill)
            boxes = None if boxes is None else F.pad(boxes, padding)
        if left < 0 or top < 0 or image.shape[-1] > self.size or image.shape[-2] > self.size:
            crop = (max(-top, 0), max(-left, 0), self.size, self.size)
            image = F.crop(image, *crop)
            if boxes is not None and self.min_visible > 0:  # before the crop clips them
                boxes = self._drop_cut_boxes(boxes, crop[1], crop[0])
            boxes = None if boxes is None else F.crop(boxes, *crop)
        # x_new = x_file * scale + pad, composed with any earlier letterbox.
        target = dict(target)
        if boxes is not None:
            target["boxes"] = boxes
        target["pad"] = torch.as_tensor(target.get("pad", torch.zeros(2)), dtype=torch.float32)
        target["pad"] = target["pad"] * scale + torch.tensor([left, top], dtype=torch.float32)
        target["scale"] = float(target.get("scale", 1.0)) * scale
        return image, target

    def _drop_cut_boxes(
        self, boxes: tv_tensors.BoundingBoxes, left: int, top: int
    ) -> tv_tensors.BoundingBoxes:
        """Collapse boxes (M, 4) xyxy with under ``min_visible`` of their area in the window.

        The window is the ``size`` x ``size`` square at (``left``, ``top``) that the crop keeps.
        """
        plain = boxes.as_subclass(torch.Tensor)  # (M, 4)
        area = (plain[:, 2] - plain[:, 0]) * (plain[:, 3] - plain[:, 1])  # (M,)
        window = plain.new_tensor([left, top, left, top])
        inside = (plain - window).clamp(0, self.size)  # (M, 4), in the window's pixels
        inside_area = (inside[:, 2] - inside[:, 0]) * (inside[:, 3] - inside[:, 1])
        cut = inside_area < self.min_visible * area  # (M,)
        if not cut.any():
            return boxes
        collapsed = plain.clone()
        collapsed[cut, 2] = collapsed[cut, 0]
        return tv_tensors.wrap(collapsed, like=boxes)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, scale_range={self.scale_range}, random={self.random_position}, "
            f"translate={self.translate}, min_visible={self.min_visible}"
        )


class RandomHSV(nn.Module):
    """Random gains of hue, saturation and value, as YOLO's HSV augmentation.

    Each image draws ``r = 1 + U(-1, 1) * gain`` per channel. Saturation and value are
    scaled exactly as in the HSV model, clipped at 1, computed in RGB without a
    colour-space round trip: a pixel ``c`` with maximum ``V`` and minimum ``m`` becomes
    ``V - k (V - c)`` with ``k = min(r_s, V / (V - m))`` (saturation), then is scaled
    by ``min(r_v, 1 / V)`` (value). The hue turns by ``U(-1, 1) * hue`` of a full turn,
    as in ultralytics (8.3.79 and later), but as a rotation of the RGB cube about its
    grey axis rather than a shift of the HSV hue: close to it for the small turns of
    YOLO's gain, and no RGB-HSV round trip.

    Args:
        hue: hue gain, a fraction of a turn (ultralytics ``hsv_h`` 0.015).
        saturation: saturation gain (``hsv_s`` 0.7).
        value: value gain (``hsv_v`` 0.4).

    Reference: ultralytics ``RandomHSV`` (``ultralytics/data/augment.py``).
    """

    def __init__(self, hue: float = 0.015, saturation: float = 0.7, value: float = 0.4) -> None:
        super().__init__()
        if min(hue, saturation, value) < 0 or saturation > 1 or value > 1:
            raise ValueError(
                f"HSV gains must be >= 0 with saturation and value <= 1, got "
                f"{(hue, saturation, value)}"
            )
        self.gains = (hue, saturation, value)

    @staticmethod
    def _hue_rotation(angle: float) -> torch.Tensor:
        """(3, 3) rotation of RGB vectors by ``angle`` radians about the (1, 1, 1) axis."""
        cos, sin = math.cos(angle), math.sin(angle)
        third, root = (1.0 - cos) / 3.0, math.sqrt(1.0 / 3.0) * sin
        return torch.tensor(
            [
                [cos + third, third - root, third + root],
                [third + root, cos + third, third - root],
                [third - root, third + root, cos + third],
            ]
        )

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        """Jitter ``image`` (3, H, W) float in [0, 1]; ``target`` passes unchanged."""
        r_hue, r_sat, r_val = ((2.0 * torch.rand(3) - 1.0) * torch.tensor(self.gains)).tolist()
        r_sat, r_val = 1.0 + r_sat, 1.0 + r_val
        pixels = image.as_subclass(torch.Tensor)  # (3, H, W)
        if r_hue:
            rotation = self._hue_rotation(2.0 * math.pi * r_hue).to(pixels)  # (3, 3)
            pixels = torch.einsum("ij,jhw->ihw", rotation, pixels).clamp(0.0, 1.0)
        high = pixels.amax(0, keepdim=True)  # (1, H, W), V
        spread = high - pixels.amin(0, keepdim=True)  # (1, H, W), V - m
        k = torch.where(spread > 0, high / spread.clamp(min=1e-12), torch.inf).clamp(max=r_sat)
        pixels = high - k * (high - pixels)  # saturation; V unchanged
        gain = (1.0 / high.clamp(min=1e-12)).clamp(max=r_val)  # (1, H, W)
        pixels = (pixels * gain).clamp(0.0, 1.0)  # value
        out = tv_tensors.wrap(pixels, like=image) if isinstance(image, tv_tensors.Image) else pixels
        return out, target

    def extra_repr(self) -> str:
        return f"hue={self.gains[0]}, saturation={self.gains[1]}, value={self.gains[2]}"


def build_transforms(
    img_size: int,
    train: bool,
    scale_range: tuple[float, float] = (1.0, 1.0),
    flip_prob: float = 0.5,
    color_jitter: tuple[float, float, float, float] = (0.25, 0.25, 0.4, 0.0),
    min_size: float = 1.0,
    fill: float = LETTERBOX_FILL,
    translate: float | None = None,
    hsv: tuple[float, float, float] | None = None,
    min_visible: float = 0.0,
) -> v2.Compose:
    """The transforms of a detection set: ``(image, target) -> (image, target)``.

    Train: letterbox (random scale jitter and position when ``scale_range`` is not
    (1, 1), or a random shift of the centre with ``translate``), horizontal flip,
    colour jitter (or ``RandomHSV`` with ``hsv``). Eval: letterbox only,
    deterministic. Both end by clipping boxes to the square and dropping boxes
    narrower or shorter than ``min_size`` pixels, with their labels.

    Args:
        img_size: side of the square network input, pixels.
        train: training (random) or evaluation (deterministic) transforms.
        scale_range: training scale jitter on top of the letterbox fit.
        flip_prob: probability of a horizontal flip (training).
        color_jitter: brightness, contrast, saturation, hue of ``v2.ColorJitter``
            (training); all zeros turns it off. Hue is off by default: on a CPU its
            RGB-HSV round trip took 60 % of the loading time of an image, for a shift
            (YOLO's 0.015 of a turn) that changes little.
        min_size: smallest box width and height kept, pixels.
        fill: padding value in [0, 1].
        translate: None: a jittered image lands anywhere in the square. A fraction:
            the image stays centred up to a random shift of this fraction of the side
            per axis (ultralytics' ``scale`` and ``translate``; 0.1 there).
        hsv: hue, saturation and value gains of ``RandomHSV``, used instead of
            ``color_jitter`` (ultralytics: 0.015, 0.7, 0.4); None keeps ``color_jitter``.
        min_visible: drop boxes with less than this fraction of their area left in
            the square (see ``Letterbox``; ultralytics: 0.1).

    Returns:
        a ``v2.Compose``; the target's ``scale`` and ``pad`` describe the letterbox
        (a flip is not recorded: the mapping back is for evaluation transforms).

    Reference: the torchvision detection recipe on ``transforms.v2`` (augment, then
    ``ClampBoundingBoxes`` and ``SanitizeBoundingBoxes``), docs "Transforms v2:
    end-to-end object detection example".
    """
    if not train:
        steps = [Letterbox(img_size, fill=fill)]
    else:
        jittered = scale_range[0] != 1.0 or scale_range[1] != 1.0
        random_position = jittered and translate is None
        steps = [
            Letterbox(
                img_size, scale_range, random_position, fill, translate or 0.0, min_visible
            )
        ]
        if flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(flip_prob))
        if hsv is not None:
            steps.append(RandomHSV(*hsv))
        elif any(color_jitter):
            brightness, contrast, saturation, hue = color_jitter
            steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
    steps += [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=min_size, min_area=min_size * min_size),
    ]
    return v2.Compose(steps)


def undo_letterbox(boxes: torch.Tensor, scale: float, pad: torch.Tensor) -> torch.Tensor:
    """Boxes on the letterboxed square back to the pixels of the original file.

    Args:
        boxes: (N, 4) xyxy, pixels of the square.
        scale: the target's ``scale``.
        pad: (2,) the target's ``pad`` = (left, top).

    Returns:
        (N, 4) xyxy, pixels of the file.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    offset = torch.as_tensor(pad, dtype=boxes.dtype, device=boxes.device).repeat(2)  # (4,)
    return (boxes - offset) / scale
