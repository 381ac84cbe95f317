"""What a run's config says it trains, as opposed to how the run is executed.

A config is compared key by key in its flat form (``{"SOLVER.LR": 0.05, ...}``).
:data:`EXECUTION_KEYS` are the keys (and nodes) that change how a run is executed but not
what it trains: ``--resume`` lets them change, and ``slkd-bench report`` averages seeds that
differ only there.
"""

from __future__ import annotations

import yaml

#: Keys and nodes that say how a run is executed (loader, evaluation, logging, exact opt-in
#: modes, placement), not what it trains.
EXECUTION_KEYS = (
    "LOG", "EXPERIMENT", "DATASET.NUM_WORKERS", "DATASET.TEST.BATCH_SIZE", "SLKD.LOADER",
    "SLKD.EVAL_FREQ", "SLKD.DETERMINISTIC", "SLKD.FUSED_LOSS", "SLKD.CUDA_GRAPHS", "SLKD.CHANNELS_LAST",
    "SLKD.DEVICE_VIEWS",  # the PIL path's draws, and its pixels to the bit (slkd.host.batch_augment)
    "SLKD.FAST",  # a switch for the keys above and SLKD.AMP; the keys themselves are compared
)  # fmt: skip


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"A.B": value}`` for every value of a nested config dict."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_under(key: str, entries) -> bool:
    """Whether ``key`` is one of ``entries`` or lies in a node named there."""
    return any(key == entry or key.startswith(entry + ".") for entry in entries)


def changed_settings(saved: str, current: str, may_change=()) -> list[str]:
    """``"KEY saved (now current)"`` for each key the two YAML dumps of a config both hold
    with different values, leaving out keys under ``may_change``. A key only one dump holds
    is not compared: it was added to (or dropped from) the config schema in between, not
    set by the user."""
    before, after = flatten(yaml.safe_load(saved) or {}), flatten(yaml.safe_load(current) or {})
    return [
        f"{key} {before[key]} (now {after[key]})"
        for key in sorted(before.keys() & after.keys())
        if not is_under(key, may_change) and before[key] != after[key]
    ]
