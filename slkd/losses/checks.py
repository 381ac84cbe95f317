"""Input checks shared by the SLD and MLKD losses: the same bad input fails alike in both.

Every check raises :class:`slkd.errors.LossInputError` (a ``ValueError`` and a ``TypeError``)
with one line that names the argument and what to pass instead. The tensor checks read only
shapes, dtypes and devices, so they never wait on a GPU; the label range is read only for
CPU tensors outside ``torch.compile``.

Temperatures are read once, on the host, as Python floats (:func:`temperature_values`): a
number, a sequence of numbers, or a 1-d numpy array or tensor of them, each in
``[MIN_TEMPERATURE, MAX_TEMPERATURE]``, beyond which ``z / T`` or ``T^2`` leaves float32's
range.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from slkd.errors import LossInputError

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "check_logits",
    "check_same_device",
    "check_same_shape",
    "check_target",
    "check_temperature_tensor",
    "check_weight",
    "temperature_values",
]

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1e4
ACCEPTED_TEMPERATURES = "a number, a sequence of numbers, or a 1-d numpy array or tensor of them"


def check_logits(name: str, logits) -> None:
    """``logits`` must be a floating ``(N, C)`` tensor with ``N, C >= 1``."""
    if not isinstance(logits, torch.Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor of logits (batch, classes), got {type(logits).__name__}")
    if logits.dim() != 2:
        raise LossInputError(f"{name} must be 2-d (batch, classes), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise LossInputError(f"{name} must have at least one row and one class, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise LossInputError(f"{name} must be a floating tensor (e.g. logits.float()), got {logits.dtype}")


def check_same_shape(name: str, logits: torch.Tensor, reference_name: str, reference: torch.Tensor) -> None:
    """``logits`` must have ``reference``'s shape: the same rows and the same classes."""
    if logits.shape != reference.shape:
        raise LossInputError(
            f"{name} has shape {tuple(logits.shape)} but {reference_name} has {tuple(reference.shape)}: "
            "the logits must score the same rows and the same classes"
        )


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    """Every tensor of ``others`` must be on ``reference``'s device."""
    for name, tensor in others.items():
        if tensor.device != reference.device:
            raise LossInputError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}: "
                f"move all inputs to one device (e.g. {name}.to({reference_name}.device))"
            )


def check_target(target, logits: torch.Tensor, logits_name: str = "logits") -> None:
    """``target`` must be ``(N,)`` integer labels (any integer dtype) in ``[0, C)`` on the
    logits' device. The range is read only for CPU tensors outside ``torch.compile`` (on a GPU
    it would be a host-device sync)."""
    if not isinstance(target, torch.Tensor):
        raise LossInputError(f"target must be a torch.Tensor of class labels, got {type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise LossInputError(
            f"target must be 1-d with one label per row: {logits_name} {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise LossInputError(f"target must hold integer class labels (e.g. target.long()), got {target.dtype}")
    check_same_device(logits_name, logits, target=target)
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= logits.shape[1]:
            raise LossInputError(
                f"labels must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes, "
                f"got values from {low} to {high}"
            )


def temperature_values(temperatures, name: str = "temperatures") -> tuple[float, ...]:
    """``temperatures`` as a non-empty tuple of Python floats, each checked by
    :func:`check_temperature`. Accepts a number, a sequence of numbers, or a 1-d numpy array
    or tensor (read on the host: a sync for a GPU tensor)."""
    if isinstance(temperatures, Real) and not isinstance(temperatures, bool):
        values = [temperatures]
    elif isinstance(temperatures, torch.Tensor) or _is_array(temperatures):
        if temperatures.ndim > 1:
            raise LossInputError(
                f"{name} must be 1-d, got shape {tuple(temperatures.shape)}: give {ACCEPTED_TEMPERATURES}"
            )
        values = temperatures.reshape(-1).tolist()
    elif isinstance(temperatures, (str, bytes, dict, set)) or not hasattr(temperatures, "__iter__"):
        raise LossInputError(f"{name} must be {ACCEPTED_TEMPERATURES}, got {type(temperatures).__name__} {temperatures!r}")
    else:
        values = list(temperatures)
    if not values:
        raise LossInputError(f"{name} is empty: give at least one, e.g. (1, 2, 3, 4, 5, 6)")
    return tuple(check_temperature(f"{name}[{i}]" if len(values) > 1 else name, value) for i, value in enumerate(values))


def check_temperature(name: str, value) -> float:
    """One temperature as a float: a real number (not a bool) in the bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LossInputError(
            f"{name} is {value!r}: temperatures must be numbers; give {ACCEPTED_TEMPERATURES}"
        )
    value = float(value)
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:  # also refuses NaN
        raise LossInputError(
            f"{name} is {value!r}: temperatures must be positive numbers in [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}] (beyond, z / T or T^2 leaves float32's range)"
        )
    return value


def check_temperature_tensor(temperatures, logits: torch.Tensor, logits_name: str = "student_logits") -> None:
    """A ready temperature tensor (:func:`slkd.losses.sld.sld_terms`): floating, 1-d,
    non-empty, on the logits' device. Its values are not read (that would be a sync)."""
    if not isinstance(temperatures, torch.Tensor) or not temperatures.is_floating_point():
        raise LossInputError(
            f"temperatures must be a floating tensor here, got {getattr(temperatures, 'dtype', type(temperatures).__name__)}: "
            "make it with torch.tensor(values, dtype=torch.float64), or call sld_loss / SLDLoss, which take plain numbers"
        )
    if temperatures.dim() != 1 or temperatures.numel() == 0:
        raise LossInputError(f"temperatures must be a non-empty 1-d tensor, got shape {tuple(temperatures.shape)}")
    check_same_device(logits_name, logits, temperatures=temperatures)


def check_weight(name: str, value) -> float:
    """A loss weight as a float: a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LossInputError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise LossInputError(f"{name} must be finite, got {value!r}")
    return value


def _is_array(value) -> bool:
    """A numpy array (or anything shaped like one), without importing numpy."""
    return hasattr(value, "__array__") and hasattr(value, "ndim") and hasattr(value, "reshape") and hasattr(value, "tolist")
