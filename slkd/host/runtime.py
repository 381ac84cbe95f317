"""How a training process runs, whoever drives it: kernel settings, seeds, the device, precision.

slkd-train calls :func:`configure_backends` and :func:`seed_everything` before it builds the
networks, slkd's trainer calls them again (it also runs under mdistiller's ``tools/train.py``),
and the benchmarks set a run up with them as the trainer does.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from slkd.host.config import ConfigError

#: ``SLKD.AMP`` -> the autocast dtype (``none``: float32, no autocast)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def configure_backends(cfg, device_type: str) -> None:
    """``SLKD.DETERMINISTIC``: deterministic kernels (cuBLAS workspace, cuDNN without
    autotuning); otherwise cuDNN autotunes on CUDA."""
    if cfg.SLKD.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device_type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank), so an epoch replays after a
    resume (epoch 0: the set-up before training, e.g. the networks' initial weights, the same
    in every process). ``rank`` gives each torchrun process its own streams (dropout); the
    data's draws do not come from here but from each item's key (:class:`slkd.host.data.SeededItems`)."""
    mixed = (seed * 1_000_003 + epoch + rank * 2**20) % 2**32
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def autocast(device_type: str, amp: str):
    """``SLKD.AMP``'s autocast on ``device_type`` (a null context for ``none``), without its
    cache of cast weights. A CUDA graph cannot keep that cache, and it changes the arithmetic:
    with it, a weight used on both views is cast once and its two gradients are summed in half
    precision (where fp16 overflows sooner); without it, each use is cast and the gradients are
    summed in float32. Eager steps and recorded ones then compute the same, for two dozen more
    casts per SLD step (forward and backward; 91 instead of 67 counted on a CPU for
    resnet32x4 -> resnet8x4)."""
    dtype = AMP_DTYPES.get(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)


def unwrap_data_parallel(model):
    """``model`` without an ``nn.DataParallel`` around it (mdistiller's ``tools/train.py`` wraps
    the distiller in one): slkd trains on one device per process, several GPUs with torchrun."""
    if isinstance(model, torch.nn.DataParallel):
        if len(model.device_ids or []) > 1:
            print(
                "[slkd] unwrapping nn.DataParallel: slkd's trainer uses one device per process; "
                "for several GPUs launch with torchrun (see the README)",
                flush=True,
            )
        return model.module
    return model


def device_of(module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def check_fused_loss_device(distiller, device: torch.device) -> None:
    """ConfigError unless the distiller's fused SLD loss (``SLKD.FUSED_LOSS``) can run on
    ``device``; distillers without one ignore the option."""
    if not getattr(getattr(distiller, "criterion", None), "fused", False):
        return
    from slkd.losses.sld_fused import runs_on

    if not runs_on(device):
        raise ConfigError(
            f"SLKD.FUSED_LOSS runs on CUDA devices, this run is on {device.type}: set SLKD.FUSED_LOSS "
            "False (or drop --fused-loss)"
        )
