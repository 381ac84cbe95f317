"""Named variants: a method plus config overrides, under a name (``mdistiller_configs/variants.yaml``).

A name given to ``slkd-bench run --methods`` is one of

- a method (``KD``, ``DKD``, ``CRD``, ``MLKD``, ``SLD``): its own config, no override;
- a variant of the YAML file (``DKD+swap``, ``KD+LS``, ``SLD-ts``, ...): its method with
  ``set`` overrides, starting from the method's config or, with ``config: FOLDER``, from
  slkd's per-pair ``mdistiller_configs/cifar100/FOLDER/<pair>.yaml``;
- either of these with ``@1view`` or ``@2views``: ``PROTOCOL.VIEWS`` 1 or 2 added, for the
  logit methods (KD, DKD, MLKD, SLD; MLKD only at two views).

``--ablation NAME`` adds the YAML file's list ``ablations.NAME``; ``--protocol 1,2`` replaces
each logit-method name by its ``@1view`` and ``@2views`` forms. Unknown names fail in one line
that lists the close matches.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from slkd.bench.sources import METHODS
from slkd.host.protocol import OWN_VIEWS
from slkd.errors import BenchError, ConfigError
from slkd.shipped import configs_folder

VARIANT_NAME = "variant.json"  # a run folder's variant: name, method, overrides
FILE_NAME = "variants.yaml"  # in slkd's shipped configs (slkd.shipped.configs_folder)
LOGIT_METHODS = tuple(OWN_VIEWS)  # the methods PROTOCOL.VIEWS applies to
TWO_VIEW_ONLY = ("MLKD",)  # two views by construction (PROTOCOL.VIEWS 1 is refused): no @1view
VIEWS_SUFFIX = re.compile(r"^(?P<base>.+)@(?P<views>[12])views?$")
VIEW_NAMES = {1: "1view", 2: "2views"}


@dataclass(frozen=True)
class Variant:
    """``method`` run with ``overrides`` (``(KEY, value)``) under ``name``, from slkd's per-pair
    configs in ``config`` (a folder of ``mdistiller_configs/cifar100``; None: the method's
    own config); ``about`` says what it tests."""

    name: str
    method: str
    overrides: tuple = ()
    config: str | None = None
    about: str = ""

    def describe(self) -> str:
        """``DKD+swap: DKD with LOGITS.TEACHER_SWAP True`` (the method alone: ``KD``)."""
        changes = ([f"the {self.config}/<pair>.yaml config"] if self.config else []) + [f"{key} {value!r}" for key, value in self.overrides]
        return f"{self.name}: {self.method} with {', '.join(changes)}" if changes else self.name

    def at_views(self, views: int) -> "Variant":
        """This variant with ``PROTOCOL.VIEWS views``, named ``<name>@1view``/``@2views``."""
        if self.method not in LOGIT_METHODS:
            raise BenchError(f"{self.name}@{VIEW_NAMES[views]}: PROTOCOL.VIEWS applies to the logit methods {', '.join(LOGIT_METHODS)}, not {self.method}")
        if self.method in TWO_VIEW_ONLY and views == 1:
            raise BenchError(f"{self.name}@1view: {self.method} is two-view by construction (its losses compare the two views); drop it or use @2views")
        kept = tuple((key, value) for key, value in self.overrides if key != "PROTOCOL.VIEWS")
        return Variant(f"{self.name}@{VIEW_NAMES[views]}", self.method, kept + (("PROTOCOL.VIEWS", views),), self.config, self.about)


def write_variant(path: Path, variant: Variant) -> None:
    """Record ``variant`` in a run folder, for the report's label."""
    record = {"name": variant.name, "method": variant.method, "config": variant.config, "set": dict(variant.overrides), "about": variant.about}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def read_variant(folder: Path) -> dict:
    """A run folder's recorded variant ({} when none was written)."""
    try:
        return json.loads((Path(folder) / VARIANT_NAME).read_text())
    except (OSError, ValueError):
        return {}


def variants_file() -> Path:
    """The shipped ``variants.yaml`` (a checkout's ``mdistiller_configs/``, or the wheel's copy)."""
    try:
        return configs_folder() / FILE_NAME
    except ConfigError as error:
        raise BenchError(str(error)) from None


@functools.lru_cache(maxsize=None)
def catalogue(path: Path | None = None) -> tuple[dict, dict]:
    """``({name: Variant}, {ablation: [names]})`` from the YAML file (default: the shipped one),
    methods included."""
    path = variants_file() if path is None else path
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError:
        raise BenchError(f"the variants file {path} is missing: reinstall slkd (pip install -e . in a checkout)") from None
    variants = {method: Variant(method, method, about="the method's own config") for method in METHODS}
    for name, entry in (data.get("variants") or {}).items():
        method = entry.get("method")
        if method not in METHODS or name in variants or VIEWS_SUFFIX.match(name):
            raise BenchError(f"{path}: variant {name!r} needs a method from {', '.join(METHODS)} and a new name without @")
        overrides = tuple((key, _as_list(value)) for key, value in (entry.get("set") or {}).items())
        variants[name] = Variant(name, method, overrides, entry.get("config"), entry.get("about", ""))
    ablations = {name: list(names) for name, names in (data.get("ablations") or {}).items()}
    for ablation, names in ablations.items():
        for name in names:
            resolve(name, variants)  # a typo in the file fails here, naming it
    return variants, ablations


def _as_list(value):
    return [_as_list(item) for item in value] if isinstance(value, (list, tuple)) else value


def names(variants: dict) -> list[str]:
    """Every name :func:`resolve` knows, ``@`` forms included."""
    known = list(variants)
    for variant in variants.values():
        if variant.method in LOGIT_METHODS:
            known += [f"{variant.name}@{VIEW_NAMES[v]}" for v in (1, 2) if not (v == 1 and variant.method in TWO_VIEW_ONLY)]
    return known


def resolve(name: str, variants: dict | None = None) -> Variant:
    """The :class:`Variant` called ``name`` (methods case-insensitively); one-line error with
    the close matches for an unknown one."""
    variants = catalogue()[0] if variants is None else variants
    by_upper = {key.upper(): key for key in variants}
    suffix = VIEWS_SUFFIX.match(name)
    base = suffix.group("base") if suffix else name
    key = base if base in variants else by_upper.get(base.upper())
    if key is None:
        close = difflib.get_close_matches(name, names(variants), n=4, cutoff=0.6)
        if close:
            raise BenchError(f"unknown method or variant {name!r}: did you mean {', '.join(close)}? (all are in {variants_file()})")
        raise BenchError(f"unknown method or variant {name!r}; known: {', '.join(variants)}, each also as NAME@1view, NAME@2views ({variants_file()})")
    variant = variants[key]
    return variant.at_views(int(suffix.group("views"))) if suffix else variant


def select(methods: str, ablation: str | None = None, protocol: str | None = None) -> list[Variant]:
    """The variants of ``--methods`` (names, comma-separated), then ``--ablation``'s, each
    replaced by its ``@1view``/``@2views`` forms with ``--protocol``; in order, each training
    once (of two names for the same method, config and overrides, the first is kept)."""
    variants, ablations = catalogue()
    chosen = [resolve(name.strip(), variants) for name in methods.split(",") if name.strip()] if methods else []
    if ablation:
        if ablation not in ablations:
            raise BenchError(f"unknown ablation {ablation!r}; known: {', '.join(ablations)}")
        chosen += [resolve(name, variants) for name in ablations[ablation]]
    if protocol:
        views = _views(protocol)
        chosen = [variant.at_views(v) for variant in chosen for v in views if not (v == 1 and variant.method in TWO_VIEW_ONLY)]
    if not chosen:
        raise BenchError(f"no method or variant chosen: give --methods (e.g. {','.join(METHODS)}) or --ablation")
    unique = {}  # one run per training: SLD-1view@2views is SLD@2views
    for variant in chosen:
        unique.setdefault((variant.method, variant.config, tuple(sorted(map(repr, variant.overrides)))), variant)
    return list(unique.values())


def _views(text: str) -> list[int]:
    try:
        views = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        views = []
    if not views or set(views) - {1, 2}:
        raise BenchError(f"--protocol takes 1, 2 or 1,2 (the numbers of views); got {text!r}")
    return list(dict.fromkeys(views))
