"""The SLD and MLKD losses check their input alike (slkd.losses.checks), take temperatures in
every documented form, keep a teacher logit of -inf finite as the released kl_div does, and
keep the old names of renamed arguments working for one release."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slkd.errors import LossInputError
from slkd.losses import SLDLoss, kd_term, mlkd_losses, sld_loss, sld_terms, swap_logits
from tests.test_losses_mlkd import make_inputs, reference
from tests.test_losses_sld import EPOCH_OFF, EPOCH_ON, GAMMA, make_batch, ref_swap_row


def _sld(z, t, y, **kwargs):
    return sld_loss(z, t, y, EPOCH_ON, **kwargs)


def _mlkd(z, t, y, **kwargs):
    return mlkd_losses(z, z, t, t, y, **kwargs)


LOSSES = {"sld": (_sld, "student_logits"), "mlkd": (_mlkd, "student_weak")}


def _message(call):
    with pytest.raises(LossInputError) as caught:
        call()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)
    return str(caught.value)


# --------------------------------------------------------------------------- #
# the same bad input fails alike
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("bad", ["long_logits", "float_labels", "bool_labels", "labels_out_of_range", "short_target"])
def test_sld_and_mlkd_refuse_bad_input_with_one_message(bad):
    z, t, y = make_batch(4, 5, seed=60, dtype=torch.float32)
    if bad == "long_logits":
        z = z.long()
    elif bad == "float_labels":
        y = y.double()
    elif bad == "bool_labels":
        y = y.bool()
    elif bad == "labels_out_of_range":
        y = torch.tensor([0, 1, 5, 2])
    else:
        y = y[:3]
    messages = {name: _message(lambda: call(z, t, y)).replace(arg, "<student>") for name, (call, arg) in LOSSES.items()}
    assert messages["sld"] == messages["mlkd"]
    expected = {
        "long_logits": "<student> must be a floating tensor (e.g. logits.float()), got torch.int64",
        "float_labels": "target must hold integer class labels (e.g. target.long()), got torch.float64",
        "bool_labels": "target must hold integer class labels (e.g. target.long()), got torch.bool",
        "labels_out_of_range": "labels must lie in [0, 4] for 5 classes, got values from 0 to 5",
        "short_target": "target must be 1-d with one label per row: <student> (4, 5), target (3,)",
    }
    assert messages["sld"] == expected[bad]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_sld_and_mlkd_take_any_integer_labels(dtype):
    z, t, y = make_batch(4, 5, seed=61)
    for name, (call, _) in LOSSES.items():
        expected = call(z, t, y)
        got = call(z, t, y.to(dtype))
        if name == "mlkd":
            for key in expected:
                assert torch.equal(got[key], expected[key]), key
        else:
            assert torch.equal(got, expected)


def test_sld_and_mlkd_refuse_inputs_on_two_devices():
    z, t, y = make_batch(4, 5, seed=62, dtype=torch.float32)
    far = t.to("meta")  # no data, so the check must come before any arithmetic
    for name, (call, arg) in LOSSES.items():
        teacher = "teacher_logits" if name == "sld" else "teacher_weak"
        assert _message(lambda: call(z, far, y)) == (
            f"{teacher} is on meta but {arg} is on cpu: move all inputs to one device (e.g. {teacher}.to({arg}.device))"
        )
        assert _message(lambda: call(z, t, y.to("meta"))).startswith(f"target is on meta but {arg} is on cpu")
    assert _message(lambda: sld_terms(z, t, y, torch.ones(2, device="meta"))).startswith("temperatures is on meta")
    assert _message(lambda: kd_term(z, far, 4.0)).startswith("teacher is on meta but student is on cpu")


# --------------------------------------------------------------------------- #
# temperatures: every documented form, one set of bounds
# --------------------------------------------------------------------------- #
FORMS = [
    (4.0, (4.0,)),
    (4, (4.0,)),
    (np.float32(2.5), (2.5,)),
    (np.array([1.0, 2.5], dtype=np.float32), (1.0, 2.5)),
    (np.array([1, 3]), (1.0, 3.0)),
    (np.array(2.0), (2.0,)),
    (torch.tensor([1.0, 2.5]), (1.0, 2.5)),
    (torch.tensor(3.0, dtype=torch.float64), (3.0,)),
    ([1, 2.5], (1.0, 2.5)),
    (range(1, 3), (1.0, 2.0)),
]


@pytest.mark.parametrize("given, values", FORMS, ids=lambda v: type(v).__name__)
def test_every_temperature_form_gives_the_values_it_holds(given, values):
    z, t, y = make_batch(4, 5, seed=63)
    assert torch.equal(sld_loss(z, t, y, EPOCH_ON, temperatures=given), sld_loss(z, t, y, EPOCH_ON, temperatures=values))
    assert torch.equal(SLDLoss(temperatures=given)(z, t, y, EPOCH_ON), SLDLoss(temperatures=values)(z, t, y, EPOCH_ON))
    assert torch.equal(kd_term(z, t, given), kd_term(z, t, values))
    if len(values) == 1:
        assert mlkd_losses(z, z, t, t, y, base_temperature=given)["loss_kd"] == mlkd_losses(z, z, t, t, y, base_temperature=values[0])["loss_kd"]


@pytest.mark.parametrize("given", ["4", b"4", {"T": 4}, None, object(), [1.0, "2"], [True], np.ones((2, 2)), torch.ones(2, 2), [[1.0]]])
def test_temperatures_in_another_form_are_refused_naming_the_forms(given):
    z, t, y = make_batch(4, 5, seed=64)
    forms = "a number, a sequence of numbers, or a 1-d numpy array or tensor of them"
    for call in (
        lambda: sld_loss(z, t, y, EPOCH_ON, temperatures=given),
        lambda: SLDLoss(temperatures=given),
        lambda: kd_term(z, t, given),
        lambda: mlkd_losses(z, z, t, t, y, base_temperature=given),
    ):
        message = _message(call)
        assert forms in message and "positive" not in message, message


def test_one_set_of_bounds_in_both_losses():
    z, t, y = make_batch(4, 5, seed=65)
    for good in (1e-4, 1e4):
        sld_loss(z, t, y, EPOCH_ON, temperatures=good)
        kd_term(z, t, good)
        mlkd_losses(z, z, t, t, y, base_temperature=good)
    for bad in (9e-5, 1.1e4, 0.0, -1.0, math.nan, math.inf):
        assert _message(lambda: sld_loss(z, t, y, EPOCH_ON, temperatures=bad)) == (
            f"temperatures is {bad!r}: temperatures must be positive numbers in [0.0001, 10000] "
            "(beyond, z / T or T^2 leaves float32's range)"
        )
        assert _message(lambda: kd_term(z, t, bad)) == _message(lambda: sld_loss(z, t, y, EPOCH_ON, temperatures=bad))
        assert _message(lambda: mlkd_losses(z, z, t, t, y, base_temperature=bad)).startswith(f"base_temperature is {bad!r}: temperatures must be positive")


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.to(torch.float16)])
def test_a_16_bit_cast_keeps_fractional_temperatures_exact(cast):
    temperatures = (0.3, 1.1, 2.7)
    module = cast(SLDLoss(temperatures=temperatures))
    assert module.temperatures.dtype == torch.float64 and module.temperatures.tolist() == list(temperatures)
    assert module.temperatures_float32.dtype == torch.float32
    assert module.temperatures_float32.tolist() == torch.tensor(temperatures, dtype=torch.float32).tolist()
    z, t, y = make_batch(6, 7, seed=66)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        expected = sld_loss(z.to(dtype), t.to(dtype), y, EPOCH_ON, temperatures=temperatures)
        assert torch.equal(module(z.to(dtype), t.to(dtype), y, EPOCH_ON), expected)
    assert cast(SLDLoss(temperatures=temperatures)).to("meta").temperatures.device.type == "meta"


# --------------------------------------------------------------------------- #
# a teacher logit of -inf: the released code's kl_div limit, 0 log 0 = 0
# --------------------------------------------------------------------------- #
def kl_div_reference(z, t, y, temperatures, pseudo):
    """The released SLD loss written with F.kl_div, row by row, float64; value and gradient."""
    z = z.detach().double().requires_grad_(True)
    total = 0.0
    for i in range(z.shape[0]):
        label = int(y[i])
        targets = [ref_swap_row(t[i].double(), label)]
        if pseudo:
            targets.append(ref_swap_row(z[i], label))
        for target in targets:
            for temperature in temperatures:
                log_q = F.log_softmax(z[i : i + 1] / temperature, dim=1)
                p = F.softmax(target.view(1, -1) / temperature, dim=1)
                total = total + temperature**2 * F.kl_div(log_q, p, reduction="none").sum()
    loss = total / z.shape[0]
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def teacher_with_minus_inf(seed):
    """A batch whose teacher has -inf at a non-top class, at the label (swapped to the top
    column) and at two classes of one row."""
    z, t, y = make_batch(5, 6, seed=seed)
    t[0, (int(y[0]) + 1) % 6] = -math.inf
    t[1, int(y[1])] = -math.inf
    t[2, :2] = -math.inf
    return z, t, y


@pytest.mark.parametrize("epoch", [EPOCH_OFF, EPOCH_ON])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_minus_inf_teacher_logit_matches_kl_div(epoch, dtype):
    z, t, y = teacher_with_minus_inf(seed=67)
    temperatures = (1.0, 4.0)
    z_in = z.to(dtype).requires_grad_(True)
    loss = sld_loss(z_in, t.to(dtype), y, epoch, temperatures=temperatures, gamma=GAMMA)
    (grad,) = torch.autograd.grad(loss, z_in)
    ref_value, ref_grad = kl_div_reference(z, t, y, temperatures, pseudo=epoch > GAMMA)
    assert torch.isfinite(ref_value)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref_value, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


def test_minus_inf_teacher_logit_in_mlkd_matches_the_reference():
    sw, ss, tw, ts, y = make_inputs(6, 5, seed=68)
    tw[0, 1] = tw[3, 0] = ts[2, 4] = -math.inf
    got = mlkd_losses(sw, ss, tw, ts, y)
    want = reference(sw, ss, tw, ts, y)
    for key in got:
        assert torch.isfinite(got[key]), key
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(sum(got.values()), (sw, ss))
    want_grads = torch.autograd.grad(sum(want.values()), (sw, ss))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- #
# renamed, still working for one release
# --------------------------------------------------------------------------- #
def test_old_names_warn_and_give_the_same_values():
    z, t, y = make_batch(5, 6, seed=69)
    temperatures = torch.tensor([1.0, 4.0], dtype=torch.float64)
    new = sld_terms(z, t, y, temperatures, student_swap=True)
    with pytest.warns(DeprecationWarning, match=r"sld_terms\(pseudo_teacher=...\) is renamed sld_terms\(student_swap=...\)"):
        old = sld_terms(z, t, y, temperatures, pseudo_teacher=True)
    assert torch.equal(old.student_swap_loss, new.student_swap_loss) and new.student_swap_loss.abs().sum() > 0
    with pytest.warns(DeprecationWarning, match="SLDTerms.teacher_swap is renamed SLDTerms.teacher_swap_loss"):
        assert old.teacher_swap is old.teacher_swap_loss
    with pytest.warns(DeprecationWarning, match="SLDTerms.student_swap is renamed SLDTerms.student_swap_loss"):
        assert old.student_swap is old.student_swap_loss
    module = SLDLoss(gamma=GAMMA)
    with pytest.warns(DeprecationWarning, match="SLDLoss.pseudo_teacher_on is renamed SLDLoss.student_swap_on"):
        assert module.pseudo_teacher_on(EPOCH_ON) and not module.pseudo_teacher_on(EPOCH_OFF)
    with pytest.raises(TypeError, match="unexpected keyword argument 'pseudo_teachr'"):
        sld_terms(z, t, y, temperatures, pseudo_teachr=True)


def test_public_api_is_exported():
    import slkd.losses
    from slkd.losses import mlkd, sld

    for module in (slkd.losses, sld, mlkd):
        assert module.__all__ and all(hasattr(module, name) for name in module.__all__)
    assert set(sld.__all__) <= set(slkd.losses.__all__)
    assert {"mlkd_losses", "kd_term"} <= set(slkd.losses.__all__)
    assert slkd.losses.swap_logits is swap_logits
