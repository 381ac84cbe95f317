"""slkd.losses.constants: the cached temperature tensors the SLD and MLKD losses share."""

import pytest
import torch

from slkd.losses.constants import constant
from slkd.losses.mlkd import kd_term, mlkd_losses
from slkd.losses.sld import SLDLoss, sld_loss
from tests.test_losses_sld import EPOCH_ON, make_batch, ref_value_and_grad


def test_made_once_and_reused():
    first = constant((1.0, 2.5), torch.float32, "cpu")
    assert first.tolist() == [1.0, 2.5] and first.dtype == torch.float32
    assert constant((1.0, 2.5), torch.float32, torch.device("cpu")) is first
    assert constant((1.0, 2.5), torch.float64, "cpu") is not first
    assert constant((True, 2.5), torch.float32, "cpu") is not first  # True is not 1.0


def test_sld_and_mlkd_refuse_the_same_temperatures():
    z, t, y = make_batch(4, 5, seed=40, dtype=torch.float32)
    for call in (lambda: kd_term(z, t, (1e-6,)), lambda: sld_loss(z, t, y, EPOCH_ON, temperatures=(1e-6,))):
        with pytest.raises(ValueError, match=r"temperatures is 1e-06: temperatures must be positive numbers in"):
            call()


def test_first_call_under_inference_mode_then_training():
    z, t, y = make_batch(4, 5, seed=41, dtype=torch.float32)
    temperatures = (0.7, 3.3)
    with torch.inference_mode():
        sld_loss(z, t, y, EPOCH_ON, temperatures=temperatures)
        kd_term(z, t, (2.5, 1.5))
        mlkd_losses(z, z, t, t, y, base_temperature=4.0)
    student = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sld_loss(student, t, y, EPOCH_ON, temperatures=temperatures), student)
    assert torch.isfinite(grad).all()
    student = z.clone().requires_grad_(True)
    torch.autograd.grad(kd_term(student, t, (2.5, 1.5)).sum(), student)
    losses = mlkd_losses(student, student, t, t, y, base_temperature=4.0)
    torch.autograd.grad(sum(losses.values()), student)


@pytest.mark.parametrize("use_module", [False, True])
def test_float64_inputs_use_float64_temperatures(use_module):
    """Temperatures that float32 cannot hold exactly: float64 inputs still match the float64
    reference to 1e-10."""
    temperatures = (0.3, 1.1, 2.7)
    z, t, y = make_batch(6, 7, seed=42)
    student = z.clone().requires_grad_(True)
    if use_module:
        loss = SLDLoss(temperatures=temperatures, gamma=150)(student, t, y, EPOCH_ON)
    else:
        loss = sld_loss(student, t, y, EPOCH_ON, temperatures=temperatures, gamma=150)
    (grad,) = torch.autograd.grad(loss, student)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, EPOCH_ON, temperatures=temperatures)
    torch.testing.assert_close(loss.detach(), ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
