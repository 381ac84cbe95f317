"""Tests for slkd.losses.mlkd (CPU, no mdistiller).

The reference below is written literally from the description of the released
MLKD ``KD_ours`` loss: float64, one temperature at a time, the median taken with
``numpy.percentile`` on the host, and every masked term written as
``(scalar * mask).mean()``.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slkd.losses import mlkd
from slkd.losses.mlkd import (
    batch_consistency,
    class_consistency,
    kd_term,
    median_linear,
    mlkd_losses,
    percentile_mask,
)

KEYS = ("loss_ce", "loss_kd", "loss_cc", "loss_bc")


# --------------------------------------------------------------------------- #
# independent reference (float64, one temperature at a time)
# --------------------------------------------------------------------------- #
def ref_kd(s, t, T):
    log_q = torch.log_softmax(s / T, dim=1)
    p = torch.softmax(t / T, dim=1)
    kl_rows = (torch.xlogy(p, p) - p * log_q).sum(dim=1)
    return kl_rows.mean() * T * T


def ref_cc(s, t, T):
    num_classes = s.shape[1]
    ps = torch.softmax(s / T, dim=1)
    pt = torch.softmax(t / T, dim=1)
    return ((pt.t() @ pt - ps.t() @ ps) ** 2).sum() / num_classes


def ref_bc(s, t, T):
    batch_size = s.shape[0]
    ps = torch.softmax(s / T, dim=1)
    pt = torch.softmax(t / T, dim=1)
    return ((pt @ pt.t() - ps @ ps.t()) ** 2).sum() / batch_size


def ref_masks(t_weak):
    """Sample and class masks with numpy's percentile, as bool tensors."""
    p = torch.softmax(t_weak.detach().double(), dim=1)
    conf = p.max(dim=1).values.numpy()
    class_conf = p.sum(dim=0).numpy()
    sample_mask = conf <= np.percentile(conf, 50)
    class_mask = class_conf <= np.percentile(class_conf, 50)
    return torch.from_numpy(sample_mask), torch.from_numpy(class_mask)


def reference(sw, ss, tw, ts, y, T=4.0, ce_w=0.1, kd_w=0.9):
    sw, ss = sw.double(), ss.double()
    tw, ts = tw.detach().double(), ts.detach().double()
    mask, class_mask = ref_masks(tw)
    temps = [T, 3.0, 5.0, 2.0, 6.0]

    loss_ce = ce_w * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))

    weak = 0.0
    for temp in temps:
        weak = weak + kd_w * (ref_kd(sw, tw, temp) * mask).mean()
    strong = 0.0
    for temp in (T, 3.0, 5.0):
        strong = strong + kd_w * ref_kd(ss, ts, temp)
    for temp in (2.0, 6.0):  # weak-view terms inside the "strong" block
        strong = strong + kd_w * ref_kd(sw, tw, temp)

    cc = 0.0
    bc = 0.0
    for temp in temps:
        cc = cc + kd_w * (ref_cc(sw, tw, temp) * class_mask).mean()
        bc = bc + kd_w * (ref_bc(sw, tw, temp) * mask).mean()
    return {"loss_ce": loss_ce, "loss_kd": weak + strong, "loss_cc": cc, "loss_bc": bc}


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #
def make_inputs(batch, classes, seed=0, dtype=torch.float64, tie_rows=0, scale=3.0):
    """Random logits; the first ``tie_rows`` teacher weak rows are exact copies of row 0."""
    g = torch.Generator().manual_seed(seed)
    sw = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2.0
    ss = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2.0
    tw = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    ts = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    if tie_rows:
        tw[1 : tie_rows + 1] = tw[0]
    y = torch.randint(0, classes, (batch,), generator=g)
    sw, ss, tw, ts = (x.to(dtype) for x in (sw, ss, tw, ts))
    return sw.requires_grad_(), ss.requires_grad_(), tw, ts, y


CASES = [
    (7, 10, 0),  # odd batch
    (8, 10, 0),  # even batch
    (9, 5, 3),  # odd batch, ties in the teacher confidences
    (8, 6, 4),  # even batch, ties straddling the median
    (6, 100, 1),  # even batch, one tie, CIFAR-100-like classes
    (1, 2, 0),  # one sample, two classes
    (2, 2, 0),
]


@pytest.mark.parametrize("batch,classes,ties", CASES)
@pytest.mark.parametrize(
    "dtype,rtol,atol",
    [(torch.float64, 1e-10, 1e-12), (torch.float32, 2e-5, 2e-6)],
    ids=["float64", "float32"],
)
def test_values_and_gradients_match_reference(batch, classes, ties, dtype, rtol, atol):
    sw, ss, tw, ts, y = make_inputs(batch, classes, seed=batch * 31 + classes, dtype=dtype,
                                    tie_rows=ties)
    ours = mlkd_losses(sw, ss, tw, ts, y)
    ref = reference(sw, ss, tw, ts, y)
    for k in KEYS:
        assert ours[k].dtype == dtype
        assert ours[k].shape == ()
        torch.testing.assert_close(ours[k].double(), ref[k].double(), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}: {m}")
        g_ours = torch.autograd.grad(ours[k], (sw, ss), retain_graph=True, allow_unused=True)
        g_ref = torch.autograd.grad(ref[k], (sw, ss), retain_graph=True, allow_unused=True)
        for view, a, b in zip(("weak", "strong"), g_ours, g_ref):
            if b is None:
                assert a is None or torch.count_nonzero(a) == 0, (k, view)
                continue
            assert a is not None, (k, view)
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol,
                                       msg=lambda m, k=k, v=view: f"d{k}/d{v}: {m}")


@pytest.mark.parametrize("base_temperature", [1.0, 4.0, 8.0])
@pytest.mark.parametrize("ce_w,kd_w", [(0.1, 0.9), (0.5, 0.5), (1.0, 2.5)])
def test_temperature_and_weights_are_honoured(base_temperature, ce_w, kd_w):
    sw, ss, tw, ts, y = make_inputs(8, 7, seed=3)
    ours = mlkd_losses(sw, ss, tw, ts, y, base_temperature=base_temperature,
                       ce_weight=ce_w, kd_weight=kd_w)
    ref = reference(sw, ss, tw, ts, y, T=base_temperature, ce_w=ce_w, kd_w=kd_w)
    for k in KEYS:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-10, atol=1e-12)


def test_custom_extra_temperatures_follow_released_roles():
    sw, ss, tw, ts, y = make_inputs(6, 5, seed=11)
    extras = (1.5, 7.0, 2.5, 0.5)
    out = mlkd_losses(sw, ss, tw, ts, y, extra_temperatures=extras, kd_weight=1.0)
    mask, _ = ref_masks(tw)
    f = mask.double().mean()
    S = (4.0,) + extras
    weak = f * sum(ref_kd(sw, tw, T) for T in S)
    strong = sum(ref_kd(ss, ts, T) for T in S[:3]) + sum(ref_kd(sw, tw, T) for T in S[3:])
    torch.testing.assert_close(out["loss_kd"], weak + strong, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- #
# median / masks
# --------------------------------------------------------------------------- #
def _median_inputs():
    rng = np.random.RandomState(0)
    arrays = []
    for n in range(1, 22):
        arrays.append(rng.rand(n))  # distinct values
        arrays.append(rng.randint(0, 3, size=n).astype(np.float64))  # many ties
    arrays.append(np.full(6, 0.25))  # all equal
    arrays.append(np.array([0.1, 0.9]))
    # two adjacent float32 numbers: the midpoint is not representable in float32
    a = np.float32(0.3)
    arrays.append(np.array([np.nextafter(a, np.float32(1.0)), a, a - 1, a + 1]))
    arrays.append(np.array([1e-30, 3e-30, 7.0, -2.0, 5.5, 5.5]))
    return arrays


@pytest.mark.parametrize("np_dtype,torch_dtype", [(np.float32, torch.float32),
                                                  (np.float64, torch.float64)])
def test_median_linear_is_bitwise_numpy_percentile_50(np_dtype, torch_dtype):
    for arr in _median_inputs():
        arr = arr.astype(np_dtype)
        expected = np.percentile(arr, 50)
        got = median_linear(torch.from_numpy(arr).to(torch_dtype))
        assert got.dtype == torch_dtype
        assert got.shape == ()
        assert got.item() == float(expected), (arr, got.item(), expected)
        mask = percentile_mask(torch.from_numpy(arr))
        assert mask.dtype == torch.bool
        assert np.array_equal(mask.numpy(), arr <= expected)


def test_median_linear_does_not_reorder_input_and_checks_arguments():
    x = torch.tensor([3.0, 1.0, 2.0, 0.0])
    before = x.clone()
    assert median_linear(x).item() == 1.5
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="1-D"):
        median_linear(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="non-empty"):
        median_linear(torch.zeros(0))
    with pytest.raises(ValueError, match="floating-point"):
        median_linear(torch.arange(4))


def test_mask_fraction_odd_even_and_ties():
    # teacher weak rows with prescribed max-confidence ordering
    def frac_of(t_weak):
        p = torch.softmax(t_weak, dim=1)
        return percentile_mask(p.max(dim=1).values).double().mean().item()

    g = torch.Generator().manual_seed(5)
    distinct8 = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    distinct7 = distinct8[:7]
    assert frac_of(distinct8) == 0.5
    assert frac_of(distinct7) == 4 / 7  # the median sample itself is kept ("<=")
    tied = distinct8.clone()
    tied[:] = distinct8[0]
    assert frac_of(tied) == 1.0  # all equal -> every sample is "<= median"
    assert frac_of(distinct8[:1]) == 1.0  # batch of one


# --------------------------------------------------------------------------- #
# the documented quirks
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("batch,ties", [(8, 0), (7, 0), (8, 5)])
def test_mask_only_scales_weak_block_by_fraction_of_ones(batch, ties):
    sw, ss, tw, ts, y = make_inputs(batch, 6, seed=17, tie_rows=ties)
    kd_w = 0.9
    out = mlkd_losses(sw, ss, tw, ts, y, kd_weight=kd_w)
    S = (4.0, 3.0, 5.0, 2.0, 6.0)
    unmasked = kd_w * kd_term(sw, tw, S).sum()
    strong = kd_w * (kd_term(ss, ts, S[:3]).sum() + kd_term(sw, tw, S[3:]).sum())
    mask, class_mask = ref_masks(tw)
    frac = mask.double().mean()
    assert 0.0 < frac.item() < 1.0 or ties
    weak_block = out["loss_kd"] - strong
    torch.testing.assert_close(weak_block, frac * unmasked, rtol=1e-12, atol=1e-12)
    # batch consistency is scaled by the sample fraction, class consistency by the class one
    torch.testing.assert_close(out["loss_bc"], kd_w * frac * batch_consistency(sw, tw, S).sum(),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        out["loss_cc"], kd_w * class_mask.double().mean() * class_consistency(sw, tw, S).sum(),
        rtol=1e-12, atol=1e-14)


def test_masked_out_samples_still_receive_gradient():
    sw, ss, tw, ts, y = make_inputs(8, 6, seed=2)
    mask, _ = ref_masks(tw)
    assert (~mask).any()
    out = mlkd_losses(sw, ss, tw, ts, y)
    (g,) = torch.autograd.grad(out["loss_bc"], (sw,))
    assert (g[~mask].abs().sum(dim=1) > 0).all()


def test_strong_view_has_no_consistency_terms_and_teacher_gets_no_gradient():
    sw, ss, tw, ts, y = make_inputs(6, 5, seed=8)
    tw.requires_grad_()
    ts.requires_grad_()
    out = mlkd_losses(sw, ss, tw, ts, y)
    g_ss = torch.autograd.grad(out["loss_cc"] + out["loss_bc"], (ss,), allow_unused=True,
                               retain_graph=True)[0]
    assert g_ss is None
    total = sum(out[k] for k in KEYS)
    assert torch.autograd.grad(total, (tw, ts), allow_unused=True) == (None, None)
    # the strong-view teacher never enters the masks or consistency terms
    out2 = mlkd_losses(sw, ss, tw, ts * 3 + 1, y)
    for k in ("loss_ce", "loss_cc", "loss_bc"):
        torch.testing.assert_close(out2[k], out[k], rtol=0, atol=0)


def test_weak_view_two_and_six_weigh_one_plus_fraction():
    sw, ss, tw, ts, y = make_inputs(8, 6, seed=4)
    frac = ref_masks(tw)[0].double().mean()
    out = mlkd_losses(sw, ss, tw, ts, y, kd_weight=1.0)
    S = (4.0, 3.0, 5.0, 2.0, 6.0)
    kd_w = kd_term(sw, tw, S)
    kd_s = kd_term(ss, ts, S[:3])
    expected = frac * kd_w[:3].sum() + (1 + frac) * kd_w[3:].sum() + kd_s.sum()
    torch.testing.assert_close(out["loss_kd"], expected, rtol=1e-12, atol=1e-12)


def test_helpers_match_reference_per_temperature():
    sw, ss, tw, ts, y = make_inputs(5, 7, seed=21)
    S = (4.0, 3.0, 5.0, 2.0, 6.0)
    kd = kd_term(sw, tw, S)
    cc = class_consistency(sw, tw, S)
    bc = batch_consistency(sw, tw, S)
    assert kd.shape == cc.shape == bc.shape == (5,)
    for i, T in enumerate(S):
        torch.testing.assert_close(kd[i], ref_kd(sw, tw, T), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(cc[i], ref_cc(sw, tw, T), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(bc[i], ref_bc(sw, tw, T), rtol=1e-12, atol=1e-14)
    # a single temperature may be given as a number
    torch.testing.assert_close(kd_term(sw, tw, 4.0), ref_kd(sw, tw, 4.0).reshape(1))
    with pytest.raises(ValueError, match="positive"):
        kd_term(sw, tw, (4.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        class_consistency(sw, tw[:3], S)


# --------------------------------------------------------------------------- #
# gradcheck, dtypes, degenerate shapes
# --------------------------------------------------------------------------- #
def test_gradcheck_float64_tiny_batch():
    sw, ss, tw, ts, y = make_inputs(3, 4, seed=9)

    def fn(a, b):
        out = mlkd_losses(a, b, tw, ts, y)
        return tuple(out[k] for k in KEYS)

    assert torch.autograd.gradcheck(fn, (sw, ss), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32_losses(half):
    sw, ss, tw, ts, y = make_inputs(16, 10, seed=12, dtype=torch.float32)
    low = [x.detach().to(half).requires_grad_() for x in (sw, ss)]
    low_t = [x.to(half) for x in (tw, ts)]
    out = mlkd_losses(*low, *low_t, y)
    # float32 computation from the very same (low-precision representable) values
    up = [x.detach().float().requires_grad_() for x in low]
    out32 = mlkd_losses(*up, *(x.float() for x in low_t), y)
    # float32 computation from the original float32 values
    out_orig = mlkd_losses(sw, ss, tw, ts, y)
    for k in KEYS:
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k], out32[k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out[k], out_orig[k].detach(), rtol=3e-2, atol=1e-3)
    total = sum(out[k] for k in KEYS)
    g_low = torch.autograd.grad(total, low)
    g_up = torch.autograd.grad(sum(out32[k] for k in KEYS), up)
    for a, b in zip(g_low, g_up):
        assert a.dtype == half
        torch.testing.assert_close(a.float(), b.to(half).float(), rtol=1e-2, atol=1e-3)


def test_autocast_region_keeps_float32_arithmetic():
    sw, ss, tw, ts, y = make_inputs(12, 9, seed=13, dtype=torch.float32)
    plain = mlkd_losses(sw, ss, tw, ts, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mlkd_losses(sw, ss, tw, ts, y)
    for k in KEYS:
        assert inside[k].dtype == torch.float32
        torch.testing.assert_close(inside[k], plain[k], rtol=0, atol=0)


@pytest.mark.parametrize("batch,classes", [(1, 2), (2, 2), (1, 1), (3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_shapes_are_finite(batch, classes, dtype):
    sw, ss, tw, ts, y = make_inputs(batch, classes, seed=1, dtype=dtype)
    out = mlkd_losses(sw, ss, tw, ts, y)
    total = sum(out[k] for k in KEYS)
    assert all(torch.isfinite(out[k]) for k in KEYS)
    for g in torch.autograd.grad(total, (sw, ss)):
        assert torch.isfinite(g).all()
    ref = reference(sw, ss, tw, ts, y)
    for k in KEYS:
        torch.testing.assert_close(out[k].double(), ref[k], rtol=2e-5, atol=2e-6)


def test_extreme_logits_stay_finite_in_float32():
    sw, ss, tw, ts, y = make_inputs(6, 8, seed=6, dtype=torch.float32, scale=1e4)
    out = mlkd_losses(sw, ss, tw, ts, y)
    total = sum(out[k] for k in KEYS)
    assert torch.isfinite(total)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(total, (sw, ss)))


def test_identical_student_and_teacher_give_zero_distillation():
    _, _, tw, ts, y = make_inputs(5, 4, seed=7)
    out = mlkd_losses(tw.clone().requires_grad_(), ts.clone().requires_grad_(), tw, ts, y)
    for k in ("loss_kd", "loss_cc", "loss_bc"):
        assert abs(out[k].item()) < 1e-12


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def _good():
    sw, ss, tw, ts, y = make_inputs(4, 3, seed=0)
    return [sw, ss, tw, ts, y]


@pytest.mark.parametrize(
    "index,bad,match",
    [
        (0, torch.zeros(4), "student_weak must be 2-d"),
        (2, torch.zeros(4, 3, 1), "teacher_weak must be 2-d"),
        (1, torch.zeros(4, 5, dtype=torch.float64), "student_strong has shape"),
        (3, torch.zeros(5, 3, dtype=torch.float64), "teacher_strong has shape"),
        (0, torch.zeros(4, 3, dtype=torch.long), "floating tensor"),
        (4, torch.zeros(4, 1, dtype=torch.long), "target must be 1-d"),
        (4, torch.zeros(4), "integer class labels"),
        (4, torch.tensor([0, 1, 2, 3]), r"labels must lie in \[0, 2\]"),
        (4, torch.zeros(3, dtype=torch.long), r"one label per row: student_weak \(4, 3\), target \(3,\)"),
        (0, [[0.0]], "must be a torch.Tensor"),
    ],
)
def test_input_validation(index, bad, match):
    args = _good()
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        mlkd_losses(*args)


def test_empty_batch_is_rejected():
    z = torch.zeros(0, 3)
    with pytest.raises(ValueError, match="at least one row and one class"):
        mlkd_losses(z, z, z, z, torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "4", True])
def test_base_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match="base_temperature"):
        mlkd_losses(*_good(), base_temperature=bad)


def test_extra_temperatures_checked():
    with pytest.raises(ValueError, match=r"extra_temperatures\[2\].*positive"):
        mlkd_losses(*_good(), extra_temperatures=(3.0, 5.0, -2.0, 6.0))
    with pytest.raises(ValueError, match="exactly four"):
        mlkd_losses(*_good(), extra_temperatures=(3.0, 5.0, 2.0))
    with pytest.raises(ValueError, match="exactly four"):
        mlkd_losses(*_good(), extra_temperatures=3.0)


def test_weights_must_be_finite_numbers():
    with pytest.raises(ValueError, match="kd_weight"):
        mlkd_losses(*_good(), kd_weight=math.nan)
    with pytest.raises(ValueError, match="ce_weight"):
        mlkd_losses(*_good(), ce_weight="0.1")


def test_module_has_no_mdistiller_or_numpy_dependency():
    import inspect

    src = inspect.getsource(mlkd)
    assert "import numpy" not in src
    assert "mdistiller." not in src.replace("mdistiller/distillers", "")
    assert ".cpu()" not in src.replace("``.cpu()``", "").replace("``.cpu().numpy()``", "")


# --------------------------------------------------------------------------- #
# accelerator (skipped without CUDA)
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
def test_cuda_matches_cpu_without_host_sync():
    sw, ss, tw, ts, y = make_inputs(64, 100, seed=30, dtype=torch.float32, tie_rows=3)
    cpu = mlkd_losses(sw, ss, tw, ts, y)
    dev = [x.detach().cuda().requires_grad_() for x in (sw, ss)]
    rest = [x.cuda() for x in (tw, ts, y)]
    mlkd_losses(*dev, *rest)  # warm-up (lazy CUDA init may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = mlkd_losses(*dev, *rest)
        total = sum(out[k] for k in KEYS)
        grads = torch.autograd.grad(total, dev)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for k in KEYS:
        torch.testing.assert_close(out[k].cpu(), cpu[k].detach(), rtol=1e-5, atol=1e-6)
    g_cpu = torch.autograd.grad(sum(cpu[k] for k in KEYS), (sw, ss))
    for a, b in zip(grads, g_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-6)
