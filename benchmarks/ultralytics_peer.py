"""The peer of the course's YOLOv8n: ultralytics' own trainer on the same shapes set.

Used by ``benchmarks/sample_efficiency.py``; needs the optional extra
``pip install -e '.[bench]'`` (ultralytics, never needed by ``make run`` or ``make test``).

The recipe is ultralytics' for a short budget: YOLOv8n from scratch (``yolov8n.yaml``),
batch 16 and nominal batch 16 (one optimizer step per batch), AdamW at lr 0.002, half an
epoch of warm-up, its default augmentation (HSV 0.015 / 0.7 / 0.4, translate 0.1, scale
0.5, horizontal flip 0.5), mosaic off from the start (``close_mosaic`` = epochs), its EMA,
float32 (``amp=False``), images cached in memory, one DataLoader worker, no plots and no
validation during training (ultralytics still validates once, after the last epoch).
ultralytics sets one torch thread on a 2-core machine; the thread count is set back to
the benchmark's at the start of training.

Its EMA weights are kept every ``every`` optimizer steps and scored by the course's own
evaluator (:func:`detutils.engine.evaluate`): the same letterbox, the same score
threshold, NMS and ``max_det`` as the course's YOLOv8n, and pycocotools' COCOeval. The
network's output is used as ultralytics' inference returns it (boxes cx, cy, w, h in
input pixels, then the class probabilities). ultralytics' own figure for the last weights
(its validator, after the last epoch) is returned beside them: the two evaluators differ
in details (ultralytics letterboxes validation images in rectangular batches and
interpolates precision its own way), so the two AP50s of one network may differ.
"""

import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from detutils.boxes import cxcywh_to_xyxy
from detutils.postprocess import postprocess_detections

__all__ = ["UltralyticsDetector", "coco_to_yolo", "train_ultralytics"]


def coco_to_yolo(coco_root: Path, out: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """A COCO-format set (the shapes layout) as ultralytics' YOLO-format set.

    Writes ``out/images/<split>/`` (links to the original files), ``out/labels/<split>/``
    (one ``class cx cy w h`` line per box, normalised; class = rank of the category id,
    as ``detutils.data.CocoDetection`` numbers them) and ``out/data.yaml``.

    Returns:
        the path of ``data.yaml``.
    """
    names: dict[int, str] = {}
    for split in splits:
        coco = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        rank = {cat_id: i for i, cat_id in enumerate(sorted(c["id"] for c in coco["categories"]))}
        names = names or {rank[c["id"]]: c["name"] for c in coco["categories"]}
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
        lines: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            width, height = sizes[ann["image_id"]]
            lines[ann["image_id"]].append(
                f"{rank[ann['category_id']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f}"
                f" {w / width:.6f} {h / height:.6f}"
            )
        for image in coco["images"]:
            link = out / "images" / split / image["file_name"]
            if not link.exists():
                link.symlink_to((coco_root / "images" / split / image["file_name"]).resolve())
            label = out / "labels" / split / (Path(image["file_name"]).stem + ".txt")
            label.write_text("".join(line + "\n" for line in lines[image["id"]]))
    yaml = out / "data.yaml"
    yaml.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {i}: {name}\n" for i, name in sorted(names.items()))
    )
    return yaml


class UltralyticsDetector(nn.Module):
    """An ultralytics detection network behind the course's ``forward`` / ``predict``.

    Args:
        network: ultralytics' ``DetectionModel`` (for example its EMA copy).
        num_classes: C.
    """

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.network, self.num_classes = network, num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 4 + C, A): cx, cy, w, h px, then probabilities."""
        outputs = self.network(images)
        return outputs[0] if isinstance(outputs, tuple | list) else outputs

    @torch.no_grad()
    def predict(self, outputs: torch.Tensor, score_thr=0.001, iou_thr=0.7, max_det=300):
        """The post-processing of the course's YOLOv8 (multi-label, class-aware NMS)."""
        outputs = outputs.transpose(1, 2).float()  # (B, A, 4 + C)
        boxes = cxcywh_to_xyxy(outputs[..., :4])  # (B, A, 4) xyxy px
        return postprocess_detections(
            boxes, outputs[..., 4:], score_thr=score_thr, iou_thr=iou_thr, max_det=max_det
        )


def train_ultralytics(
    coco_root: Path,
    out: Path,
    img_size: int,
    steps: int,
    every: int,
    threads: int,
    seed: int = 0,
) -> dict:
    """Train ultralytics' YOLOv8n for ``steps`` optimizer steps of 16 images.

    Returns:
        ``{"snapshots": {step: UltralyticsDetector}, "step_times": [s, ...],
        "train_minutes": float, "own_ap50": float}``; the snapshots are the EMA after
        ``every``, ``2 every``, ... steps; ``own_ap50`` is what ultralytics' validator
        reports for the last of them.
    """
    from ultralytics import YOLO

    data = coco_to_yolo(coco_root, out / "data")
    num_train = len(list((out / "data" / "labels" / "train").glob("*.txt")))
    per_epoch = -(-num_train // 16)
    if steps % per_epoch:
        raise SystemExit(
            f"ultralytics trains whole epochs: --steps must be a multiple of {per_epoch}"
        )
    epochs = steps // per_epoch
    stamps: list[float] = []
    snapshots: dict[int, UltralyticsDetector] = {}

    def on_train_start(trainer) -> None:
        torch.set_num_threads(threads)  # ultralytics chose one thread for a 2-core CPU

    def on_train_batch_end(trainer) -> None:
        stamps.append(time.monotonic())
        updates = trainer.ema.updates
        if updates % every == 0 and updates not in snapshots:
            network = copy.deepcopy(trainer.ema.ema).float().eval()
            snapshots[updates] = UltralyticsDetector(network, len(trainer.data["names"]))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    start = time.monotonic()
    model.train(
        data=str(data), epochs=epochs, imgsz=img_size, batch=16, nbs=16, optimizer="AdamW",
        lr0=0.002, warmup_epochs=0.5, mosaic=0.0, close_mosaic=epochs, amp=False,
        device="cpu", workers=1, plots=False, val=False, cache="ram", seed=seed,
        deterministic=True, project=str(out / "runs"), name="yolov8n", exist_ok=True,
        verbose=False,
    )  # fmt: skip
    return {
        "snapshots": snapshots,
        "step_times": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "train_minutes": (time.monotonic() - start) / 60,
        "own_ap50": float(model.trainer.metrics["metrics/mAP50(B)"]),
    }
