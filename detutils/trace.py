"""Record the shape of every intermediate of a forward pass or a loss.

``trace`` runs a module (or any callable) once and returns a table with one row per
tensor that went in, came out of a sub-module, or was named explicitly with
``record``, in the order the tensors were produced::

    table, outputs = trace(model, images)            # every sub-module
    table, outputs = trace(model, images, max_depth=1)  # top-level children only
    table, losses = trace(model.loss, outputs, targets)  # a loss and its intermediates

The table (a pandas DataFrame) has the columns

    name    qualified module name as in ``model.named_modules()``; ``(input)`` and
            ``(output)`` for what went into and came out of the traced call; the
            given name for a ``record`` row
    item    where the tensor sits in a nested output: ``""`` for a plain tensor,
            ``[0]`` for a tuple or list element, ``["cls"]`` for a dict value,
            ``.labels`` for a named-tuple or dataclass field, chained when nested
            (``[1]["boxes"]``)
    type    module class name (``Conv2d``), the callable's name for ``(output)``,
            ``input`` for input rows, ``record`` for recorded intermediates
    call    how many times this name was seen before (0 on the first call): a module
            run twice in one forward appears twice, with calls 0 and 1
    shape   tensor shape as a tuple of ints
    dtype   ``float32``, ``int64``, ...
    params  parameters of the module, its children included (0 for rows that are
            not module outputs)

Only tensors become rows; other values in an output (``None``, numbers, strings)
are skipped. Devices are left out on purpose, so a table printed on a GPU machine
equals the one printed on a laptop.

Losses are plain functions, with no sub-modules to hook. They name their
intermediates themselves with ``record``, which returns its argument unchanged and
costs nothing outside a trace::

    def some_detector_loss(pred_logits, pred_boxes, targets):
        assigned = record("assigned", assign_something(...))   # AssignResult fields
        target_scores = record("target_scores", ...)            # (B, A, C)
        ...

Running such a loss under ``trace`` (or inside ``with trace_calls() as recording:``,
then ``recording.table()``) lists each recorded tensor in order, which is how the
course's loss notebooks show the shape of every step of a detector's loss.

Reference: ``torch.nn.Module.register_forward_hook``; the table is in the spirit of
``torchinfo.summary`` (one row per module call, output shape and parameter count).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pandas is imported when a table is made: losses call `record`
    import pandas as pd

__all__ = ["COLUMNS", "Recording", "record", "trace", "trace_calls"]

COLUMNS = ["name", "item", "type", "call", "shape", "dtype", "params"]

# The recording that ``record`` writes to; None outside ``trace_calls``.
_ACTIVE: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "detutils_trace_recording", default=None
)


def _flatten_tensors(value: Any, item: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(item suffix, tensor)`` for every tensor nested in ``value``, in order."""
    if isinstance(value, torch.Tensor):
        yield item, value
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        for field in value._fields:
            yield from _flatten_tensors(getattr(value, field), f"{item}.{field}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _flatten_tensors(getattr(value, field.name), f"{item}.{field.name}")
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            yield from _flatten_tensors(element, f"{item}[{index}]")
    elif isinstance(value, dict):
        for key, element in value.items():
            key_text = f'"{key}"' if isinstance(key, str) else repr(key)
            yield from _flatten_tensors(element, f"{item}[{key_text}]")


def _count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


class Recording:
    """The rows collected by one ``trace_calls`` block (see the module docstring).

    Attributes:
        rows: one dict per tensor, keys ``COLUMNS``, in the order they were added.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._calls: dict[str, int] = {}

    def add(self, name: str, type_name: str, value: Any, params: int = 0) -> None:
        """Append one row per tensor in ``value`` under ``name``; bump its call counter."""
        self.add_items(name, type_name, _flatten_tensors(value), params)

    def add_items(
        self,
        name: str,
        type_name: str,
        items: Iterable[tuple[str, torch.Tensor]],
        params: int = 0,
    ) -> None:
        """Append one row per ``(item suffix, tensor)`` pair under ``name``."""
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        for item, tensor in items:
            self.rows.append(
                {
                    "name": name,
                    "item": item,
                    "type": type_name,
                    "call": call,
                    "shape": tuple(tensor.shape),
                    "dtype": str(tensor.dtype).removeprefix("torch."),
                    "params": params,
                }
            )

    def table(self) -> pd.DataFrame:
        """The rows so far as a DataFrame with the columns ``COLUMNS``."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=COLUMNS)


def record(name: str, value: Any) -> Any:
    """Name an intermediate value so that a running trace lists its tensors.

    Outside ``trace_calls`` (and ``trace``) this does nothing, so library code may
    call it freely.

    Args:
        name: the row name, e.g. ``"target_scores"``.
        value: a tensor, or tuples, lists, dicts, named tuples or dataclasses of them.

    Returns:
        ``value`` itself, so that a line reads ``iou = record("iou", box_iou(a, b))``.
    """
    recording = _ACTIVE.get()
    if recording is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"record: name must be a non-empty string, got {name!r}")
        recording.add(name, "record", value)
    return value


@contextlib.contextmanager
def trace_calls() -> Iterator[Recording]:
    """Collect every ``record`` call made inside the block.

    Example::

        with trace_calls() as recording:
            loss = my_loss(pred, target)
        recording.table()   # one row per recorded tensor, in call order

    Blocks nest: a ``record`` call goes to the innermost block only.

    Yields:
        The ``Recording`` that the block fills.
    """
    recording = Recording()
    token = _ACTIVE.set(recording)
    try:
        yield recording
    finally:
        _ACTIVE.reset(token)


def _module_depth(name: str) -> int:
    """Depth of a sub-module from its qualified name: ``"head"`` 1, ``"head.cls.0"`` 3."""
    return name.count(".") + 1


def _callable_name(fn: Callable[..., Any]) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__qualname__", type(fn).__name__)


def trace(
    fn: Callable[..., Any],
    *args: Any,
    kwargs: dict[str, Any] | None = None,
    module: nn.Module | None = None,
    max_depth: int | None = None,
    leaves_only: bool = False,
    include_input: bool = True,
    no_grad: bool = True,
) -> tuple[pd.DataFrame, Any]:
    """Call ``fn(*args, **kwargs)`` once and tabulate the shape of every intermediate.

    Rows come in the order the tensors were produced: the inputs first, then each
    sub-module's output when that sub-module returns (so a parent follows its
    children), ``record`` rows where the code calls ``record``, and the returned
    value last. See the module docstring for the columns.

    Args:
        fn: an ``nn.Module`` or any callable taking tensors (a loss function, a bound
            method such as ``model.loss``).
        *args: positional arguments of ``fn``.
        kwargs: keyword arguments of ``fn``.
        module: the module whose sub-modules get a row each time they run. Default:
            ``fn`` itself when it is a module, the owner of a bound method of a module
            (``model.loss`` -> ``model``), else none (only inputs, ``record`` rows and
            the output).
        max_depth: keep sub-modules down to this depth (1: direct children of
            ``module``, 2: their children, ...); None keeps every depth.
        leaves_only: keep only sub-modules without children. Neither filter drops
            ``record`` rows, inputs or the output.
        include_input: add ``(input)`` rows for the tensors among the arguments
            (item ``[i]`` for the i-th positional argument, ``["key"]`` for a keyword).
        no_grad: run under ``torch.no_grad()`` (default); set False to keep the graph,
            e.g. to call ``backward`` on the returned loss.

    Returns:
        ``(table, output)``: the DataFrame and whatever ``fn`` returned. The module's
        train/eval mode is left as it was.

    Raises:
        TypeError: ``fn`` is not callable, or ``module`` is not an ``nn.Module``.
        ValueError: ``max_depth`` is below 1.

    Hooks are removed when the call returns and also when it raises.
    """
    if not callable(fn):
        raise TypeError(f"trace: fn must be callable, got {type(fn).__name__}")
    if max_depth is not None and max_depth < 1:
        raise ValueError(f"trace: max_depth must be >= 1 or None, got {max_depth}")
    kwargs = {} if kwargs is None else kwargs
    if module is None:
        if isinstance(fn, nn.Module):
            module = fn
        elif isinstance(getattr(fn, "__self__", None), nn.Module):
            module = fn.__self__
    elif not isinstance(module, nn.Module):
        raise TypeError(f"trace: module must be an nn.Module, got {type(module).__name__}")

    handles = []
    with trace_calls() as recording:
        if include_input:
            # (args) is a plain tuple and (kwargs) a dict: items read "[0]", '["key"]'.
            items = itertools.chain(_flatten_tensors(args), _flatten_tensors(kwargs))
            recording.add_items("(input)", "input", items)

        def make_hook(name: str, submodule: nn.Module) -> Callable[..., None]:
            params = _count_parameters(submodule)

            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                recording.add(name, type(submodule).__name__, output, params)

            return hook

        try:
            if module is not None:
                for name, submodule in module.named_modules():
                    if not name:  # the root: its output is the "(output)" row
                        continue
                    if max_depth is not None and _module_depth(name) > max_depth:
                        continue
                    if leaves_only and next(submodule.children(), None) is not None:
                        continue
                    handles.append(submodule.register_forward_hook(make_hook(name, submodule)))
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                output = fn(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        params = _count_parameters(module) if module is not None else 0
        recording.add("(output)", _callable_name(fn), output, params)
    return recording.table(), output
