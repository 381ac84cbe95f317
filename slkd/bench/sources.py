"""Where each method's config comes from: the host's own for KD, DKD and CRD, slkd's for MLKD
and SLD; and the teacher -> student pairs the benchmark knows.

The pairs are those of ``mdistiller_configs/cifar100/sld/`` (the released SLD code's 12).
mdistiller ships KD and CRD configs for resnet32x4 -> resnet8x4 only and a DKD config for
11 of the pairs (``configs/cifar100/dkd/<pair>.yaml``); :mod:`slkd.bench.configs` adapts
the KD and CRD ones to the other pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from slkd.errors import BenchError, ConfigError
from slkd.host.checkout import CheckoutNotFound, find_checkout
from slkd.shipped import configs_folder

METHODS = ("KD", "DKD", "CRD", "MLKD", "SLD")



@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair, named as slkd's config files are."""

    name: str
    teacher: str
    student: str


def slkd_configs() -> Path:
    """slkd's shipped ``mdistiller_configs/cifar100`` folder (a checkout's, or the installed
    package's: :func:`slkd.shipped.configs_folder`)."""
    try:
        return configs_folder() / "cifar100"
    except ConfigError as error:
        raise BenchError(str(error)) from None


def known_pairs() -> dict[str, Pair]:
    """Pair name -> :class:`Pair`, read from slkd's SLD configs."""
    pairs = {}
    for path in sorted((slkd_configs() / "sld").glob("*.yaml")):
        distiller = yaml.safe_load(path.read_text())["DISTILLER"]
        pairs[path.stem] = Pair(path.stem, distiller["TEACHER"], distiller["STUDENT"])
    return pairs


def host_root(explicit: str | os.PathLike | None = None) -> Path:
    """The mdistiller checkout whose ``configs/cifar100`` the host methods use.

    Found as every slkd command finds it (:func:`slkd.host.checkout.find_checkout`):
    ``explicit`` (``--mdistiller-root``), ``$SLKD_MDISTILLER_PATH``, ``./mdistiller``, the
    installed mdistiller.
    """
    try:
        checkout = find_checkout(explicit)
    except CheckoutNotFound as exc:
        raise BenchError(str(exc)) from None
    root, origin = checkout.root, checkout.origin
    if not (root / "configs" / "cifar100" / "kd.yaml").is_file():
        raise BenchError(
            f"{root} (from {origin}) has no configs/cifar100/kd.yaml: KD, DKD and CRD run with "
            "the host's own configs, so point --mdistiller-root at an mdistiller checkout"
        )
    return root


def source_config(method: str, pair: Pair, host: Path, folder: str | None = None) -> Path:
    """The config file a run of ``method`` on ``pair`` starts from; ``folder`` (a variant's
    ``config``): slkd's per-pair configs in ``mdistiller_configs/cifar100/<folder>/`` instead."""
    if folder:
        path = slkd_configs() / folder / f"{pair.name}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise BenchError(f"no {folder} config for {pair.name} (its settings are per pair); pairs with one: {', '.join(shipped) or 'none'}")
        return path
    if method in ("MLKD", "SLD"):
        return slkd_configs() / method.lower() / f"{pair.name}.yaml"
    if method == "DKD":
        path = host / "configs" / "cifar100" / "dkd" / f"{pair.name}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise BenchError(
                f"mdistiller ships no DKD config for {pair.name} (DKD.BETA is tuned per pair); "
                f"pairs with one: {', '.join(shipped)}"
            )
        return path
    return host / "configs" / "cifar100" / f"{method.lower()}.yaml"


def parse_pairs(text: str) -> list[Pair]:
    """``"a,b"`` -> the known pairs, or :class:`BenchError` naming the known ones."""
    known = known_pairs()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise BenchError(f"unknown pair {', '.join(unknown) or repr(text)}; known pairs: {', '.join(known)}")
    return [known[name] for name in dict.fromkeys(names)]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise BenchError(f"--seeds takes integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise BenchError(f"--seeds takes non-negative integers separated by commas, e.g. 0,1,2; got {text!r}")
    return list(dict.fromkeys(seeds))
