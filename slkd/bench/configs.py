"""The config file of one benchmark run: its method's config, adapted to the pair, with the
benchmark's overrides and the keys that place the run folder.

In order, later wins:

1. the method's own config (:func:`slkd.bench.sources.source_config`);
2. for KD and CRD on a pair other than the one of the host's file (resnet32x4 -> resnet8x4):
   ``DISTILLER.TEACHER``/``STUDENT``, and ``SOLVER.LR`` by mdistiller's own per-pair
   convention (its ``dkd/<pair>.yaml``: 0.01 for ShuffleNet and MobileNet students, 0.05 for
   the others); for CRD also ``CRD.FEAT.{TEACHER,STUDENT}_DIM``, the widths of the two
   networks' pooled features, which CRD's embeddings need;
3. the variant's ``set`` overrides (:mod:`slkd.bench.variants`);
4. ``--epochs`` (``SOLVER.EPOCHS``), then every ``--set KEY VALUE``, values read as
   mdistiller's command line reads them (Python literals, else strings; tuples become lists,
   as the YAML file holds them), then ``--amp`` (``SLKD.AMP``, always written: the config's
   own value, else ``bf16`` with ``--fast``, else slkd's default, when ``--amp`` is not
   given) and ``--fast`` (``SLKD.FAST True``: slkd-train turns on the rest of what it stands
   for where the file does not set it, :mod:`slkd.host.fast`);
5. ``LOG.PREFIX``, ``EXPERIMENT.PROJECT``/``NAME``/``TAG``, so that slkd-train writes the run
   to ``<out>/<pair>/<variant>/seed<k>`` (``<out>/smoke/...`` with ``--smoke``).

The result is written as a complete YAML file into the run folder (``bench_config.yaml``);
slkd-train merges it into the host's ``CFG``, so a bad key or value fails that run with
slkd-train's own message.
"""

from __future__ import annotations

import ast
import copy
import functools
from pathlib import Path

import yaml

from slkd.bench.sources import BenchError, Pair
from slkd.utils.settings import flatten

FILE_NAME = "bench_config.yaml"

# mdistiller's per-pair learning rate (configs/cifar100/dkd/*.yaml), by student.
SMALL_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")

# Set by the benchmark for every run; --set cannot change them.
PLACEMENT_KEYS = ("LOG.PREFIX", "EXPERIMENT.PROJECT", "EXPERIMENT.NAME", "EXPERIMENT.TAG", "SLKD.SEED")

# The types a config value may have in the YAML file (and lists of them).
SCALAR_TYPES = (bool, int, float, str, type(None))


def mdistiller_lr(student: str) -> float:
    """mdistiller's CIFAR-100 learning rate for ``student`` (as in its DKD configs)."""
    return 0.01 if student in SMALL_LR_STUDENTS else 0.05


def parse_overrides(pairs: list[list[str]]) -> list[tuple[str, object]]:
    """``--set KEY VALUE`` pairs -> ``(KEY, value)`` with values decoded as yacs decodes them."""
    overrides = []
    for key, text in pairs:
        if key in PLACEMENT_KEYS:
            raise BenchError(
                f"--set {key} is not allowed: the benchmark sets it for each run "
                "(use --out for the folder and --seeds for the seeds)"
            )
        overrides.append((key, _decode(key, text)))
    return overrides


def _decode(key: str, text: str):
    """``text`` as a Python literal (else the string itself), in the form YAML writes back."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if not _is_config_value(value):
        raise BenchError(
            f"--set {key} {text}: a {type(value).__name__} is not a config value; give a number, string, "
            "True/False/None or a list (set a node's keys one by one: --set NODE.KEY VALUE)"
        )
    return _tuples_as_lists(value)


def _is_config_value(value) -> bool:
    """Whether YAML writes ``value`` back as it is (tuples aside, which come back as lists)."""
    if isinstance(value, (list, tuple)):
        return all(_is_config_value(item) for item in value)
    return isinstance(value, SCALAR_TYPES)


def _tuples_as_lists(value):
    """``value`` with every tuple in it made a list."""
    return [_tuples_as_lists(item) for item in value] if isinstance(value, (list, tuple)) else value


def run_config(
    method: str, pair: Pair, source: Path, *, prefix: Path, seed: int, epochs: int | None, overrides, amp: str | None = None,
    fast: bool = False, variant=None,
) -> tuple[dict, list[str]]:
    """The run's config as a dict, and comment lines saying where each part came from
    (``variant``: a :class:`slkd.bench.variants.Variant` of ``method``, None for the method)."""
    config = yaml.safe_load(source.read_text()) or {}
    notes = [f"from {source}"]
    distiller = config.setdefault("DISTILLER", {})
    if method in ("KD", "CRD") and (distiller.get("TEACHER"), distiller.get("STUDENT")) != (pair.teacher, pair.student):
        lr = mdistiller_lr(pair.student)
        distiller.update(TEACHER=pair.teacher, STUDENT=pair.student)
        config.setdefault("SOLVER", {})["LR"] = lr
        notes.append(f"pair {pair.name}: DISTILLER.TEACHER {pair.teacher}, DISTILLER.STUDENT {pair.student}, SOLVER.LR {lr} (mdistiller's per-pair convention)")
        if method == "CRD":
            teacher_dim, student_dim = feature_dims(pair.teacher, pair.student)
            feat = config.setdefault("CRD", {}).setdefault("FEAT", {})
            feat.update(TEACHER_DIM=teacher_dim, STUDENT_DIM=student_dim)
            notes.append(f"CRD.FEAT.TEACHER_DIM {teacher_dim}, CRD.FEAT.STUDENT_DIM {student_dim} (the networks' pooled features)")
    name = method
    if variant is not None:
        name = variant.name
        for key, value in variant.overrides:
            _set(config, key, value)
        notes.append(f"variant {variant.describe()}")
    changes = ([("SOLVER.EPOCHS", epochs)] if epochs is not None else []) + list(overrides)
    for key, value in changes:
        _set(config, key, value)
    if changes:
        notes.append("overrides: " + ", ".join(f"{key} {value!r}" for key, value in changes))
    notes.append(_set_amp(config, amp, fast))
    if fast:
        _set(config, "SLKD.FAST", True)
        notes.append("SLKD.FAST True (--fast)")
    _set(config, "LOG.PREFIX", str(prefix))
    _set(config, "EXPERIMENT.PROJECT", f"{pair.name}/{name}")
    _set(config, "EXPERIMENT.NAME", f"seed{seed}")
    _set(config, "EXPERIMENT.TAG", f"{name.lower()},{pair.teacher},{pair.student}")
    return config, notes


def _set_amp(config: dict, amp: str | None, fast: bool = False) -> str:
    """Write ``SLKD.AMP`` into ``config`` (``amp``, else the config's own, else ``--fast``'s
    bf16, else slkd's default), so that the precision is part of the file compared on resume;
    return its note."""
    from slkd.host.config import slkd_node
    from slkd.host.fast import FAST_SETTINGS

    node = config.setdefault("SLKD", {})
    if not isinstance(node, dict):
        raise BenchError(f"SLKD is {node!r} in the config: it must be a config node; remove --set SLKD")
    if amp is not None:
        node["AMP"] = amp
        return f"SLKD.AMP {amp!r} (--amp)"
    if "AMP" in node:
        return f"SLKD.AMP {node['AMP']!r} (the config's)"
    if fast:
        node["AMP"] = FAST_SETTINGS["SLKD.AMP"]
        return f"SLKD.AMP {node['AMP']!r} (--fast)"
    node["AMP"] = slkd_node().AMP
    return f"SLKD.AMP {node['AMP']!r} (slkd's default)"


def write_run_config(path: Path, config: dict, notes: list[str]) -> None:
    """Write ``config`` as YAML, headed by the ``notes`` as comments."""
    header = "".join(f"# {line}\n" for line in ["written by slkd-bench for one run"] + notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None))


def protocol_differences(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two run configs, ``LOG.PREFIX`` aside (where the
    output folder sits is not part of the protocol)."""
    flat_old, flat_new = flatten(old), flatten(new)
    keys = sorted(set(flat_old) | set(flat_new))
    return [key for key in keys if key != "LOG.PREFIX" and flat_old.get(key) != flat_new.get(key)]


def _set(config: dict, dotted: str, value) -> None:
    """Set the value at ``dotted``, creating its nodes; refuse to overwrite a node."""
    *nodes, leaf = dotted.split(".")
    for depth, node in enumerate(nodes, 1):
        config = config.setdefault(node, {})
        if not isinstance(config, dict):
            parent = ".".join(nodes[:depth])
            raise BenchError(f"{dotted}: {parent} is a value, not a config node; set {parent} itself")
    if isinstance(config.get(leaf), dict):
        example = next(iter(config[leaf]), "KEY")
        raise BenchError(f"{dotted} is a config node, not a value: set its keys one by one, e.g. --set {dotted}.{example} VALUE")
    config[leaf] = copy.deepcopy(value)


@functools.lru_cache(maxsize=None)
def feature_dims(teacher: str, student: str) -> tuple[int, int]:
    """Widths of the pooled features of the host's CIFAR-100 ``teacher`` and ``student``,
    measured on one forward pass of randomly initialised networks."""
    import torch

    from slkd.host.registry import import_host

    table = import_host().cifar_model_dict
    dims = []
    for name in (teacher, student):
        if name not in table:
            raise BenchError(f"mdistiller has no CIFAR-100 model {name!r}; known: {', '.join(sorted(table))}")
        network = table[name][0](num_classes=100).eval()
        with torch.no_grad():
            _, features = network(torch.zeros(1, 3, 32, 32))
        dims.append(int(features["pooled_feat"].shape[1]))
    return dims[0], dims[1]
