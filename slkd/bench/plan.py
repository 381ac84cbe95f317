"""Which runs a benchmark is made of, where each one lives, and what each needs now.

A run is one (pair, variant, seed), a variant being a method or a named variant of it
(:mod:`slkd.bench.variants`); its folder is ``<out>/<pair>/<variant>/seed<k>``, or
``<out>/smoke/<pair>/<variant>/seed<k>`` with ``--smoke`` (slkd-train puts smoke runs under
``LOG.PREFIX/smoke``). What a run needs is read from its folder alone:

- ``done``: ``summary.json`` says ``epochs_done == epochs``; the run is skipped;
- ``resume``: not done, and a ``latest`` checkpoint (or its predecessor ``latest.prev``)
  exists, the record of the epochs it finished (without ``summary.json`` too: slkd-train
  refuses to start afresh over checkpoints); slkd-train continues it with ``--resume``;
- ``start``: anything else (no folder, or no checkpoint); slkd-train starts it from epoch 1.

A run's data and device, which are options of slkd-train's command line rather than config
keys, are read from what its trainer recorded in ``summary.json``: :func:`recorded_options`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slkd.bench.sources import Pair, source_config
from slkd.bench.variants import Variant
from slkd.utils.checkpoint import has_resume_checkpoint

DONE, RESUME, START = "done", "resume", "start"


@dataclass(frozen=True)
class Run:
    """One (pair, variant, seed) of the benchmark; ``method`` is the variant's method
    (``variant`` None: the method itself)."""

    pair: Pair
    method: str
    seed: int
    source: Path  # the config file it starts from
    prefix: Path  # LOG.PREFIX given to slkd-train
    folder: Path  # where slkd-train writes it
    variant: Variant | None = None

    @property
    def name(self) -> str:
        """The variant's name (the method's for a plain method)."""
        return self.variant.name if self.variant else self.method

    @property
    def label(self) -> str:
        return f"{self.pair.name} {self.name} seed{self.seed}"


def plan(pairs: list[Pair], variants: list, seeds: list[int], out: Path, host: Path, smoke: bool) -> list[Run]:
    """Every run of ``pairs x variants x seeds``, in that order (``variants``: :class:`Variant`
    objects, or method names)."""
    prefix = Path(out).resolve()
    root = prefix / "smoke" if smoke else prefix
    variants = [variant if isinstance(variant, Variant) else Variant(variant, variant) for variant in variants]
    return [
        Run(pair, variant.method, seed, source_config(variant.method, pair, host, variant.config), prefix, root / pair.name / variant.name / f"seed{seed}", variant)
        for pair in pairs
        for variant in variants
        for seed in seeds
    ]


def read_summary(folder: Path) -> dict | None:
    """The run's ``summary.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(summary: dict | None) -> bool:
    """Whether a run's summary records all of its epochs."""
    return bool(summary) and summary.get("epochs_done") is not None and summary["epochs_done"] >= summary.get("epochs", float("inf"))


def recorded_options(summary: dict | None) -> dict:
    """``{"data": "real" | "smoke" | "synthetic N", "device": "cpu" | "cuda"}`` of a run, as
    its trainer recorded them in ``summary.json`` (``data``, ``smoke``, ``device``); a key the
    summary does not hold (a run recorded before these were) is left out."""
    summary = summary or {}
    options = {}
    if "data" in summary:
        options["data"] = "smoke" if summary.get("smoke") else summary["data"]
    if "device" in summary:
        options["device"] = summary["device"]
    return options


def state(folder: Path) -> str:
    """:data:`DONE`, :data:`RESUME` or :data:`START` for the run in ``folder``."""
    summary = read_summary(folder)
    if is_complete(summary):
        return DONE
    if has_resume_checkpoint(folder):
        return RESUME
    return START
