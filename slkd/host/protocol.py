"""The training protocol and logit transforms of the logit methods: one place that reads them.

``PROTOCOL.VIEWS`` and ``LOGITS.*`` (see :mod:`slkd.host.config`) hold ``null`` for "the
method's own": KD and DKD train on one view (their papers' protocol), MLKD and SLD on a weak
and a strong view, and only SLD swaps the teacher's logits. Everything that needs to know
(slkd's distillers, the KD and DKD of :mod:`slkd.host.methods`, ``slkd-train``, mdistiller's
own ``tools/train.py`` through the distillers, the benchmark's report) asks here.
"""

from __future__ import annotations

from types import MappingProxyType

from slkd.errors import ConfigError
from slkd.host.config import TWO_VIEW_TRAINERS

#: The logit methods ``PROTOCOL`` and ``LOGITS`` apply to, with their own number of views.
OWN_VIEWS = MappingProxyType({"KD": 1, "DKD": 1, "MLKD": 2, "SLD": 2})

#: The methods whose own teacher logits are swapped.
OWN_TEACHER_SWAP = frozenset({"SLD"})


def method_views(method: str, views) -> int:
    """The views per batch ``method`` trains on when ``PROTOCOL.VIEWS`` is ``views`` (1, 2
    or None for the method's own). Methods other than the logit methods take one view."""
    if views is None:
        return OWN_VIEWS.get(method, 1)
    return int(views)


def resolve_views(cfg) -> int:
    """Views per batch (1 or 2) for ``cfg``'s ``DISTILLER.TYPE`` (checked by
    :func:`validate_protocol`)."""
    return method_views(cfg.DISTILLER.TYPE, _node(cfg, "PROTOCOL").get("VIEWS"))


def resolve_teacher_swap(cfg) -> bool:
    """Whether the teacher logits ``cfg``'s method sees are swapped (``LOGITS.TEACHER_SWAP``,
    or the method's own when null)."""
    setting = _node(cfg, "LOGITS").get("TEACHER_SWAP")
    return cfg.DISTILLER.TYPE in OWN_TEACHER_SWAP if setting is None else bool(setting)


def resolve_standardize(cfg) -> bool:
    """Whether the distillation term z-scores its logits (``LOGITS.STANDARDIZE``)."""
    return bool(_node(cfg, "LOGITS").get("STANDARDIZE", False))


def transforms_on(cfg) -> bool:
    """Whether ``cfg`` asks its method for anything but its own protocol and logits."""
    method = cfg.DISTILLER.TYPE
    return (
        resolve_views(cfg) != OWN_VIEWS.get(method, 1)
        or resolve_teacher_swap(cfg) != (method in OWN_TEACHER_SWAP)
        or resolve_standardize(cfg)
    )


def validate_protocol(cfg) -> None:
    """Raise :class:`ConfigError`, naming the fix, for ``PROTOCOL`` and ``LOGITS`` settings
    that ``cfg``'s method or trainer cannot run."""
    method = cfg.DISTILLER.TYPE
    views = _node(cfg, "PROTOCOL").get("VIEWS")
    logits = _node(cfg, "LOGITS")
    if views is not None and (isinstance(views, bool) or views not in (1, 2)):
        raise ConfigError(f"PROTOCOL.VIEWS is {views!r}: choose 1 (one view), 2 (weak + strong views) or null (the method's own)")
    for key in ("TEACHER_SWAP", "STANDARDIZE"):
        value = logits.get(key)
        if not isinstance(value, bool) and not (key == "TEACHER_SWAP" and value is None):
            allowed = "True, False or null (the method's own)" if key == "TEACHER_SWAP" else "True or False"
            raise ConfigError(f"LOGITS.{key} is {value!r}: choose {allowed}")
    if method not in OWN_VIEWS:
        if views is not None or logits.get("TEACHER_SWAP") is not None or logits.get("STANDARDIZE"):
            raise ConfigError(
                f"PROTOCOL and LOGITS apply to the logit methods {', '.join(OWN_VIEWS)}, not {method}: "
                "leave PROTOCOL.VIEWS and LOGITS.TEACHER_SWAP null and LOGITS.STANDARDIZE False"
            )
        return
    if method == "MLKD" and views == 1:
        raise ConfigError(
            "MLKD is two-view by construction (its strong-view KD block distills the strong view): "
            "PROTOCOL.VIEWS must be 2 or null for MLKD"
        )
    trainer = cfg.SOLVER.TRAINER
    if resolve_views(cfg) == 2 and trainer not in TWO_VIEW_TRAINERS:
        raise ConfigError(
            f"{method} trains on 2 views (PROTOCOL.VIEWS) but SOLVER.TRAINER {trainer!r} feeds one view per "
            "batch: set SOLVER.TRAINER slkd (slkd's two-view trainer), or PROTOCOL.VIEWS 1"
        )


def check_applied(distiller, cfg) -> None:
    """Raise :class:`ConfigError` when ``cfg`` asks for a protocol or logit transform that the
    built ``distiller`` cannot apply: a host's own class (e.g. the MLKD of a host that ships
    one), which does not read ``PROTOCOL`` and ``LOGITS``."""
    module = type(distiller).__module__
    if transforms_on(cfg) and not module.startswith("slkd."):
        raise ConfigError(
            f"PROTOCOL and LOGITS ask {cfg.DISTILLER.TYPE} for more than its own protocol and logits, but this "
            f"host's own {cfg.DISTILLER.TYPE} ({module}) does not read them: leave PROTOCOL.VIEWS and "
            "LOGITS.TEACHER_SWAP null and LOGITS.STANDARDIZE False, or use a host without its own "
            f"{cfg.DISTILLER.TYPE} (upstream mdistiller or the MLKD fork)"
        )


def _node(cfg, name: str):
    """``cfg``'s node ``name``, or an empty mapping where ``cfg`` has none (a host config
    that slkd has not registered into, or a recorded config read back as a dict)."""
    node = cfg.get(name) if hasattr(cfg, "get") else None
    return node if node is not None else {}
