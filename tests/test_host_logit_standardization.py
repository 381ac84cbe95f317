"""LOGITS.STANDARDIZE equals the logit-standardization authors' code (Sun et al., CVPR 2024,
sunshangquan/logit-standardization-KD, ``EXPERIMENT.LOGIT_STAND``) on the same networks and
inputs: their KD, DKD and MLKD against slkd's (the host's KD and DKD through
slkd.host.methods, slkd's MLKD), losses and student gradients."""

import copy

import pytest
import torch
from yacs.config import CfgNode as CN

from tests.helpers.ls_fork import ls_fork_distillers
from tests.helpers.tiny import TinyNet, set_keys

pytestmark = pytest.mark.host

CLASSES = 10

# their --logit-stand settings: KD and MLKD weight 9 and base temperature 2; DKD's alpha and
# beta times 9 and T 2 (their tools/train.py)
SETTINGS = {
    "KD": {"KD.TEMPERATURE": 2.0, "KD.LOSS.KD_WEIGHT": 9.0, "KD.LOSS.CE_WEIGHT": 0.1},
    "DKD": {"DKD.T": 2.0, "DKD.ALPHA": 9.0, "DKD.BETA": 72.0, "DKD.CE_WEIGHT": 1.0, "DKD.WARMUP": 20},
    "MLKD": {"KD.TEMPERATURE": 2.0, "KD.LOSS.KD_WEIGHT": 9.0, "KD.LOSS.CE_WEIGHT": 0.1},
}


def _their_cfg(settings):
    cfg = CN({"KD": {"TEMPERATURE": 4.0, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}},
              "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20},
              "EXPERIMENT": {"LOGIT_STAND": True}})
    return set_keys(cfg, settings)


def _pair(host, fresh_cfg, method, dtype):
    """(theirs, ours): the fork's distiller and slkd's, on copies of the same networks."""
    fork = ls_fork_distillers()
    if method == "MLKD" and host.has_mlkd:
        pytest.skip("the host has its own MLKD; slkd's is not registered")
    torch.manual_seed(0)
    student, teacher = TinyNet(CLASSES).to(dtype), TinyNet(CLASSES).to(dtype)
    theirs = getattr(fork, method).__dict__[method](copy.deepcopy(student), copy.deepcopy(teacher), _their_cfg(SETTINGS[method]))
    fresh_cfg.DISTILLER.TYPE = method
    fresh_cfg.SOLVER.TRAINER = "slkd"
    fresh_cfg.LOGITS.STANDARDIZE = True
    set_keys(fresh_cfg, SETTINGS[method])
    ours = host.distiller_dict[method](student, teacher, fresh_cfg)
    return theirs.train(), ours.train()


def _inputs(dtype, batch=8):
    generator = torch.Generator().manual_seed(11)
    weak = torch.randn(batch, 3, 8, 8, generator=generator).to(dtype)
    strong = torch.randn(batch, 3, 8, 8, generator=generator).to(dtype)
    return weak, strong, torch.randint(0, CLASSES, (batch,), generator=generator)


def _losses_and_grads(distiller, **call):
    distiller.student.zero_grad()
    _, losses = distiller.forward_train(**call)
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, [p.grad.clone() for p in distiller.student.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method, epoch", [("KD", 1), ("DKD", 7), ("DKD", 40), ("MLKD", 1)])
def test_standardize_equals_the_forks_logit_stand(host, fresh_cfg, method, epoch, dtype):
    theirs, ours = _pair(host, fresh_cfg, method, dtype)
    weak, strong, target = _inputs(dtype)
    call = dict(image_weak=weak, image_strong=strong) if method == "MLKD" else dict(image=weak)
    their_losses, their_grads = _losses_and_grads(theirs, target=target, epoch=epoch, **call)
    our_losses, our_grads = _losses_and_grads(ours, target=target, epoch=epoch, **call)
    assert set(our_losses) == set(their_losses)
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    for key, value in their_losses.items():
        torch.testing.assert_close(our_losses[key], value.to(our_losses[key].dtype), **tolerance, msg=key)
    for mine, reference in zip(our_grads, their_grads):
        torch.testing.assert_close(mine, reference, **tolerance)


def test_standardize_matters_in_this_comparison(host, fresh_cfg):
    """The same comparison with slkd's standardization off differs: the test can fail."""
    theirs, ours = _pair(host, fresh_cfg, "KD", torch.float64)
    ours.standardize = False
    weak, _, target = _inputs(torch.float64)
    their_losses, _ = _losses_and_grads(theirs, image=weak, target=target, epoch=1)
    our_losses, _ = _losses_and_grads(ours, image=weak, target=target, epoch=1)
    assert not torch.allclose(our_losses["loss_kd"], their_losses["loss_kd"])
