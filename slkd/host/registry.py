"""Registration into the mdistiller host: config nodes, distillers and the trainer.

Works with upstream mdistiller (megvii-research/mdistiller a08d46f) and the MLKD fork
(Jin-Ying/Multi-Level-Logit-Distillation), which differ in their trainers (the fork adds
``"ours"``), ImageNet students (``MobileNetV1`` vs ``MobileNetV2``) and distillers (the fork
has ``KD_ours``, the released MLKD).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from slkd.errors import HostNotFound, RegistrationConflict

INSTALL_HINT = (
    "slkd needs mdistiller, which is not on PyPI. Install it next to slkd:\n"
    "  git clone https://github.com/megvii-research/mdistiller && cd mdistiller && "
    "git checkout a08d46f && pip install -e . scipy\n"
    "(or the MLKD fork, https://github.com/Jin-Ying/Multi-Level-Logit-Distillation), "
    "or set SLKD_MDISTILLER_PATH to a checkout."
)

TRAINER_NAME = "slkd"




@dataclass(frozen=True)
class Host:
    """The parts of mdistiller slkd plugs into."""

    cfg: object  # mdistiller.engine.cfg.CFG
    distiller_dict: dict
    trainer_dict: dict
    cifar_model_dict: dict
    imagenet_model_dict: dict
    distiller_base: type
    package: ModuleType

    @property
    def has_mlkd(self) -> bool:
        """The host ships its own MLKD (the released SLD fork calls it ``MLKD``)."""
        return "MLKD" in self.distiller_dict and not _is_slkd(self.distiller_dict["MLKD"])

    @property
    def flavour(self) -> str:
        """``"mlkd-fork"`` for hosts with the two-view ``"ours"`` trainer, else ``"upstream"``."""
        return "mlkd-fork" if "ours" in self.trainer_dict else "upstream"


def import_host() -> Host:
    """Import mdistiller's registries, or raise :class:`HostNotFound` with install steps."""
    _put_checkout_on_sys_path()
    _allow_import_without_tk()
    try:
        package = importlib.import_module("mdistiller")
        cfg_module = importlib.import_module("mdistiller.engine.cfg")
        distillers = importlib.import_module("mdistiller.distillers")
        engine = importlib.import_module("mdistiller.engine")
        models = importlib.import_module("mdistiller.models")
        base = importlib.import_module("mdistiller.distillers._base")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "mdistiller":
            raise HostNotFound(INSTALL_HINT) from None
        raise HostNotFound(
            f"mdistiller is installed but cannot be imported: module {error.name!r} is missing. "
            f"Install it (pip install {error.name}); mdistiller also needs scipy, yacs, "
            "tensorboardX and tqdm."
        ) from None
    return Host(
        cfg=cfg_module.CFG,
        distiller_dict=distillers.distiller_dict,
        trainer_dict=engine.trainer_dict,
        cifar_model_dict=models.cifar_model_dict,
        imagenet_model_dict=models.imagenet_model_dict,
        distiller_base=base.Distiller,
        package=package,
    )


def register() -> list[str]:
    """Register slkd into the importable mdistiller. Idempotent.

    Adds the ``SLD``, ``PROTOCOL``, ``LOGITS`` and ``SLKD`` config nodes to ``CFG``, ``SLD``
    to ``distiller_dict``, ``MLKD`` there too when the host has none, puts the wrappers of
    :mod:`slkd.host.methods` in place of the host's ``KD`` and ``DKD`` (the host's own class,
    unchanged, whenever ``PROTOCOL`` and ``LOGITS`` ask for nothing), slkd's trainer as ``"slkd"`` in
    ``trainer_dict``, and the other host's name of an ImageNet network the host knows under
    one name only (:data:`slkd.host.models.IMAGENET_ALIASES`), so that slkd's configs run
    under mdistiller's ``tools/train.py`` on both hosts. Raises
    :class:`RegistrationConflict` rather than replace a different object already registered
    under one of those names. Returns the registered names.
    """
    from slkd.host.config import add_slkd_nodes
    from slkd.host import methods
    from slkd.host.distillers import MLKD, SLD
    from slkd.host.models import IMAGENET_ALIASES
    from slkd.host.trainer import SLKDTrainer

    host = import_host()
    entries = [("distiller_dict", host.distiller_dict, "SLD", SLD)]
    if not host.has_mlkd:
        entries.append(("distiller_dict", host.distiller_dict, "MLKD", MLKD))
    for name in ("KD", "DKD"):
        entries.append(("distiller_dict", host.distiller_dict, name, getattr(methods, name)))
    entries.append(("trainer_dict", host.trainer_dict, TRAINER_NAME, SLKDTrainer))
    networks = host.imagenet_model_dict
    for name, other in IMAGENET_ALIASES.items():
        if name not in networks and other in networks:
            entries.append(("imagenet_model_dict", networks, name, networks[other]))
    for where, registry, name, obj in entries:  # all checked before anything is changed
        _check_free(registry, name, obj, where)
    add_slkd_nodes(host.cfg)
    for _, registry, name, obj in entries:
        registry[name] = obj
    names = [name if where == "distiller_dict" else f"trainer:{name}" for where, _, name, _ in entries if where != "imagenet_model_dict"]
    aliases = [f"imagenet:{a}={b}" for a, b in IMAGENET_ALIASES.items() if a < b and a in networks and networks[a] is networks.get(b)]
    return names + aliases


def _check_free(registry: dict, name: str, obj, where: str) -> None:
    """Raise :class:`RegistrationConflict` if ``name`` holds something other than ``obj``
    (the same class reloaded, e.g. by importlib.reload, counts as ``obj``, and so does the
    host class that ``obj`` wraps)."""
    present = registry.get(name)
    if present is None or present is obj or _qualified_name(present) == _qualified_name(obj):
        return
    if present is getattr(obj, "host_class", None):
        return
    raise RegistrationConflict(
        f"mdistiller's {where} already has {name!r} = {_qualified_name(present)}; slkd will not "
        f"overwrite it with {_qualified_name(obj)}. Remove the host's entry, or use the host's "
        f"own {name} instead of slkd's."
    )


def _qualified_name(obj) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def _is_slkd(obj) -> bool:
    return getattr(obj, "__module__", "").startswith("slkd.")


def _allow_import_without_tk() -> None:
    """Let the MLKD fork import on machines without Tk.

    The fork's ``KD_ours`` module (and the released SLD code) runs ``from turtle import st``
    and never uses it; ``turtle`` needs Tk, so without Tk the whole ``mdistiller.distillers``
    package fails to import. Where ``turtle`` cannot be imported, an empty placeholder
    module stands in for it. Nothing else is changed.
    """
    import sys
    import types

    if "turtle" in sys.modules:
        return
    try:
        importlib.import_module("turtle")
    except ImportError:
        placeholder = types.ModuleType("turtle", "placeholder: Tk is not installed (see slkd.host.registry)")
        placeholder.st = None
        sys.modules["turtle"] = placeholder


def _put_checkout_on_sys_path() -> None:
    """Put the checkout :func:`slkd.host.checkout.find_checkout` names first on ``sys.path``
    (nothing for an installed mdistiller); :class:`HostNotFound` when none is found or the
    named folder is not a checkout."""
    import sys

    from slkd.host.checkout import CheckoutNotFound, find_checkout

    try:
        checkout = find_checkout()
    except CheckoutNotFound as error:
        first_line = "" if error.origin is None else str(error).splitlines()[0] + "\n"
        raise HostNotFound(first_line + INSTALL_HINT) from None
    if checkout.on_sys_path and str(checkout.root) not in sys.path:
        sys.path.insert(0, str(checkout.root))
