"""Checkpoints: everything a killed run needs to continue as if it had never stopped.

A checkpoint is one ``torch.save`` file holding plain containers of tensors, numbers
and strings, so it loads with ``torch.load(..., weights_only=True)`` (which runs no
pickled code):

    format        CHECKPOINT_FORMAT, to recognise the file
    model_name    ``model.name``, checked against the model asked for
    num_classes   classes of the detection head
    class_names   names of the classes, for drawing predictions
    schedule      ``TrainSchedule.to_dict()``
    epoch         epochs completed; a resumed run starts at this epoch
    iteration     optimizer steps taken
    model         ``state_dict`` of the (unwrapped) model
    optimizer, lr_scheduler, scaler      their ``state_dict``
    ema           ``ModelEMA.state_dict()`` or None
    rng           states of Python's, NumPy's and torch's (CPU and CUDA) generators
    metrics       the last evaluation (name -> float), may be empty

It is written atomically: to a temporary file in the same folder, flushed to disk,
then renamed over the old one with ``os.replace``. A run killed while writing leaves
the previous checkpoint whole.
"""

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "inference_state_dict",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "detutils-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a checkpoint of ours, or a checkpoint of another model."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Args:
        state: the checkpoint dict (see the module docstring); ``format`` is added.
        path: destination file; its folder is created if needed.

    Returns:
        the path written.

    Reference:
        the write-then-rename pattern of POSIX ``rename(2)``, as in torch's own
        ``torch.hub`` downloads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model_name: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check what it holds.

    Args:
        path: the checkpoint file.
        model_name: if given, the checkpoint must hold this model.
        map_location: where tensors are loaded (the default keeps GPU files loadable
            on a CPU-only machine).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a detutils checkpoint, or holds another model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated file, a pickle of arbitrary objects, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a detutils checkpoint")
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(
            f"checkpoint {path} holds model {state['model_name']!r}, not {model_name!r}"
        )
    return state


def inference_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA when the run kept one, else the model."""
    if state.get("ema") is not None:
        return state["ema"]["model"]
    return state["model"]


def capture_rng_state() -> dict[str, Any]:
    """States of Python's, NumPy's and torch's generators, as plain loadable values.

    NumPy's key array becomes an int64 tensor and Python's state tuple a list of
    ints, both allowed by ``weights_only=True``.
    """
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002 -- the global one, saved
    version, python_state, gauss = random.getstate()
    state = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generator states saved by ``capture_rng_state``."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 -- the global generator that code draws from
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])
