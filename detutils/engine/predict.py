"""Detections of one image file, drawn over it.

The image is letterboxed exactly as for evaluation, the detector's boxes are mapped
back to the file's pixels, and ``detutils.viz.draw_boxes`` draws them.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision import tv_tensors

from detutils.boxes import clip_boxes
from detutils.data.transforms import build_transforms, undo_letterbox

__all__ = ["draw_detections", "predict_image", "read_image"]


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as (3, H, W) float32 in [0, 1].

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an image Pillow can read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as file:
            pixels = np.asarray(file.convert("RGB"))  # (H, W, 3) uint8
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} cannot be read as an image ({error})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0  # (3, H, W)


@torch.no_grad()
def predict_image(
    model: nn.Module,
    image: Tensor,
    img_size: int,
    score_thr: float = 0.25,
    iou_thr: float = 0.6,
    max_det: int = 100,
) -> dict[str, Tensor]:
    """Detections of one image, in the pixels of that image.

    Args:
        model: a detector, on the device to use.
        image: (3, H, W) float in [0, 1], any size.
        img_size: side of the square network input.
        score_thr, iou_thr, max_det: passed to ``model.predict``.

    Returns:
        ``{"boxes" (N, 4) xyxy px of ``image``, "scores" (N,), "labels" (N,)}`` on CPU.

    Reference:
        ultralytics ``engine/predictor.py`` (letterbox, predict, ``scale_boxes``).
    """
    if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise ValueError(f"image must be (3, H, W) with H, W >= 1, got {tuple(image.shape)}")
    height, width = image.shape[1:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)
        ),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    square, target = build_transforms(img_size, train=False)(tv_tensors.Image(image), target)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outputs = model(square.as_subclass(Tensor)[None].to(device))  # (1, 3, S, S) input
        detections = model.predict(outputs, score_thr=score_thr, iou_thr=iou_thr, max_det=max_det)
    finally:
        model.train(was_training)
    detection = {key: value.detach().cpu() for key, value in detections[0].items()}
    boxes = undo_letterbox(detection["boxes"].float(), target["scale"], target["pad"])
    detection["boxes"] = clip_boxes(boxes, (height, width))
    return detection


def draw_detections(
    image: Tensor,
    detections: dict[str, Tensor],
    class_names: list[str],
    out: str | os.PathLike,
) -> Path:
    """Draw ``detections`` over ``image`` and save a PNG the size of the image.

    Args:
        image: (3, H, W) float in [0, 1].
        detections: ``{"boxes" (N, 4) xyxy px, "scores" (N,), "labels" (N,)}``.
        class_names: name of each label.
        out: the PNG file to write (its folder is created).

    Returns:
        the path written.
    """
    from matplotlib.figure import Figure  # no pyplot: a file, never a window

    from detutils.viz import draw_boxes

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    height, width = image.shape[1:]
    dpi = 100
    figure = Figure(figsize=(max(width, 200) / dpi, (max(height, 200) + 24) / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1 - 24 / (max(height, 200) + 24)))
    draw_boxes(
        image,
        detections["boxes"],
        detections["labels"],
        detections["scores"],
        class_names=class_names,
        ax=axes,
        title=f"{len(detections['scores'])} detections",
    )
    axes.set_axis_off()
    figure.savefig(out, dpi=dpi)
    return out
