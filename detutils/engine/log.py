"""Training logs: CSV files, a progress bar, and a plot for notebooks.

A run folder holds two CSV files, written by rank 0 only:

    train_log.csv   one row per iteration: epoch, iteration, lr, then every loss
                    component the detector returns (``loss`` first, the rest sorted)
    eval_log.csv    one row per evaluation: epoch, iteration, AP, AP50, AP75, APs, APm, APl
"""

import csv
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "CsvLog",
    "ProgressLines",
    "bar_shows",
    "plot_training_log",
    "progress_bar",
    "read_training_log",
]

TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"


class CsvLog:
    """Appends rows to a CSV file; the columns are the keys of the first row written.

    Args:
        path: the CSV file.
        enabled: False makes every call a no-op (ranks other than 0).
        keep_before_epoch: keep the rows of earlier epochs from an existing file and
            drop the rest (a resumed run rewrites the epochs it repeats); None starts
            a new file.
    """

    def __init__(
        self, path: str | os.PathLike, enabled: bool = True, keep_before_epoch: int | None = None
    ) -> None:
        self.path, self.enabled = Path(path), enabled
        self.columns: list[str] | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if keep_before_epoch is not None and self.path.is_file():
            with self.path.open(newline="") as file:
                reader = csv.DictReader(file)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(row["epoch"]) < keep_before_epoch]
        with self.path.open("w", newline="") as file:
            if self.columns:
                writer = csv.DictWriter(file, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; floats are written with 6 significant digits."""
        if not self.enabled:
            return
        values = {
            key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()
        }
        with self.path.open("a", newline="") as file:
            if self.columns is None:
                self.columns = list(values)
                csv.DictWriter(file, fieldnames=self.columns).writeheader()
            missing = sorted(set(self.columns) - set(values))
            extra = sorted(set(values) - set(self.columns))
            if missing or extra:
                raise ValueError(f"{self.path.name}: row lacks {missing} / adds {extra}")
            csv.DictWriter(file, fieldnames=self.columns).writerow(values)


def bar_shows() -> bool:
    """Whether a progress bar can show: an interactive terminal, and not in CI."""
    return not os.environ.get("CI") and sys.stderr.isatty()


def progress_bar(iterable: Iterable, total: int, description: str, enabled: bool = True):
    """A tqdm bar on an interactive terminal; nothing in CI, in pipes or when disabled."""
    from tqdm import tqdm

    quiet = not enabled or not bar_shows()
    return tqdm(iterable, total=total, desc=description, disable=quiet, leave=False)


class ProgressLines:
    """Where no bar shows (CI, a pipe, a log file): one line every ``every_seconds``.

    Each line gives the iteration, the loss components and the minutes left (from the
    pace so far, or the time budget if that ends first), so a ten-minute run is not ten
    silent minutes::

        iteration 120/500  loss 3.214 (box 1.02, cls 1.55, dfl 0.644)  4.1 min left

    Args:
        total: iterations of the whole run.
        enabled: print at all (the trainer enables it on rank 0 when ``progress`` is
            asked for and ``bar_shows()`` is False).
        every_seconds: the least time between two lines.
        deadline: ``time.monotonic()`` value at which the time budget ends, or None.
        stream: where to print (default ``sys.stdout``).
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        total: int,
        enabled: bool,
        every_seconds: float = 60.0,
        deadline: float | None = None,
        stream=None,
        clock=time.monotonic,
    ) -> None:
        self.total, self.enabled, self.every = total, enabled, every_seconds
        self.deadline, self.stream, self.clock = deadline, stream, clock
        self.start = self.last = clock()
        self.first_iteration: int | None = None

    def update(self, iteration: int, losses: dict[str, float]) -> str | None:
        """Called after each step; prints (and returns) a line when one is due."""
        if not self.enabled:
            return None
        now = self.clock()
        if self.first_iteration is None:  # pace from the first step on (start-up excluded)
            self.first_iteration, self.start, self.last = iteration, now, now
            return None
        if now - self.last < self.every and iteration < self.total:
            return None
        self.last = now
        done = iteration - self.first_iteration
        left = (now - self.start) / max(done, 1) * (self.total - iteration)
        if self.deadline is not None:
            left = min(left, max(self.deadline - now, 0.0))
        parts = [f"{name} {value:.4g}" for name, value in losses.items() if name != "loss"]
        line = f"iteration {iteration}/{self.total}  loss {losses.get('loss', float('nan')):.4g}"
        line += f" ({', '.join(parts)})" if parts else ""
        line += f"  {left / 60:.1f} min left"
        print(line, file=self.stream or sys.stdout, flush=True)
        return line


def read_training_log(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two logs of a run folder as DataFrames (the eval one may be empty)."""
    run_dir = Path(run_dir)
    train_path, eval_path = run_dir / TRAIN_LOG, run_dir / EVAL_LOG
    if not train_path.is_file():
        raise FileNotFoundError(f"no {TRAIN_LOG} in {run_dir}")
    train = pd.read_csv(train_path)
    has_eval = eval_path.is_file() and eval_path.stat().st_size > 0
    return train, pd.read_csv(eval_path) if has_eval else pd.DataFrame()


def plot_training_log(run_dir: str | os.PathLike, smooth: int = 1):
    """Loss components and learning rate per iteration, and AP per evaluation.

    Args:
        run_dir: a run folder with ``train_log.csv`` (and maybe ``eval_log.csv``).
        smooth: running-mean window (iterations) of the loss curves
            (``detutils.viz.plot_losses``); 1 draws the raw values.

    Returns:
        the matplotlib Figure (two panels, or three when there are evaluations).
    """
    import matplotlib.pyplot as plt

    from detutils.viz import plot_losses

    train, evaluation = read_training_log(run_dir)
    panels = 3 if len(evaluation) else 2
    figure, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2))
    components = [name for name in train.columns if name not in ("epoch", "iteration", "lr")]
    plot_losses(train, x="iteration", columns=components, ax=axes[0], smooth=smooth)
    axes[1].plot(train["iteration"], train["lr"])
    axes[1].set(xlabel="iteration", ylabel="learning rate", title="schedule")
    if panels == 3:
        for name in ("AP", "AP50"):
            axes[2].plot(evaluation["epoch"], evaluation[name], marker="o", label=name)
        axes[2].set(xlabel="epoch", ylabel="COCO metric", title="validation")
        axes[2].legend(fontsize=8)
    figure.tight_layout()
    return figure
