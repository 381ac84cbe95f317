"""slkd.losses.mlkd against the REAL released MLKD ``KD_ours`` distiller.

Runs only when the host (``mlkd_fork_host`` fixture, tests/conftest.py) is the MLKD fork, and
skips with the reason otherwise.  Example::

    SLKD_MDISTILLER_PATH=/path/to/Multi-Level-Logit-Distillation \\
        python3 -m pytest -q tests/test_host_mlkd_reference.py
"""
import contextlib
import importlib
import sys
import types

import pytest
import torch
import torch.nn as nn

from slkd.losses.mlkd import mlkd_losses

pytestmark = pytest.mark.mlkd_fork

KEYS = ("loss_ce", "loss_kd", "loss_cc", "loss_bc")


@contextlib.contextmanager
def _placeholder_modules_if_missing():
    """KD_ours.py starts with ``from termios import CEOL`` and ``from turtle import st``
    (unused imports).  ``turtle`` needs Tk, which headless machines often lack, and
    ``termios`` is POSIX only.  When one cannot be imported, a harmless placeholder
    module holding just that name is put in ``sys.modules`` for the duration of the
    import and removed afterwards; KD_ours never uses either name."""
    needed = {"turtle": "st", "termios": "CEOL"}
    inserted = []
    for module_name, attr in needed.items():
        try:
            importlib.import_module(module_name)
        except Exception:  # ImportError, or a Tk error raised while importing turtle
            placeholder = types.ModuleType(module_name)
            setattr(placeholder, attr, None)
            sys.modules[module_name] = placeholder
            inserted.append(module_name)
    try:
        yield inserted
    finally:
        for module_name in inserted:
            sys.modules.pop(module_name, None)


@pytest.fixture(scope="module")
def kd_ours_cls(mlkd_fork_host):
    """(the fork's KD_ours class, yacs' CfgNode, the file KD_ours came from)."""
    from yacs.config import CfgNode

    with _placeholder_modules_if_missing():
        module = importlib.import_module("mdistiller.distillers.KD_ours")
    return module.KD_ours, CfgNode, module.__file__


class _Net(nn.Module):
    """Stand-in for an mdistiller model: forward returns (logits, features)."""

    def __init__(self, in_features, classes, scale):
        super().__init__()
        self.fc = nn.Linear(in_features, classes)
        self.scale = scale

    def forward(self, x):
        feat = x.flatten(1)
        return self.fc(feat) * self.scale, {"feats": [feat], "pooled_feat": feat}


def _cfg(CfgNode, temperature, ce_w, kd_w):
    cfg = CfgNode()
    cfg.KD = CfgNode()
    cfg.KD.TEMPERATURE = temperature
    cfg.KD.LOSS = CfgNode()
    cfg.KD.LOSS.CE_WEIGHT = ce_w
    cfg.KD.LOSS.KD_WEIGHT = kd_w
    return cfg


@pytest.mark.parametrize(
    "batch,classes,ties,temperature,ce_w,kd_w",
    [
        (8, 10, 0, 4, 0.1, 0.9),  # CIFAR defaults, even batch
        (7, 10, 0, 4, 0.1, 0.9),  # odd batch
        (9, 6, 3, 4, 0.1, 0.9),  # ties in the teacher confidence
        (16, 100, 0, 4, 0.1, 0.9),  # CIFAR-100 sized classes
        (6, 12, 4, 1, 0.5, 0.5),  # released ImageNet weights / temperature
        (1, 2, 0, 4, 0.1, 0.9),  # one sample, two classes
        (2, 2, 0, 2, 1.0, 2.0),
    ],
)
@pytest.mark.parametrize(
    "dtype,rtol,atol",
    [(torch.float32, 2e-5, 2e-6), (torch.float64, 1e-10, 1e-12)],
    ids=["float32", "float64"],
)
def test_matches_released_kd_ours(kd_ours_cls, batch, classes, ties, temperature, ce_w, kd_w,
                                  dtype, rtol, atol):
    KD_ours, CfgNode, _origin = kd_ours_cls
    torch.manual_seed(batch * 1000 + classes)
    in_features = 12
    student = _Net(in_features, classes, 1.0).to(dtype)
    teacher = _Net(in_features, classes, 3.0).to(dtype)
    distiller = KD_ours(student, teacher, _cfg(CfgNode, temperature, ce_w, kd_w))
    distiller.train()

    image_weak = torch.randn(batch, in_features, dtype=dtype)
    image_strong = torch.randn(batch, in_features, dtype=dtype)
    if ties:  # identical images -> identical teacher rows -> tied confidences
        image_weak[1 : ties + 1] = image_weak[0]
    target = torch.randint(0, classes, (batch,))

    _, released = distiller.forward_train(
        image_weak=image_weak, image_strong=image_strong, target=target
    )
    params = [p for p in student.parameters()]
    released_grads = {
        k: torch.autograd.grad(released[k], params, retain_graph=True, allow_unused=True)
        for k in KEYS
    }

    s_w, _ = student(image_weak)
    s_s, _ = student(image_strong)
    with torch.no_grad():
        t_w, _ = teacher(image_weak)
        t_s, _ = teacher(image_strong)
    ours = mlkd_losses(s_w, s_s, t_w, t_s, target, base_temperature=float(temperature),
                       ce_weight=ce_w, kd_weight=kd_w)

    for k in KEYS:
        assert ours[k].dtype == dtype
        torch.testing.assert_close(ours[k], released[k].to(dtype), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}: {m}")
        our_grads = torch.autograd.grad(ours[k], params, retain_graph=True, allow_unused=True)
        for name, a, b in zip(("weight", "bias"), our_grads, released_grads[k]):
            assert (a is None) == (b is None), (k, name)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=rtol * 5, atol=atol * 5,
                                           msg=lambda m, k=k, n=name: f"d{k}/d{n}: {m}")

    # gradients w.r.t. the two student views (logits), total loss
    lw = s_w.detach().requires_grad_()
    ls = s_s.detach().requires_grad_()
    ours_l = mlkd_losses(lw, ls, t_w, t_s, target, base_temperature=float(temperature),
                         ce_weight=ce_w, kd_weight=kd_w)
    g_ours = torch.autograd.grad(sum(ours_l[k] for k in KEYS), (lw, ls))
    s_w2, _ = student(image_weak)
    s_s2, _ = student(image_strong)
    lw2 = s_w2.detach().requires_grad_()
    ls2 = s_s2.detach().requires_grad_()

    class _Fixed(nn.Module):
        """Returns given logits, so KD_ours' gradients w.r.t. the logits can be read."""

        def __init__(self, weak, strong, image_weak):
            super().__init__()
            self.weak, self.strong, self.image_weak = weak, strong, image_weak

        def forward(self, x):
            return (self.weak if x is self.image_weak else self.strong), {}

    fixed = KD_ours(_Fixed(lw2, ls2, image_weak), teacher,
                    _cfg(CfgNode, temperature, ce_w, kd_w))
    fixed.train()
    _, rel_l = fixed.forward_train(image_weak=image_weak, image_strong=image_strong,
                                   target=target)
    g_rel = torch.autograd.grad(sum(rel_l[k] for k in KEYS), (lw2, ls2))
    for view, a, b in zip(("weak", "strong"), g_ours, g_rel):
        torch.testing.assert_close(a, b, rtol=rtol * 5, atol=atol * 5,
                                   msg=lambda m, v=view: f"d(total)/d(student_{v}): {m}")
