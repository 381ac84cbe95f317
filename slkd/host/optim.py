"""The trainer's optimizer: mdistiller's SGD, fused on GPUs, momentum buffers made up front.

mdistiller trains with ``torch.optim.SGD(lr=SOLVER.LR, momentum=SOLVER.MOMENTUM,
weight_decay=SOLVER.WEIGHT_DECAY)``: no dampening, no Nesterov. With momentum ``mu``,
weight decay ``wd`` and gradient ``g`` of parameter ``p``, each step is::

    d = g + wd p        buf = mu buf + d   (buf = d at the first step)        p = p - lr buf

The momentum buffers start as zeros here instead of being made at the first step. Without
dampening ``mu * 0 + d`` is exactly ``d`` (up to the sign of a zero), so the updates are
torch's to the bit. The reason is torch's fused SGD (one kernel for all parameters, what the
trainer uses on a GPU): at its first step it makes the buffers with ``empty_like`` and leaves
filling them to the kernel, and the kernel does nothing when fp16's gradient scaler has found
an inf or NaN gradient, as in the first steps of many fp16 runs. The buffers then keep
whatever the memory held, and the next step adds it to the weights. With buffers made up
front, a skipped step leaves zeros, and every step, a recorded CUDA graph's included, runs
the same kernels.
"""

from __future__ import annotations

from typing import Iterable

import torch
from yacs.config import CfgNode

from slkd.host.config import ConfigError


def sgd(parameters: Iterable[torch.Tensor], solver: CfgNode, fused: bool) -> torch.optim.SGD:
    """mdistiller's SGD over ``parameters`` with its momentum buffers set to zeros.

    Args:
        parameters: the tensors to train.
        solver: the config's ``SOLVER`` node (``TYPE`` must be ``SGD``; ``LR``, ``MOMENTUM``,
            ``WEIGHT_DECAY``).
        fused: torch's fused implementation (one kernel per step; CUDA). Under fp16 it also
            lets the gradient scaler hand over its inf flag as a tensor, without reading it.
    """
    if solver.TYPE != "SGD":
        raise ConfigError(f"SOLVER.TYPE {solver.TYPE!r} is not supported: slkd's trainer uses SGD, as mdistiller does")
    optimizer = torch.optim.SGD(
        list(parameters),
        lr=solver.LR,
        momentum=solver.MOMENTUM,
        weight_decay=solver.WEIGHT_DECAY,
        fused=fused or None,
    )
    fill_momentum_buffers(optimizer)
    return optimizer


def fill_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """Give every parameter of a group with momentum a buffer, zeros where it has none (at the
    start, and after loading a state saved before a parameter ever had a gradient)."""
    for group in optimizer.param_groups:
        if group["momentum"] != 0:
            for parameter in group["params"]:
                state = optimizer.state[parameter]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(parameter)


#: Param-group entries that say how torch runs the update, not what it computes: they belong
#: to the machine a run is on, not to its checkpoint.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "differentiable")


def load_state(optimizer: torch.optim.SGD, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping ``optimizer``'s implementation flags.

    torch's ``load_state_dict`` replaces every param-group entry with the saved one, ``fused``
    included, so a checkpoint made on a CPU (unfused) and resumed on a GPU would train with the
    unfused SGD, where fp16's gradient scaler hands the optimizer a scale it cannot take. The
    momentum buffers a saved state lacks are filled with zeros (:func:`fill_momentum_buffers`).
    """
    kept = [{flag: group[flag] for flag in IMPLEMENTATION_FLAGS if flag in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept):
        group.update(flags)
    fill_momentum_buffers(optimizer)
