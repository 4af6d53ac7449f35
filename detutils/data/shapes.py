"""A synthetic detection set of coloured shapes on cluttered backgrounds, in COCO format.

The set is made to exercise label assignment, so its difficulty is fixed by the
constants below, not by arguments: six classes, 1 to 12 objects per image, objects
from about 6 px to 80 % of the image side (COCO small, medium and large each hold
more than 15 % of the objects at 320 px), touching and overlapping objects,
textured backgrounds and distractor strokes that belong to no class.

Layout written by :func:`generate_shapes`::

    root/images/train/000001.png ...
    root/images/val/000001.png ...
    root/annotations/instances_train.json
    root/annotations/instances_val.json

Boxes are the tight boxes of each object's *visible* pixels. Objects are placed
largest first and each placement is checked against the pixels drawn so far: a
placement that would leave any object (itself included, when cut by the image
border) with less than ``MIN_VISIBLE`` of its pixels visible is rejected and
tried elsewhere, and an object that finds no place is left out. So no object is
mostly hidden, and every box is the box of pixels a detector can see.

Each image is drawn from its own random generator, seeded by ``(seed, split,
index)``, so the bytes written depend on the seed only, not on the worker count.

    python -m detutils.data.shapes --out data/shapes --train 2000 --val 500 --size 320 --seed 0

Reference: the COCO annotation format, https://cocodataset.org/#format-data
(``bbox`` is ``[x, y, width, height]`` in pixels, ``area`` the object's pixel area).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_PARAMETERS",
    "MIN_VISIBLE",
    "render_sample",
    "render_scene",
    "generate_shapes",
    "ensure_shapes",
    "course_root",
    "resolve_root",
    "main",
]

CLASS_NAMES = ("ellipse", "rectangle", "triangle", "star", "cross", "hexagon")
DEFAULT_PARAMETERS = {"train": 2000, "val": 500, "size": 320, "seed": 0}
SPLITS = ("train", "val")
# Bumped whenever a change to the drawing changes the bytes, so ensure_shapes rebuilds.
GENERATOR_VERSION = 1

MAX_OBJECTS = 12  # objects per image: uniform in 1..MAX_OBJECTS before placement
MIN_SIDE = 6.0  # px, longer box side of the smallest object
MAX_SIDE_FRACTION = 0.8  # longer box side of the largest object, as a fraction of the image side
# Longer box side: a band (low, high, probability) is picked, then a side log-uniformly
# within it; the last band ends at MAX_SIDE_FRACTION * size. At 320 px this puts about a
# third of the objects in each COCO size bin (by visible area).
SIDE_BANDS = ((MIN_SIDE, 48.0, 0.33), (48.0, 150.0, 0.31), (150.0, None, 0.36))
ASPECT_RANGE = (0.6, 1.67)  # width / height stretch before rotation
MIN_VISIBLE = 0.5  # fraction of an object's pixels that must stay visible
NEAR_PROBABILITY = 0.4  # chance that an object is placed against one already placed
PLACEMENT_TRIES = 30
DISTRACTORS = (4, 16)  # number of distractor strokes, inclusive range
MIN_COLOUR_DISTANCE = 80.0  # RGB distance of an object's colour from what lies beneath it


def _unit_polygon(name: str) -> np.ndarray:
    """Vertices (V, 2) of a shape of radius about 1 around the origin."""
    if name == "ellipse":
        angles = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "rectangle":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if name in ("triangle", "hexagon"):
        corners = 3 if name == "triangle" else 6
        angles = np.arange(corners) * 2.0 * math.pi / corners - math.pi / 2
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "star":
        angles = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if name == "cross":
        a, b = 1.0, 0.33  # arm length and half arm width
        return np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b]]
            + [[-a, b], [-a, -b], [-b, -b]]
        )
    raise ValueError(f"unknown shape {name!r}; shapes are {', '.join(CLASS_NAMES)}")


UNIT_POLYGONS = {name: _unit_polygon(name) for name in CLASS_NAMES}


def _sample_side(rng: np.random.Generator, size: int) -> float:
    """Longer box side of a new object, in pixels."""
    top = MAX_SIDE_FRACTION * size
    bands = [(low, min(high or top, top), p) for low, high, p in SIDE_BANDS if low < top]
    weights = np.array([p for _, _, p in bands])
    low, high, _ = bands[rng.choice(len(bands), p=weights / weights.sum())]
    return float(np.exp(rng.uniform(math.log(low), math.log(high))))


def _shape_mask(rng: np.random.Generator, name: str, side: float) -> np.ndarray:
    """Boolean mask (h, w) of a rotated, stretched shape whose box has longer side ``side``."""
    stretch = math.sqrt(rng.uniform(*ASPECT_RANGE))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (UNIT_POLYGONS[name] * [stretch, 1.0 / stretch]) @ rotation.T  # (V, 2)
    points = points - points.min(axis=0)
    points *= (side - 1.0) / points.max()  # pixel centres span side - 1 => box side ~ side
    points += rng.uniform(0.0, 1.0, size=2) + 0.5  # sub-pixel position
    width, height = (int(math.ceil(v)) + 1 for v in points.max(axis=0))
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background (size, size, 3) uint8: colour field, stripes or checks."""
    cells = int(rng.integers(2, 9))
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    field = Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR)
    pattern = rng.integers(0, 3)  # 0: plain colour field, 1: stripes, 2: checks
    if pattern == 0:
        return np.array(field)
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(6.0, 40.0)
    y = np.arange(size, dtype=np.float32)[:, None]  # (size, 1)
    x = np.arange(size, dtype=np.float32)[None, :]  # (1, size)
    u = x * math.cos(angle) + y * math.sin(angle)  # (size, size)
    if pattern == 1:
        on = np.sin(u * (2.0 * math.pi / period)) > 0
    else:
        v = y * math.cos(angle) - x * math.sin(angle)  # (size, size)
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    strength = rng.uniform(0.25, 0.6)
    overlay = Image.new("RGB", (size, size), _random_colour(rng))
    blended = Image.blend(field, overlay, strength)
    where = Image.fromarray(on.astype(np.uint8) * 255)  # (size, size) mask
    return np.array(Image.composite(blended, field, where))


def _draw_distractors(rng: np.random.Generator, image: Image.Image) -> None:
    """Strokes of no class: lines, arcs, zigzags, thin rings and frames."""
    size = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        kind = rng.integers(0, 5)
        colour = _random_colour(rng)
        width = int(rng.integers(1, 5))
        x0, y0 = rng.uniform(-0.1 * size, 1.1 * size, size=2)
        extent = rng.uniform(0.05, 0.6) * size
        x1, y1 = x0 + extent * rng.uniform(0.3, 1.0), y0 + extent * rng.uniform(0.3, 1.0)
        if kind == 0:
            draw.line([(x0, y0), (x1 - extent * rng.uniform(0, 2), y1)], fill=colour, width=width)
        elif kind == 1:
            start = rng.uniform(0, 360)
            draw.arc([x0, y0, x1, y1], start, start + rng.uniform(60, 270), colour, width)
        elif kind == 2:
            steps = rng.uniform(-1.0, 1.0, size=(int(rng.integers(3, 8)), 2)) * extent / 3
            points = np.cumsum(np.vstack([[x0, y0], steps]), axis=0)
            draw.line([tuple(p) for p in points], fill=colour, width=width, joint="curve")
        elif kind == 3:
            draw.ellipse([x0, y0, x1, y1], outline=colour, width=min(width, 2))
        else:
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=min(width, 2))


def _paste_slices(mask_shape, top: int, left: int, size: int):
    """Image slices and mask slices of a mask placed at (top, left), cut by the border."""
    height, width = mask_shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, size), min(left + width, size)
    if y1 <= y0 or x1 <= x0:
        return None
    image_slices = (slice(y0, y1), slice(x0, x1))
    mask_slices = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    return image_slices, mask_slices


def _propose(rng: np.random.Generator, mask_shape, placed: list[dict], size: int):
    """Top-left corner for a new object: at random, or against an object already placed."""
    if placed and rng.uniform() < NEAR_PROBABILITY:
        other = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0.0, 2.0 * math.pi)
        distance = (other["radius"] + max(mask_shape) / 2) * rng.uniform(0.5, 1.05)
        cy = other["centre"][0] + distance * math.sin(angle)
        cx = other["centre"][1] + distance * math.cos(angle)
    else:
        cy, cx = rng.uniform(0.0, size, size=2)
    return int(round(cy - mask_shape[0] / 2)), int(round(cx - mask_shape[1] / 2))


def _hidden_counts(mask, top, left, owner, placed):
    """Pixels of each placed object a mask at (top, left) would hide, or None if not allowed.

    Not allowed: the mask keeps less than ``MIN_VISIBLE`` of itself inside the image,
    or it would leave some placed object with less than ``MIN_VISIBLE`` visible.
    """
    slices = _paste_slices(mask.shape, top, left, owner.shape[0])
    if slices is None:
        return None
    image_slices, mask_slices = slices
    local = mask[mask_slices]
    if local.sum() < MIN_VISIBLE * mask.sum():
        return None  # cut too much by the image border
    beneath = owner[image_slices][local]
    hidden = np.bincount(beneath[beneath >= 0], minlength=len(placed))  # (objects placed,)
    visible = np.array([p["visible"] for p in placed], dtype=np.int64)
    full = np.array([p["full_area"] for p in placed], dtype=np.int64)
    if np.any(visible - hidden < MIN_VISIBLE * full):
        return None  # would leave an earlier object mostly hidden
    return hidden


def _paint(rng, image, region_slices, local, side) -> None:
    """Paint the pixels ``local`` of ``image[region_slices]`` in a colour that stands out."""
    region = image[region_slices]
    step = 4 if local.size > 1024 else 1  # a sample of what lies beneath is enough
    beneath = region[::step, ::step][local[::step, ::step]].astype(np.float32)  # (P, 3)
    for _ in range(10):
        colour = np.array(_random_colour(rng), dtype=np.float32)
        close = np.linalg.norm(beneath - colour, axis=1) < MIN_COLOUR_DISTANCE
        if close.mean() < 0.2:
            break
    # A gentle linear shading across the object, so it is not one flat colour.
    yy, xx = np.nonzero(local)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(side, 1.0)
    shaded = colour + np.float32(rng.uniform(-40.0, 40.0)) * (ramp - ramp.mean())[:, None]
    region[local] = np.clip(shaded, 0, 255).astype(np.uint8)


def _visible_box(owner, index: int, region_slices) -> tuple[list[int], int]:
    """Tight [x, y, w, h] box and pixel count of object ``index``'s visible pixels."""
    rows_slice, cols_slice = region_slices
    visible = owner[region_slices] == index
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    x, y = cols_slice.start + int(cols[0]), rows_slice.start + int(rows[0])
    box = [x, y, int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    return box, int(visible.sum())


def render_sample(seed: int, split: str, index: int, size: int = 320):
    """Draw one image of the set and return it with its per-pixel object map.

    1. A textured background, then distractor strokes.
    2. 1 to 12 objects, largest first; each is tried at up to ``PLACEMENT_TRIES``
       positions until one leaves every object at least ``MIN_VISIBLE`` visible.
    3. Each object's box is the tight box of its pixels that stay visible.

    Args:
        seed: seed of the whole set.
        split: ``"train"`` or ``"val"``; each split draws different images.
        index: position of the image in its split, from 0.
        size: image side in pixels.

    Returns:
        image: (size, size, 3) uint8 RGB.
        owner: (size, size) int16, element (y, x) is the index of the object whose
            pixel it is, or -1 for background.
        objects: list of dicts, one per object in drawing order: ``label`` (0..5),
            ``bbox`` [x, y, w, h] tight box of the visible pixels, ``area`` visible
            pixels, ``full_area`` pixels of the whole shape (border and occlusion aside).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    # 1.
    canvas = Image.fromarray(_background(rng, size))
    _draw_distractors(rng, canvas)
    image = np.array(canvas)  # (size, size, 3)
    owner = np.full((size, size), -1, dtype=np.int16)
    # 2.
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    wanted = sorted(
        ((_sample_side(rng, size), int(rng.integers(len(CLASS_NAMES)))) for _ in range(count)),
        reverse=True,
    )
    placed = []
    for side, label in wanted:
        mask = _shape_mask(rng, CLASS_NAMES[label], side)
        for _ in range(PLACEMENT_TRIES):
            top, left = _propose(rng, mask.shape, placed, size)
            hidden = _hidden_counts(mask, top, left, owner, placed)
            if hidden is None:
                continue
            region_slices, mask_slices = _paste_slices(mask.shape, top, left, size)
            local = mask[mask_slices]
            _paint(rng, image, region_slices, local, side)
            owner[region_slices][local] = len(placed)
            for item, count_hidden in zip(placed, hidden.tolist(), strict=True):
                item["visible"] -= count_hidden
            placed.append(
                {
                    "label": label,
                    "full_area": int(mask.sum()),
                    "visible": int(local.sum()),
                    "centre": (top + mask.shape[0] / 2, left + mask.shape[1] / 2),
                    "radius": max(mask.shape) / 2,
                    "slices": region_slices,
                }
            )
            break
    # 3.
    objects = []
    for index_in_image, item in enumerate(placed):
        box, area = _visible_box(owner, index_in_image, item["slices"])
        objects.append(
            {"label": item["label"], "bbox": box, "area": area, "full_area": item["full_area"]}
        )
    return image, owner, objects


def render_scene(
    objects: list[tuple[str | int, float, float, float]],
    size: int = 320,
    seed: int = 0,
    distractors: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a scene of chosen objects, in the set's style: a fixture for a lesson.

    Objects are painted in the order given, each over the ones before, on a textured
    background (with distractor strokes unless ``distractors=False``); an object may
    lie partly outside the image (it is cut by the border) or be partly hidden. Each
    box is the tight box of the object's visible pixels, as in the set.

    Args:
        objects: ``(label, cx, cy, side)`` per object: a class name of
            ``CLASS_NAMES`` or its index, the centre in px and the longer box side in
            px (rotation and stretch are drawn from ``seed``).
        size: image side in px.
        seed: seed of the background, the colours and the shapes' poses.

    Returns:
        image (size, size, 3) uint8 RGB, boxes (M, 4) float32 xyxy px and labels (M,)
        int64, one per object, in the order given.

    Raises:
        ValueError: an unknown class, a side under 2 px, or an object that ends with
            no visible pixel (outside the image or hidden by later ones), by index.
    """
    rng = np.random.default_rng([seed, 7])
    canvas = Image.fromarray(_background(rng, size))
    if distractors:
        _draw_distractors(rng, canvas)
    image = np.array(canvas)
    owner = np.full((size, size), -1, dtype=np.int16)
    labels = []
    for index, (label, cx, cy, side) in enumerate(objects):
        if isinstance(label, str):
            if label not in CLASS_NAMES:
                raise ValueError(f"object {index}: unknown class {label!r}, not in {CLASS_NAMES}")
            label = CLASS_NAMES.index(label)
        if not 0 <= int(label) < len(CLASS_NAMES):
            raise ValueError(
                f"object {index}: class index {label} outside 0..{len(CLASS_NAMES) - 1}"
            )
        if side < 2:
            raise ValueError(f"object {index}: side {side} px is under 2 px")
        mask = _shape_mask(rng, CLASS_NAMES[int(label)], float(side))
        top, left = int(round(cy - mask.shape[0] / 2)), int(round(cx - mask.shape[1] / 2))
        slices = _paste_slices(mask.shape, top, left, size)
        if slices is None:
            raise ValueError(f"object {index} at ({cx}, {cy}) lies wholly outside the image")
        region_slices, mask_slices = slices
        local = mask[mask_slices]
        _paint(rng, image, region_slices, local, side)
        owner[region_slices][local] = index
        labels.append(int(label))
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    whole = (slice(0, size), slice(0, size))
    for index in range(len(objects)):
        if not (owner == index).any():
            raise ValueError(f"object {index} has no visible pixel: later objects hide it")
        (x, y, w, h), _ = _visible_box(owner, index, whole)
        boxes[index] = (x, y, x + w, y + h)
    return image, boxes, np.asarray(labels, dtype=np.int64)


def _render_chunk(task: tuple) -> list[list[dict]]:
    """Worker: draw images ``indices`` of a split, write their PNGs, return their objects."""
    image_dir, seed, split, indices, size = task
    results = []
    for index in indices:
        image, _, objects = render_sample(seed, split, index, size)
        Image.fromarray(image).save(Path(image_dir) / f"{index + 1:06d}.png", compress_level=1)
        results.append(objects)
    return results


def _coco_dict(split: str, objects_per_image: list[list[dict]], parameters: dict) -> dict:
    images, annotations = [], []
    for index, objects in enumerate(objects_per_image):
        image_id = index + 1
        size = parameters["size"]
        images.append(
            {"id": image_id, "file_name": f"{image_id:06d}.png", "width": size, "height": size}
        )
        for item in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": item["label"] + 1,
                    "bbox": item["bbox"],
                    "area": item["area"],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"Synthetic shapes detection set, {split} split",
            "generator": "detutils.data.shapes",
            "parameters": parameters,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": label + 1, "name": name, "supercategory": "shape"}
            for label, name in enumerate(CLASS_NAMES)
        ],
    }


def _stored_parameters(root: Path) -> dict | None:
    """The parameters a complete shapes set under ``root`` was made with, else None."""
    found = None
    for split in SPLITS:
        ann_file = root / "annotations" / f"instances_{split}.json"
        try:
            info = json.loads(ann_file.read_text(encoding="utf-8")).get("info", {})
        except (OSError, ValueError, AttributeError):
            return None
        if info.get("generator") != "detutils.data.shapes" or not isinstance(
            info.get("parameters"), dict
        ):
            return None
        if found is not None and info["parameters"] != found:
            return None
        found = info["parameters"]
        image_dir = root / "images" / split
        expected = found.get(split)
        if not image_dir.is_dir() or sum(1 for _ in image_dir.glob("*.png")) != expected:
            return None
    return found


def generate_shapes(
    out: str | Path,
    train: int = DEFAULT_PARAMETERS["train"],
    val: int = DEFAULT_PARAMETERS["val"],
    size: int = DEFAULT_PARAMETERS["size"],
    seed: int = DEFAULT_PARAMETERS["seed"],
    workers: int | None = None,
) -> Path:
    """Write the shapes set: PNG images and COCO annotation files for train and val.

    Args:
        out: root folder of the set (created if needed).
        train: number of training images.
        val: number of validation images.
        size: image side in pixels (images are square).
        seed: seed of the set; the same seed writes the same bytes.
        workers: processes drawing images; default ``min(cpu count, 8)``; 0 or 1
            draws in this process. The output does not depend on it.

    Returns:
        ``out`` as a Path.
    """
    for name, value in (("train", train), ("val", val)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative number of images, got {value!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an integer of at least 32 px, got {size!r}")
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    out = Path(out)
    parameters = {"train": train, "val": val, "size": size, "seed": seed}
    parameters["version"] = GENERATOR_VERSION
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # annotations last: a set cut short is never taken as complete
        (out / "annotations" / f"instances_{split}.json").unlink(missing_ok=True)
    for split, count in (("train", train), ("val", val)):
        image_dir = out / "images" / split
        if image_dir.exists():
            for stale in image_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
                stale.unlink()
        image_dir.mkdir(parents=True, exist_ok=True)
        chunk = 25
        tasks = [
            (str(image_dir), seed, split, range(start, min(start + chunk, count)), size)
            for start in range(0, count, chunk)
        ]
        if workers <= 1 or len(tasks) <= 1:
            chunks = [_render_chunk(task) for task in tasks]
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
                chunks = list(pool.map(_render_chunk, tasks))
        objects_per_image = [objects for chunk_objects in chunks for objects in chunk_objects]
        coco = _coco_dict(split, objects_per_image, parameters)
        ann_file = out / "annotations" / f"instances_{split}.json"
        temporary = ann_file.with_suffix(".json.part")
        temporary.write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")
        os.replace(temporary, ann_file)
    return out


def course_root(start: str | Path | None = None) -> Path | None:
    """The course's folder: the nearest folder at or above ``start`` (default: the
    current folder) whose ``pyproject.toml`` names the ``detutils`` project; None if
    there is none (the package installed elsewhere, run from an unrelated folder)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        project = folder / "pyproject.toml"
        if project.is_file() and 'name = "detutils"' in project.read_text(errors="replace"):
            return folder
    return None


def resolve_root(root: str | Path) -> Path:
    """An absolute data root; a relative one is taken from the course's folder.

    ``"data/shapes"`` is ``<course>/data/shapes`` whether the current folder is the
    course's own or one below it, such as ``<course>/notebooks`` where the notebooks
    run (``course_root``). Outside a course checkout a relative root is taken from the
    current folder, never from a folder above it (a ``/data`` of the machine, say).
    """
    root = Path(root).expanduser()
    if root.is_absolute():
        return root
    course = course_root()
    return (course or Path.cwd()) / root


def ensure_shapes(
    root: str | Path = "data/shapes",
    train: int = DEFAULT_PARAMETERS["train"],
    val: int = DEFAULT_PARAMETERS["val"],
    size: int = DEFAULT_PARAMETERS["size"],
    seed: int = DEFAULT_PARAMETERS["seed"],
    workers: int | None = None,
    verbose: bool = True,
) -> Path:
    """The root of the shapes set, generated only if absent or made with other parameters.

    Args:
        root: folder of the set; a relative path is resolved by :func:`resolve_root`.
        train, val, size, seed, workers: as in :func:`generate_shapes`.
        verbose: print a line when the set is (re)generated.

    Returns:
        the absolute root folder, ready for ``detutils.data.coco.find_split``.

    Raises:
        FileExistsError: ``root`` holds files that are not a shapes set.
    """
    root = resolve_root(root)
    wanted = {"train": train, "val": val, "size": size, "seed": seed, "version": GENERATOR_VERSION}
    if _stored_parameters(root) == wanted:
        return root
    if root.exists():
        ours = {"images", "annotations"}
        foreign = [p.name for p in root.iterdir() if p.name not in ours]
        if foreign:
            raise FileExistsError(
                f"{root} holds {', '.join(sorted(foreign)[:5])}, which are not part of a "
                "shapes set; give ensure_shapes another root or empty this folder"
            )
        if (root / "images").exists():
            for split in SPLITS:
                if (root / "images" / split).is_dir():
                    shutil.rmtree(root / "images" / split)
    if verbose:
        print(f"writing the shapes set ({train} train, {val} val, {size} px) to {root}")
    return generate_shapes(root, train=train, val=val, size=size, seed=seed, workers=workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detutils.data.shapes",
        description="Write the synthetic shapes detection set in COCO format.",
    )
    parser.add_argument("--out", type=Path, default=Path("data/shapes"), help="root folder")
    parser.add_argument("--train", type=int, default=DEFAULT_PARAMETERS["train"])
    parser.add_argument("--val", type=int, default=DEFAULT_PARAMETERS["val"])
    parser.add_argument("--size", type=int, default=DEFAULT_PARAMETERS["size"])
    parser.add_argument("--seed", type=int, default=DEFAULT_PARAMETERS["seed"])
    parser.add_argument("--workers", type=int, default=None, help="default: min(cpus, 8)")
    args = parser.parse_args(argv)
    try:
        out = generate_shapes(args.out, args.train, args.val, args.size, args.seed, args.workers)
    except ValueError as error:
        parser.error(str(error))
    for split in SPLITS:
        print(out / "annotations" / f"instances_{split}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
