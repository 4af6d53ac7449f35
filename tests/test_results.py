"""The benchmark records notebook 91 reads: how they are written, and those in the repository."""

import json
import sys
from pathlib import Path

import pytest

from detutils.data.shapes import CLASS_NAMES
from detutils.models import build_detector

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "sample_efficiency"
sys.path.insert(0, str(ROOT / "benchmarks"))

from sample_efficiency import write_record  # noqa: E402

KEYS = {"detector", "parameters", "img_size", "batch_size", "steps", "threads", "dtype",
        "s_per_step", "wall_minutes", "load_average", "cpu", "cpu_count", "torch", "date",
        "metrics"}  # fmt: skip
NEWER = {"cpu_capability", "load_during_training", "cpu_per_wall"}  # not in the first records
METRICS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_write_record_round_trips(tmp_path):
    result = {
        "metrics": {100: {"AP": 0.1, "AP50": 0.2, "AP75": 0.05, "APs": 0.0, "APm": 0.1,
                          "APl": 0.2},
                    200: {"AP": 0.15, "AP50": 0.3, "AP75": 0.1, "APs": 0.01, "APm": 0.2,
                          "APl": 0.3}},
        "s_per_step": 0.8123456, "wall_minutes": 9.876, "img_size": 320, "batch_size": 16,
        "parameters": 1234,
    }  # fmt: skip
    path = write_record(tmp_path / "records", "yolov8n", result, 2, [1.234, 2.0])
    assert path == tmp_path / "records" / "yolov8n.json"
    record = json.loads(path.read_text())
    assert set(record) == KEYS | NEWER
    assert record["load_during_training"] == [] and record["cpu_per_wall"] != record["cpu_per_wall"]
    assert record["steps"] == 200 and record["s_per_step"] == 0.8123
    assert record["load_average"] == [1.23, 2.0]
    assert list(record["metrics"]) == ["100", "200"]  # keys as text, in step order
    assert record["metrics"]["200"]["AP50"] == 0.3


def _stored():
    return sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []


@pytest.mark.parametrize("path", _stored(), ids=lambda path: path.stem)
def test_stored_records_are_whole_and_match_the_presets(path):
    record = json.loads(path.read_text())
    assert set(record) >= KEYS, f"{path.name} misses fields"
    assert record["detector"] == path.stem
    steps = record["steps"]
    assert str(steps) in record["metrics"], f"{path.name} has no snapshot at step {steps}"
    for step, metrics in record["metrics"].items():
        assert METRICS <= set(metrics), f"{path.name}, step {step}"
        assert all(0.0 <= metrics[key] <= 1.0 for key in METRICS)
    # a record of a preset that has changed since would be stale
    model = build_detector(path.stem, num_classes=len(CLASS_NAMES))
    assert record["parameters"] == sum(p.numel() for p in model.parameters()), (
        f"{path.name}: the preset has changed since the record was made; re-run "
        "benchmarks/sample_efficiency.py for it"
    )
