"""slkd's config nodes, their validation, and loading a config file with clear errors.

Nodes added to mdistiller's ``CFG`` by :func:`slkd.register`:

``SLD`` (the method): the keys and defaults of :data:`slkd.losses.sld.SLD_DEFAULTS`, and
two keys kept only to say where they moved (a run that sets them stops with that message):
``STRONG_VIEW`` (now ``PROTOCOL.VIEWS``) and ``TEACHER_SWAP`` (now ``LOGITS.TEACHER_SWAP``).

``PROTOCOL`` and ``LOGITS`` (for the logit methods KD, DKD, MLKD, SLD;
:mod:`slkd.host.protocol` resolves and checks them)::

    PROTOCOL.VIEWS        null     1: one view (crop, flip); 2: a weak and a strong
                                   (RandAugment) view, the loss summed over both;
                                   null: the method's own (KD, DKD 1; MLKD, SLD 2)
    LOGITS.TEACHER_SWAP   null     the teacher logits the loss sees are SLD's swap(t, y);
                                   null: the method's own (on for SLD, off for the others)
    LOGITS.STANDARDIZE    False    z-score student and teacher rows in the distillation
                                   term (Sun et al., CVPR 2024); cross-entropy sees raw logits

``SLKD`` (how slkd's trainer runs; none of it changes what is computed)::

    SEED              0        seed of torch, numpy, random and the loader workers
    DETERMINISTIC     False    cuDNN and torch deterministic algorithms
    AMP               "none"   "none" | "bf16" | "fp16" (fp16 uses a gradient scaler)
    CHANNELS_LAST     False    channels-last memory format for the networks and images
    SYNC_BN           False    SyncBatchNorm for the student under torchrun
    FUSED_LOSS        False    SLD's loss as two fused Triton kernels (CUDA; SLD only; same
                               values to float rounding)
    CUDA_GRAPHS       False    record the training step once, replay it as one CUDA graph
    DEVICE_VIEWS      False    CIFAR-100's two views made in batches on the training device
                               (slkd.host.device_views; the PIL path's draws and pixels)
    FAST              False    CUDA graphs, the fused loss, bf16, channels-last and the
                               device views as one switch (GPU; slkd.host.fast, --fast)
    EVAL_FREQ         1        evaluate every N epochs (and always at the last one)
    LOADER.WORKERS    -1       train loader workers per process; -1: sized to the machine
    LOADER.PIN_MEMORY True
    LOADER.PREFETCH   4        batches prefetched per worker
"""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path

import yaml
from yacs.config import CfgNode as CN

from slkd.errors import ConfigError
from slkd.losses.checks import temperature_values
from slkd.losses.sld import SLD_DEFAULTS

# SLD keys that moved to another node: key -> the key that replaced it.
MOVED_SLD_KEYS = {"STRONG_VIEW": "PROTOCOL.VIEWS", "TEACHER_SWAP": "LOGITS.TEACHER_SWAP"}

AMP_MODES = ("none", "bf16", "fp16")

# Trainers that feed two views per batch: slkd's, and the MLKD fork's "ours".
TWO_VIEW_TRAINERS = ("slkd", "ours")

# Host trainers that differ from slkd's only in how the loop feeds the batches (one view,
# CRD's contrastive indices, two views): slkd-train runs their configs with slkd's trainer.
LOOP_ONLY_TRAINERS = ("base", "crd", "ours")

# Host trainers that change the method itself (DOT's optimizer, upstream mdistiller); slkd's
# trainer cannot stand in for them.
DOT_TRAINERS = ("dot", "crd_dot")

# Numbers checked before a run: key, type (int, or float which takes ints too), test, allowed range.
NUMERIC_RANGES = (
    ("SOLVER.EPOCHS", int, lambda v: v >= 1, ">= 1"),
    ("SOLVER.BATCH_SIZE", int, lambda v: v >= 1, ">= 1"),
    ("DATASET.TEST.BATCH_SIZE", int, lambda v: v >= 1, ">= 1"),
    ("SOLVER.LR", float, lambda v: v > 0, "> 0"),
    ("SOLVER.LR_DECAY_RATE", float, lambda v: 0 < v <= 1, "in (0, 1]"),
    ("SOLVER.MOMENTUM", float, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("SOLVER.WEIGHT_DECAY", float, lambda v: v >= 0, ">= 0"),
    ("LOG.SAVE_CHECKPOINT_FREQ", int, lambda v: v >= 1, ">= 1"),
    ("SLKD.EVAL_FREQ", int, lambda v: v >= 1, ">= 1"),
    ("SLKD.LOADER.WORKERS", int, lambda v: v >= -1, ">= -1 (-1: sized to the machine)"),
    ("SLKD.LOADER.PREFETCH", int, lambda v: v >= 1, ">= 1"),
)


def sld_node() -> CN:
    """A fresh ``SLD`` node: :data:`SLD_DEFAULTS`, and the moved keys (null)."""
    node = CN({key: list(value) if isinstance(value, tuple) else value for key, value in SLD_DEFAULTS.items()})
    for key in MOVED_SLD_KEYS:
        node[key] = None
    return node


def protocol_node() -> CN:
    """A fresh ``PROTOCOL`` node: ``VIEWS`` null, each method's own number of views."""
    return CN({"VIEWS": None})


def logits_node() -> CN:
    """A fresh ``LOGITS`` node: the methods' own teacher logits, no standardization."""
    return CN({"TEACHER_SWAP": None, "STANDARDIZE": False})


def slkd_node() -> CN:
    """A fresh ``SLKD`` node (run options of slkd's trainer)."""
    node = CN()
    node.SEED = 0
    node.DETERMINISTIC = False
    node.AMP = "none"
    node.CHANNELS_LAST = False
    node.SYNC_BN = False
    node.FUSED_LOSS = False
    node.CUDA_GRAPHS = False
    node.DEVICE_VIEWS = False
    node.FAST = False
    node.EVAL_FREQ = 1
    node.LOADER = CN()
    node.LOADER.WORKERS = -1
    node.LOADER.PIN_MEMORY = True
    node.LOADER.PREFETCH = 4
    return node


def add_slkd_nodes(cfg: CN) -> None:
    """Add the ``SLD``, ``PROTOCOL``, ``LOGITS`` and ``SLKD`` nodes to ``cfg`` where missing
    (idempotent)."""
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for name, make in (("SLD", sld_node), ("PROTOCOL", protocol_node), ("LOGITS", logits_node), ("SLKD", slkd_node)):
        if name not in cfg:
            setattr(cfg, name, make())
    if was_frozen:
        cfg.freeze()


def validate_sld(cfg: CN) -> None:
    """Raise :class:`ConfigError` for an SLD node that cannot run; warn on a useless one."""
    node = cfg.SLD
    for key, new in MOVED_SLD_KEYS.items():
        if node.get(key) is not None:
            raise ConfigError(f"SLD.{key} is now {new}, one setting for every logit method: set {new} instead")
    try:
        temperature_values(node.TEMPERATURES)
    except ValueError as error:
        raise ConfigError(f"SLD.TEMPERATURES {list(node.TEMPERATURES)}: {error}") from None
    for key in ("CE_WEIGHT", "KD_WEIGHT"):
        if not (math.isfinite(node[key]) and node[key] >= 0):
            raise ConfigError(f"SLD.{key} is {node[key]}: loss weights must be finite and not negative")
    if node.STUDENT_SWAP and node.GAMMA >= cfg.SOLVER.EPOCHS:
        warnings.warn(
            f"SLD.GAMMA={node.GAMMA} >= SOLVER.EPOCHS={cfg.SOLVER.EPOCHS}: the pseudo-teacher "
            "term (student swap) never switches on in this run",
            stacklevel=1,  # one place: shown once, though slkd-train and the distiller both check
        )


#: The config node holding a method's loss weights, where it is not the method's own name
_WEIGHT_NODES = {"MLKD": "KD"}
#: Loss weights not named ``*_WEIGHT``
_OTHER_WEIGHTS = {"DKD": ("ALPHA", "BETA")}


def loss_weights(cfg: CN) -> dict:
    """``{"NODE.KEY": value}`` of the numeric loss weights of ``DISTILLER.TYPE``'s method: the
    keys of its node (``SLD``, ``KD`` for KD and MLKD, ``DKD``, ``CRD``, ...) named ``*_WEIGHT``,
    and DKD's ``ALPHA`` and ``BETA``; empty for a method without a node (``NONE``)."""
    method = cfg.DISTILLER.TYPE
    node_name = _WEIGHT_NODES.get(method, method)
    node = cfg.get(node_name)
    if not isinstance(node, CN):
        return {}
    weights = {}
    for key, value in _flat_items(node, node_name):
        last = key.rsplit(".", 1)[-1]
        if (last.endswith("WEIGHT") or last in _OTHER_WEIGHTS.get(method, ())) and isinstance(value, (int, float)) and not isinstance(value, bool):
            weights[key] = value
    return weights


def _flat_items(node: CN, prefix: str):
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _flat_items(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


def validate_loss_weights(cfg: CN) -> None:
    """ConfigError when every loss weight of the method is 0: the loss would be zero and the
    student would not train."""
    weights = loss_weights(cfg)
    if weights and all(value == 0 for value in weights.values()):
        raise ConfigError(
            f"{' and '.join(weights)} are all 0: {cfg.DISTILLER.TYPE}'s loss would be zero and the student would "
            "not train; give at least one of them a positive weight"
        )


def validate_trainer(cfg: CN) -> None:
    """Raise :class:`ConfigError` unless slkd's trainer can run ``SOLVER.TRAINER``'s method:
    it is ``slkd`` or one of :data:`LOOP_ONLY_TRAINERS`."""
    name = cfg.SOLVER.TRAINER
    if name == "slkd" or name in LOOP_ONLY_TRAINERS:
        return
    if name in DOT_TRAINERS:
        raise ConfigError(
            f"SOLVER.TRAINER {name!r} trains with DOT's optimizer (two momenta, SOLVER.DOT.DELTA), "
            "which slkd's trainer does not have: run this config with mdistiller's own tools/train.py"
        )
    raise ConfigError(
        f"SOLVER.TRAINER {name!r} is not a trainer slkd-train can run: use slkd (or "
        f"{', '.join(LOOP_ONLY_TRAINERS)}, run with slkd's trainer), or mdistiller's own tools/train.py"
    )


def validate_run_options(cfg: CN) -> None:
    """Raise :class:`ConfigError` for bad run options: ``SLKD``'s, and the numbers of
    :data:`NUMERIC_RANGES` and ``SOLVER.LR_DECAY_STAGES``, before anything trains."""
    if cfg.SLKD.AMP not in AMP_MODES:
        raise ConfigError(f"SLKD.AMP is {cfg.SLKD.AMP!r}: choose one of {', '.join(AMP_MODES)}")
    for key, kind, test, allowed in NUMERIC_RANGES:
        _check_number(key, _value_at(cfg, key), kind, test, allowed)
    _check_decay_stages(cfg.SOLVER.LR_DECAY_STAGES)
    if cfg.SLKD.DEVICE_VIEWS and cfg.DATASET.TYPE != "cifar100":
        raise ConfigError(
            f"SLKD.DEVICE_VIEWS makes CIFAR-100's views on the device, this run trains on {cfg.DATASET.TYPE}: "
            "set SLKD.DEVICE_VIEWS False (or drop --device-views)"
        )
    if cfg.SLKD.FUSED_LOSS:
        from slkd.losses.sld_fused import fused_available

        reason = fused_available()
        if reason:
            raise ConfigError(f"SLKD.FUSED_LOSS is True but {reason}; or set SLKD.FUSED_LOSS False")


def _value_at(cfg: CN, key: str):
    """The value of the dotted ``key`` in ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_number(key: str, value, kind: type, test, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite ``kind`` (an int counts as a
    float) for which ``test`` holds."""
    kinds = (int,) if kind is int else (int, float)
    words = "an integer" if kind is int else "a number"
    finite = not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, kinds) or not finite or not test(value):
        raise ConfigError(f"{key} is {value!r}: it must be {words} {allowed}")


def _check_decay_stages(stages) -> None:
    """Raise :class:`ConfigError` unless ``stages`` is a list of epoch numbers (integers >= 0)."""
    if not isinstance(stages, (list, tuple)) or not all(
        isinstance(stage, int) and not isinstance(stage, bool) and stage >= 0 for stage in stages
    ):
        raise ConfigError(
            f"SOLVER.LR_DECAY_STAGES is {stages!r}: it must be a list of epochs, integers >= 0, e.g. [150, 180, 210]"
        )


def load_config(base: CN, path: str | Path | None, opts: list[str]) -> CN:
    """Merge the YAML file ``path`` and the ``KEY VALUE`` list ``opts`` into a clone of ``base``.

    yacs's and YAML's own exceptions are turned into :class:`ConfigError` messages that name
    the file, the key and the fix (the nearest existing key for a typo).
    """
    cfg = base.clone()
    cfg.defrost()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with open(path) as handle:
                loaded = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not loaded:
            raise ConfigError(
                f"{path} is empty: it would train mdistiller's default ResNet50 -> resnet32 run; give a config that "
                "sets DISTILLER, e.g. one of slkd's (cifar100/sld/res32x4_res8x4.yaml)"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config nodes, got {type(loaded).__name__}")
        bad_keys = _non_string_keys(loaded or {})
        if bad_keys:
            raise ConfigError(f"{path}: config keys must be names, got {bad_keys[0]!r}")
        _merge(cfg, lambda: cfg.merge_from_other_cfg(CN(loaded or {})), source=str(path))
    if len(opts) % 2:
        raise ConfigError(
            f"overrides come in KEY VALUE pairs, got an odd number: {' '.join(map(str, opts))}"
        )
    _merge(cfg, lambda: cfg.merge_from_list(list(opts)), source="the command line")
    _check_no_nulls(base, cfg)
    return cfg


def _non_string_keys(mapping: dict) -> list:
    """The keys, at any depth, that are not strings (YAML allows ``?``, numbers, ``null``)."""
    bad = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            bad.append(key)
        elif isinstance(value, dict):
            bad.extend(_non_string_keys(value))
    return bad


def _check_no_nulls(base: CN, cfg: CN, prefix: str = "") -> None:
    """yacs lets ``null`` replace any value; a key that had one must keep one."""
    for key, value in cfg.items():
        default = base.get(key) if isinstance(base, CN) else None
        if isinstance(value, CN):
            _check_no_nulls(default, value, f"{prefix}{key}.")
        elif value is None and default is not None:
            raise ConfigError(
                f"{prefix}{key} is null: give a {type(default).__name__} (default {default!r})"
            )


def _merge(cfg: CN, merge, source: str) -> None:
    try:
        merge()
    except KeyError as error:
        key = _key_in_message(str(error))
        raise ConfigError(f"unknown config key {key} in {source}{_suggestion(cfg, key)}") from None
    except ValueError as error:
        raise ConfigError(f"bad value in {source}: {_type_message(str(error))}") from None
    except AssertionError as error:
        # yacs's merge_from_list reports an unknown key with an assertion, not a KeyError
        if str(error).startswith("Non-existent key"):
            key = _key_in_message(str(error))
            raise ConfigError(f"unknown config key {key} in {source}{_suggestion(cfg, key)}") from None
        raise ConfigError(f"bad value in {source}: {error}") from None


def _key_in_message(message: str) -> str:
    message = message.strip("'\"")
    return message.rsplit(":", 1)[-1].strip() if ":" in message else message


def _type_message(message: str) -> str:
    return message.replace("Type mismatch", "type mismatch").replace(
        "with values", "; the value"
    )


def _suggestion(cfg: CN, key: str) -> str:
    near = difflib.get_close_matches(key, list(_all_keys(cfg)), n=1, cutoff=0.6)
    if near:
        return f": did you mean {near[0]}?"
    node = key.rsplit(".", 1)[0]
    siblings = [k for k in _all_keys(cfg) if k.startswith(node + ".")]
    return f"; keys under {node}: {', '.join(siblings)}" if siblings else ""


def _all_keys(node: CN, prefix: str = ""):
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, CN):
            yield from _all_keys(value, full + ".")
        else:
            yield full
