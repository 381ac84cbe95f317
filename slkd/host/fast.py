"""``--fast`` (``SLKD.FAST``): the opt-in modes that pay on a GPU, as one switch.

``SLKD.FAST True`` stands for these settings (:data:`FAST_SETTINGS`):

    SLKD.CUDA_GRAPHS    True     the step recorded once and replayed as one CUDA graph
    SLKD.FUSED_LOSS     True     SLD's loss in two Triton kernels
    SLKD.AMP            "bf16"   bf16 autocast
    SLKD.CHANNELS_LAST  True     channels-last networks and images
    SLKD.DEVICE_VIEWS   True     CIFAR-100's two views made in batches on the GPU

How it combines (:func:`expand`): a key the run sets itself, in its config file, as a
``KEY VALUE`` override or by its own flag, keeps that value, so ``--fast --amp fp16`` trains
in fp16 with CUDA graphs and ``--fast SLKD.CUDA_GRAPHS False`` does everything else. A setting
that does not apply to the run stays off and is named with the reason: the fused loss for
methods other than SLD (they ignore it) or without Triton, the device views for one-view
methods and datasets other than CIFAR-100, CUDA graphs under torchrun. Every part is for a
GPU, so a run on a CPU is refused (:func:`check`). Eager fp32 stays the default: it is what
the published numbers used.
"""

from __future__ import annotations

from slkd.errors import ConfigError
from slkd.host.protocol import resolve_views

FAST_SETTINGS = {
    "SLKD.CUDA_GRAPHS": True,
    "SLKD.FUSED_LOSS": True,
    "SLKD.AMP": "bf16",
    "SLKD.CHANNELS_LAST": True,
    "SLKD.DEVICE_VIEWS": True,
}

#: What each setting is called in the lines printed at start.
LABELS = {
    "SLKD.CUDA_GRAPHS": "CUDA graphs",
    "SLKD.FUSED_LOSS": "the fused loss",
    "SLKD.AMP": "bf16 autocast",
    "SLKD.CHANNELS_LAST": "channels-last",
    "SLKD.DEVICE_VIEWS": "the device-side views",
}

#: The step it gives, as measured (benchmarks/results/README.md, run 5: resnet32x4 ->
#: resnet8x4, batch 64, device-resident data; the device views were not part of it).
MEASURED = "17.5 -> 3.9 ms per SLD step on an H200 (benchmarks/results, run 5)"


def not_applicable(cfg, key: str, torchrun: bool) -> str | None:
    """Why ``key`` of :data:`FAST_SETTINGS` does not apply to the run ``cfg`` describes
    (None when it does)."""
    method = cfg.DISTILLER.TYPE
    if key == "SLKD.FUSED_LOSS":
        if method != "SLD":
            return f"{method} has no fused loss"
        from slkd.losses.sld_fused import fused_available

        return fused_available()
    if key == "SLKD.DEVICE_VIEWS":
        if cfg.DATASET.TYPE != "cifar100":
            return f"made for CIFAR-100, this run trains on {cfg.DATASET.TYPE}"
        if not takes_two_views(cfg):
            return f"{method} trains on one view"
    if key == "SLKD.CUDA_GRAPHS" and torchrun:
        return "not under torchrun yet"
    return None


def takes_two_views(cfg) -> bool:
    """Whether the method trains on a weak and a strong view (``PROTOCOL.VIEWS`` for KD, DKD,
    MLKD, SLD). Other two-view distillers (the MLKD fork's ``KD_ours``) are left to the PIL views."""
    return resolve_views(cfg) == 2


def expand(cfg, explicit, torchrun: bool = False) -> list[str]:
    """With ``SLKD.FAST`` on, set each key of :data:`FAST_SETTINGS` that applies to the run
    and is not in ``explicit`` (the keys the run sets itself); ``cfg`` must not be frozen.
    Returns one phrase per key left as it was, saying why (empty when ``SLKD.FAST`` is off)."""
    if not cfg.SLKD.FAST:
        return []
    kept = []
    for key, value in FAST_SETTINGS.items():
        name = key.split(".", 1)[1]
        if key in explicit:
            kept.append(f"{LABELS[key]}: {key} {cfg.SLKD[name]} as set")
            continue
        reason = not_applicable(cfg, key, torchrun)
        if reason:
            kept.append(f"{LABELS[key]}: off, {reason}")
        else:
            cfg.SLKD[name] = value
    return kept


def is_on(cfg, key: str) -> bool:
    """Whether the run has the fast setting ``key`` (bf16 or fp16 both count for ``SLKD.AMP``)."""
    value = cfg.SLKD[key.split(".", 1)[1]]
    return value != "none" if key == "SLKD.AMP" else bool(value)


def summary(cfg, kept) -> str:
    """The line slkd-train prints at start of a ``--fast`` run: what is on, what is not."""
    on = [LABELS[key] if key != "SLKD.AMP" else f"{cfg.SLKD.AMP} autocast" for key in FAST_SETTINGS if is_on(cfg, key)]
    text = f"[slkd] --fast: {', '.join(on) or 'nothing'}"
    return text + (f" ({'; '.join(kept)})" if kept else "")


def check(cfg, device_type: str) -> None:
    """ConfigError when ``SLKD.FAST`` is on and the run is not on a GPU, or none of its
    settings is on (a config that sets ``SLKD.FAST`` but was not expanded by slkd-train,
    e.g. under mdistiller's ``tools/train.py``)."""
    if not cfg.SLKD.FAST:
        return
    if device_type != "cuda":
        raise ConfigError(
            f"--fast (SLKD.FAST) turns on CUDA graphs, the fused loss and bf16 for a GPU, and this run is on "
            f"{device_type}: drop --fast (or set SLKD.FAST False)"
        )
    if not any(is_on(cfg, key) for key in FAST_SETTINGS):
        raise ConfigError(
            "SLKD.FAST is True but none of its settings is on: slkd-train and slkd-bench expand it; elsewhere set "
            f"{', '.join(FAST_SETTINGS)} themselves (or set SLKD.FAST False)"
        )


def hint(cfg, device_type: str) -> str | None:
    """The one line slkd-train prints at the start of a GPU run without ``--fast``."""
    if device_type != "cuda" or cfg.SLKD.FAST:
        return None
    return (
        "[slkd] eager steps (the default, as the published numbers); --fast would turn on "
        f"{', '.join(LABELS.values())}: {MEASURED}"
    )
