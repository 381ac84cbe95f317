"""Tests for the fused Triton SLD loss (slkd.losses.sld_fused).

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
conftest.py before the module is imported); on a GPU they run compiled. Values and
gradients are checked against the literal float64 oracle of ``test_losses_sld.py``, which
shares no code with slkd, and against the eager loss.
"""

import os
import subprocess
import sys

import pytest
import torch

from slkd.losses.sld import SLDLoss, sld_loss, sld_terms
from tests.test_losses_sld import EPOCH_OFF, EPOCH_ON, GAMMA, TEMPERATURE_SETS, make_batch, ref_value_and_grad, tied_batch

fused = pytest.importorskip("slkd.losses.sld_fused")
if fused.fused_available():
    pytest.skip(fused.fused_available(), allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not fused.INTERPRETED:
    pytest.skip("no GPU and TRITON_INTERPRET is not set: the fused kernels cannot run here", allow_module_level=True)


def on_device(*tensors):
    return [tensor.to(DEVICE) for tensor in tensors]


def run(z, t, y, epoch, fused_loss, **kwargs):
    """Loss value and gradient w.r.t. the student logits, on ``DEVICE``."""
    z, t, y = on_device(z, t, y)
    z = z.detach().clone().requires_grad_(True)
    loss = sld_loss(z, t, y, epoch, gamma=GAMMA, fused=fused_loss, **kwargs)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach().cpu(), grad.cpu()


def temperature_tensor(temperatures, dtype):
    return torch.tensor(temperatures, dtype=dtype, device=DEVICE)


# --------------------------------------------------------------------------- #
# against the float64 reference
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(1, 2), (2, 2), (7, 5), (64, 100), (6, 1000)])
@pytest.mark.parametrize("temperatures", TEMPERATURE_SETS)
@pytest.mark.parametrize("epoch, detach", [(EPOCH_OFF, False), (EPOCH_ON, False), (EPOCH_ON, True)])
def test_fused_matches_reference_float64(shape, temperatures, epoch, detach):
    z, t, y = make_batch(*shape, seed=sum(shape) + len(temperatures))
    value, grad = run(z, t, y, epoch, True, temperatures=temperatures, detach_pseudo_teacher=detach)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, epoch, temperatures=temperatures, detach=detach)
    assert value.dtype == torch.float64 and grad.dtype == torch.float64
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (64, 100), (6, 1000)])
@pytest.mark.parametrize("epoch, detach", [(EPOCH_OFF, False), (EPOCH_ON, False), (EPOCH_ON, True)])
def test_fused_float32_matches_eager_and_reference(shape, epoch, detach):
    z, t, y = make_batch(*shape, seed=7, dtype=torch.float32)
    value, grad = run(z, t, y, epoch, True, detach_pseudo_teacher=detach)
    eager_value, eager_grad = run(z, t, y, epoch, False, detach_pseudo_teacher=detach)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, epoch, temperatures=(1, 2, 3, 4, 5, 6), detach=detach)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(value, eager_value, rtol=2e-6, atol=1e-6)
    # compiled for a GPU, float32 exp and division use the fast approximate instructions,
    # a few ulp from the interpreter's (and from each other): the reference's tolerance then
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-6 if DEVICE == "cuda" else 1e-7)
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("detach", [False, True])
def test_fused_ties_take_the_first_index(epoch, detach):
    z, t, y, temperatures = tied_batch()
    value, grad = run(z, t, y, epoch, True, temperatures=temperatures, detach_pseudo_teacher=detach)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, epoch, temperatures=temperatures, detach=detach)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    z, t, y = on_device(z, t, y)
    terms = SLDLoss(temperatures=temperatures, fused=True).to(DEVICE).terms(z, t, y, epoch)
    assert terms.teacher_swap_rate.item() == 1.0
    assert terms.student_swap_rate.item() == 0.75


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_fused_teacher_swap_false(epoch):
    z, t, y = make_batch(9, 7, seed=21)
    value, grad = run(z, t, y, epoch, True, teacher_swap=False)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, epoch, temperatures=(1, 2, 3, 4, 5, 6), teacher_swap=False)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_fused_gradcheck(epoch):
    """Finite differences against the backward kernel (the detached pseudo-teacher is not a
    derivative of the forward, so it is checked against the reference above instead)."""
    z, t, y = on_device(*make_batch(3, 5, seed=22))
    z.requires_grad_(True)
    temperatures = temperature_tensor((1.0, 3.0), torch.float64)

    def per_row(student):
        terms = sld_terms(student, t, y, temperatures, student_swap=epoch > GAMMA, fused=True)
        return terms.teacher_swap_loss, terms.student_swap_loss

    assert torch.autograd.gradcheck(per_row, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- #
# per-row terms, rates, one term alone
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_terms_and_rates_equal_eager(dtype):
    z, t, y = on_device(*make_batch(33, 10, seed=23, dtype=dtype))
    temperatures = temperature_tensor((1.0, 2.0, 4.0), dtype)
    eager = sld_terms(z, t, y, temperatures)
    fast = sld_terms(z, t, y, temperatures, fused=True)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(fast.teacher_swap_loss, eager.teacher_swap_loss, **tolerance)
    torch.testing.assert_close(fast.student_swap_loss, eager.student_swap_loss, **tolerance)
    assert fast.teacher_swap_rate.item() == eager.teacher_swap_rate.item()
    assert fast.student_swap_rate.item() == eager.student_swap_rate.item()
    assert fast.teacher_swap_loss.dtype == dtype and fast.teacher_swap_rate.dtype == dtype


def test_fused_gradient_of_one_term_alone():
    z, t, y = on_device(*make_batch(12, 8, seed=24))
    temperatures = temperature_tensor((1.0, 2.0), torch.float64)
    for pick in ("teacher_swap_loss", "student_swap_loss"):
        grads = []
        for use_fused in (False, True):
            student = z.clone().requires_grad_(True)
            terms = sld_terms(student, t, y, temperatures, fused=use_fused)
            weights = torch.linspace(0.5, 2.0, z.shape[0], dtype=z.dtype, device=DEVICE)
            (grad,) = torch.autograd.grad((getattr(terms, pick) * weights).sum(), student)
            grads.append(grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_fused_without_gradient():
    z, t, y = on_device(*make_batch(5, 6, seed=25))
    with torch.no_grad():
        value = sld_loss(z, t, y, EPOCH_ON, gamma=GAMMA, fused=True)
    ref_value, _ = ref_value_and_grad(z.cpu(), t.cpu(), y.cpu(), EPOCH_ON, temperatures=(1, 2, 3, 4, 5, 6))
    torch.testing.assert_close(value.cpu(), ref_value, rtol=1e-10, atol=1e-12)


def test_fused_backward_reached_through_the_teacher_only():
    """A teacher that requires grad and a student that does not: no gradient, no error (as
    the eager loss)."""
    z, t, y = on_device(*make_batch(4, 5, seed=32, dtype=torch.float32))
    t.requires_grad_(True)
    for use_fused in (False, True):
        loss = sld_loss(z, t, y, EPOCH_ON, gamma=GAMMA, fused=use_fused)
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, t, allow_unused=True)
        assert grad is None


def test_fused_no_gradient_to_teacher():
    z, t, y = on_device(*make_batch(6, 5, seed=26, dtype=torch.float32))
    z.requires_grad_(True)
    t.requires_grad_(True)
    loss = sld_loss(z, t, y, EPOCH_ON, gamma=GAMMA, fused=True)
    grad_z, grad_t = torch.autograd.grad(loss, (z, t), allow_unused=True)
    assert grad_z is not None and grad_t is None


# --------------------------------------------------------------------------- #
# dtypes, layouts, labels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_inputs(dtype):
    z, t, y = make_batch(16, 10, seed=27, dtype=dtype)
    value, grad = run(z, t, y, EPOCH_ON, True)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    eager_value, eager_grad = run(z, t, y, EPOCH_ON, False)
    torch.testing.assert_close(value, eager_value, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad.float(), eager_grad.float(), rtol=1e-2, atol=1e-3)


def test_fused_under_autocast():
    z, t, y = on_device(*make_batch(16, 10, seed=28, dtype=torch.bfloat16))
    z.requires_grad_(True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = sld_loss(z, t, y, EPOCH_ON, gamma=GAMMA, fused=True)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.dtype == torch.bfloat16
    expected = sld_loss(z.detach().float(), t.float(), y, EPOCH_ON, gamma=GAMMA)
    torch.testing.assert_close(loss.detach(), expected, rtol=2e-6, atol=1e-6)


def test_fused_non_contiguous_inputs_and_int32_labels():
    z, t, y = make_batch(8, 6, seed=29)
    wide_z = torch.zeros(8, 12, dtype=torch.float64)
    wide_z[:, ::2] = z
    transposed_t = t.t().contiguous().t()  # column-major
    value, grad = run(wide_z[:, ::2], transposed_t, y.int(), EPOCH_ON, True)
    ref_value, ref_grad = ref_value_and_grad(z, t, y, EPOCH_ON, temperatures=(1, 2, 3, 4, 5, 6))
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_fused_rows_with_labels_out_of_range_are_nan():
    """On a GPU the labels are not checked on the host (that would be a sync): such a row
    gives NaN terms, which slkd's trainer reports as a non-finite loss."""
    z, t, y = on_device(*make_batch(4, 5, seed=30))
    y = y.clone()
    y[1], y[2] = 5, -1
    temperatures = temperature_tensor((1.0, 2.0), torch.float64)
    terms, _ = fused.FusedSwappedKL.apply(z, t, y, temperatures, True, True, False)
    assert torch.isnan(terms[:, 1:3]).all()
    assert torch.isfinite(terms[:, [0, 3]]).all()


# --------------------------------------------------------------------------- #
# module, errors
# --------------------------------------------------------------------------- #
def test_module_fused_flag():
    module = SLDLoss(fused=True).to(DEVICE)
    assert "fused=True" in repr(module) and "fused=False" in repr(SLDLoss())
    z, t, y = on_device(*make_batch(10, 7, seed=31))
    torch.testing.assert_close(module(z, t, y, EPOCH_ON), SLDLoss().to(DEVICE)(z, t, y, EPOCH_ON), rtol=1e-10, atol=1e-12)


def test_error_too_many_classes():
    z = torch.zeros(2, fused.MAX_CLASSES + 1, device=DEVICE)
    with pytest.raises(ValueError, match=f"at most {fused.MAX_CLASSES} classes.*fused=False"):
        sld_loss(z, z, torch.zeros(2, dtype=torch.long, device=DEVICE), EPOCH_ON, fused=True)


def test_error_cpu_tensors_without_the_interpreter():
    code = (
        "import torch\n"
        "from slkd.losses.sld import sld_loss\n"
        "z = torch.zeros(2, 3)\n"
        "try:\n"
        "    sld_loss(z, z, torch.zeros(2, dtype=torch.long), 1, fused=True)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "runs on CUDA tensors, got cpu" in result.stdout
    assert "fused=False, SLKD.FUSED_LOSS False" in result.stdout


def test_fused_kernels_compile_for_nvidia_gpus(tmp_path):
    """The kernels' specialisations (dtypes, label types, flags, 100 to 4096 classes; listed
    in tests/helpers/compile_fused.py) compile to a cubin for sm_80 and sm_90 with Triton's
    own ptxas, spilling at most a few bytes of registers per thread: a GPU-free check that the
    kernels are valid compiled Triton, not only in the interpreter."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend to compile for")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.compile_fused"], capture_output=True, text=True, env=env, cwd=root, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled 288 kernel variants to cubin for sm_80, sm_90, spills within bounds" in result.stdout


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
def test_fused_minus_inf_teacher_logit_matches_kl_div(epoch):
    """A teacher logit of -inf adds 0 (0 log 0 = 0, as the released kl_div): finite value
    and gradient, equal to the kl_div reference and to the eager loss."""
    from tests.test_losses_checks import kl_div_reference, teacher_with_minus_inf

    z, t, y = teacher_with_minus_inf(seed=70)
    temperatures = (1.0, 4.0)
    value, grad = run(z, t, y, epoch, True, temperatures=temperatures)
    ref_value, ref_grad = kl_div_reference(z, t, y, temperatures, pseudo=epoch > GAMMA)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
