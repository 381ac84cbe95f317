"""The host's KD and DKD under ``PROTOCOL`` and ``LOGITS``, computed by the host's own losses.

:func:`slkd.host.registry.register` puts :data:`KD` and :data:`DKD` in mdistiller's
``distiller_dict`` in place of the host's classes. Built with a config that asks for nothing
but the method's own protocol and logits (one view, no swap, no standardization), they
return an instance of the host's class itself, so the host's code runs unchanged. Otherwise
they return a subclass of it whose step, over the ``V`` views of the batch (1 or 2), is::

    loss_ce = w_ce * sum_v CE(z_v, y)
    loss_kd = sum_v distill(transform(z_v, t_v, y))

``transform`` is :func:`slkd.losses.logits.transform_logits` (SLD's teacher swap, logit
standardization), ``distill`` the host's own ``kd_loss`` (times ``KD.LOSS.KD_WEIGHT``) or
``dkd_loss`` (times DKD's warm-up factor ``min(epoch / WARMUP, 1)``), called on the
transformed logits, and ``z_v``, ``t_v`` are the ``(B, C)`` student and teacher logits of view
``v``. With two views the distiller is called as SLD's is,
``forward_train(image_weak=, image_strong=, target=, epoch=)``, and returns the weak view's
student logits.
"""

from __future__ import annotations

import importlib
import inspect

import torch.nn.functional as F

from slkd.host.distillers import teacher_logits
from slkd.host.protocol import resolve_standardize, resolve_teacher_swap, resolve_views, transforms_on, validate_protocol
from slkd.host.registry import import_host
from slkd.losses.logits import transform_logits


def _kd_term(distiller, student, teacher, target, epoch):
    """``KD.LOSS.KD_WEIGHT * kd_loss(z, t, KD.TEMPERATURE)``, the host's ``kd_loss``."""
    return distiller.kd_loss_weight * distiller.host_loss(student, teacher, distiller.temperature)


def _dkd_term(distiller, student, teacher, target, epoch):
    """``min(epoch / WARMUP, 1) * dkd_loss(z, t, y, ALPHA, BETA, T)``, the host's ``dkd_loss``."""
    warmup = min(epoch / distiller.warmup, 1.0)
    return warmup * distiller.host_loss(student, teacher, target, distiller.alpha, distiller.beta, distiller.temperature)


# method -> (the host module's loss function, the distillation term built on it)
_TERMS = {"KD": ("kd_loss", _kd_term), "DKD": ("dkd_loss", _dkd_term)}


def wrap_host_method(name: str, host_class: type) -> type:
    """The class registered as ``distiller_dict[name]`` (``name`` in ``"KD"``, ``"DKD"``): a
    subclass of ``host_class`` that hands back a plain ``host_class`` instance when the config
    asks for the method's own protocol and logits."""
    loss_name, term = _TERMS[name]
    host_loss = getattr(importlib.import_module(host_class.__module__), loss_name)
    if "logit_stand" in inspect.signature(host_loss).parameters:  # the logit-standardization fork's
        plain_loss = host_loss

        def host_loss(*args):
            return plain_loss(*args, logit_stand=False)

    def __new__(cls, student, teacher, cfg, *args, **kwargs):
        validate_protocol(cfg)
        if not transforms_on(cfg):
            return host_class(student, teacher, cfg, *args, **kwargs)
        return super(wrapped, cls).__new__(cls)

    def __init__(self, student, teacher, cfg):
        host_class.__init__(self, student, teacher, cfg)
        self.num_views = resolve_views(cfg)
        self.teacher_swap = resolve_teacher_swap(cfg)
        self.standardize = resolve_standardize(cfg)

    def forward_train(self, image=None, target=None, image_weak=None, image_strong=None, **kwargs):
        views = _views(self.num_views, image, image_weak, image_strong, name)
        epoch = kwargs.get("epoch")
        if epoch is None and name == "DKD":
            raise TypeError("DKD.forward_train needs epoch= (its warm-up depends on it)")
        teacher_rows = teacher_logits(self.teacher, views).chunk(len(views))
        first = None
        loss_ce = loss_kd = 0.0
        for view, teacher in zip(views, teacher_rows):
            student = self.student(view)[0]
            first = student if first is None else first
            loss_ce = loss_ce + F.cross_entropy(student, target)
            student, teacher = transform_logits(student, teacher, target, swap=self.teacher_swap, standardize=self.standardize)
            loss_kd = loss_kd + term(self, student, teacher, target, epoch)
        return first, {"loss_ce": self.ce_loss_weight * loss_ce, "loss_kd": loss_kd}

    wrapped = type(
        name,
        (host_class,),
        {
            "__new__": __new__,
            "__init__": __init__,
            "forward_train": forward_train,
            "host_loss": staticmethod(host_loss),
            "host_class": host_class,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"The host's {name} under PROTOCOL and LOGITS (see :mod:`slkd.host.methods`).",
        },
    )
    return wrapped


def _views(num_views: int, image, image_weak, image_strong, method: str) -> list:
    if num_views == 2:
        if image_weak is None or image_strong is None:
            raise TypeError(
                f"{method} with PROTOCOL.VIEWS 2 needs image_weak= and image_strong=: train with "
                "slkd's trainer (SOLVER.TRAINER: slkd), or set PROTOCOL.VIEWS 1"
            )
        return [image_weak, image_strong]
    single = image if image is not None else image_weak
    if single is None:
        raise TypeError(f"{method} with PROTOCOL.VIEWS 1 needs image= (one view per batch)")
    return [single]


def _host_class(name: str) -> type:
    """The host's own class for ``name``, also after this module registered its own."""
    present = import_host().distiller_dict[name]
    return getattr(present, "host_class", present)


KD = wrap_host_method("KD", _host_class("KD"))
DKD = wrap_host_method("DKD", _host_class("DKD"))
