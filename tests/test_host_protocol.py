"""PROTOCOL.VIEWS and LOGITS for KD, DKD (the host's own losses), MLKD and SLD inside the
real host: resolution, errors, and each method's losses against float64 references on fixed
networks and inputs (tests/helpers/logit_references.py), gradients included."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import logit_references as ref
from tests.helpers.tiny import TinyNet, set_keys

pytestmark = pytest.mark.host

CLASSES = 10


def _cfg(fresh_cfg, method, **settings):
    """``fresh_cfg`` for ``method`` with slkd's trainer and ``settings`` as ``"NODE.KEY": value``."""
    fresh_cfg.DISTILLER.TYPE = method
    fresh_cfg.SOLVER.TRAINER = "slkd"
    return set_keys(fresh_cfg, settings)


def _build(host, cfg, seed=0):
    torch.manual_seed(seed)
    student, teacher = TinyNet(CLASSES).double(), TinyNet(CLASSES).double()
    distiller = host.distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg)
    distiller.train()
    return distiller


def _batch(batch=6, seed=3):
    generator = torch.Generator().manual_seed(seed)
    weak = torch.randn(batch, 3, 8, 8, generator=generator, dtype=torch.float64)
    strong = torch.randn(batch, 3, 8, 8, generator=generator, dtype=torch.float64)
    target = torch.randint(0, CLASSES, (batch,), generator=generator)
    return weak, strong, target


def _logits(network, image):
    with torch.no_grad():
        return network(image)[0]


# --------------------------------------------------------------------------- nodes and resolution
def test_nodes_hold_the_methods_own_settings(host):
    assert host.cfg.PROTOCOL.VIEWS is None
    assert host.cfg.LOGITS.TEACHER_SWAP is None and host.cfg.LOGITS.STANDARDIZE is False


@pytest.mark.parametrize(
    "method, views, swap, expected",
    [("KD", None, None, (1, False)), ("DKD", None, None, (1, False)), ("MLKD", None, None, (2, False)),
     ("SLD", None, None, (2, True)), ("KD", 2, True, (2, True)), ("SLD", 1, False, (1, False)), ("CRD", None, None, (1, False))],
)
def test_resolution_per_method(fresh_cfg, method, views, swap, expected):
    from slkd.host.protocol import resolve_teacher_swap, resolve_views

    cfg = _cfg(fresh_cfg, method, **{"PROTOCOL.VIEWS": views, "LOGITS.TEACHER_SWAP": swap})
    assert (resolve_views(cfg), resolve_teacher_swap(cfg)) == expected


@pytest.mark.parametrize(
    "method, settings, fragment",
    [
        ("KD", {"PROTOCOL.VIEWS": 3}, "PROTOCOL.VIEWS is 3: choose 1"),
        ("KD", {"PROTOCOL.VIEWS": True}, "PROTOCOL.VIEWS is True"),
        ("KD", {"LOGITS.STANDARDIZE": "yes"}, "LOGITS.STANDARDIZE is 'yes': choose True or False"),
        ("MLKD", {"PROTOCOL.VIEWS": 1}, "MLKD is two-view by construction"),
        ("CRD", {"PROTOCOL.VIEWS": 2}, "PROTOCOL and LOGITS apply to the logit methods KD, DKD, MLKD, SLD, not CRD"),
        ("AT", {"LOGITS.STANDARDIZE": True}, "not AT"),
        ("DKD", {"PROTOCOL.VIEWS": 2, "SOLVER.TRAINER": "base"}, "SOLVER.TRAINER 'base' feeds one view"),
        ("SLD", {"SOLVER.TRAINER": "base"}, "or PROTOCOL.VIEWS 1"),
    ],
)
def test_validate_protocol_names_the_fix(fresh_cfg, method, settings, fragment):
    from slkd.host.config import ConfigError
    from slkd.host.protocol import validate_protocol

    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        validate_protocol(_cfg(fresh_cfg, method, **settings))


@pytest.mark.parametrize(
    "key, new", [("SLD.STRONG_VIEW", "PROTOCOL.VIEWS"), ("SLD.TEACHER_SWAP", "LOGITS.TEACHER_SWAP")]
)
def test_sld_refuses_its_moved_keys_naming_the_new_one(host, fresh_cfg, key, new):
    from slkd.host.config import ConfigError

    cfg = _cfg(fresh_cfg, "SLD", **{key: False})
    with pytest.raises(ConfigError, match=f"{key} is now {new}.*set {new} instead"):
        _build(host, cfg)


def test_mlkd_refuses_one_view_when_built(host, fresh_cfg):
    from slkd.host.config import ConfigError

    if host.has_mlkd:
        pytest.skip("the host has its own MLKD; slkd's is not registered")
    with pytest.raises(ConfigError, match="two-view by construction"):
        _build(host, _cfg(fresh_cfg, "MLKD", **{"PROTOCOL.VIEWS": 1}))


def test_a_hosts_own_class_that_cannot_apply_the_keys_is_refused(host, fresh_cfg):
    """A host's own MLKD (the released SLD code and the logit-standardization fork ship one)
    does not read PROTOCOL and LOGITS: asked for them, slkd-train stops instead of ignoring them."""
    from slkd.host.config import ConfigError
    from slkd.host.protocol import check_applied

    class HostsOwn:  # stands for a host class, outside slkd
        __module__ = "mdistiller.distillers.MLKD"

    check_applied(HostsOwn(), _cfg(fresh_cfg, "MLKD"))  # nothing asked: fine
    with pytest.raises(ConfigError, match=r"host's own MLKD \(mdistiller.distillers.MLKD\) does not read them"):
        check_applied(HostsOwn(), _cfg(fresh_cfg, "MLKD", **{"LOGITS.STANDARDIZE": True}))
    check_applied(_build(host, _cfg(fresh_cfg, "KD", **{"LOGITS.STANDARDIZE": True})), fresh_cfg)


# --------------------------------------------------------------------------- KD and DKD
def test_kd_two_views_swap_and_standardize_against_the_reference(host, fresh_cfg):
    cfg = _cfg(fresh_cfg, "KD", **{"PROTOCOL.VIEWS": 2, "LOGITS.TEACHER_SWAP": True, "LOGITS.STANDARDIZE": True, "KD.TEMPERATURE": 2.0, "KD.LOSS.KD_WEIGHT": 9.0})
    distiller = _build(host, cfg)
    assert distiller.num_views == 2 and isinstance(distiller, host.distiller_dict["KD"])
    weak, strong, target = _batch()
    logits, losses = distiller.forward_train(image_weak=weak, image_strong=strong, target=target, epoch=1)
    (losses["loss_ce"] + losses["loss_kd"]).backward()
    got = [p.grad.clone() for p in distiller.student.parameters()]

    expected_ce = expected_kd = 0.0
    distiller.student.zero_grad()
    for view in (weak, strong):
        student = distiller.student(view)[0]
        teacher = ref.swap_rows(_logits(distiller.teacher, view), target)
        expected_ce = expected_ce + F.cross_entropy(student, target)  # raw logits
        expected_kd = expected_kd + 9.0 * ref.kd(ref.z_score_torch(student), ref.z_score(teacher), 2.0)
    expected_ce = cfg.KD.LOSS.CE_WEIGHT * expected_ce
    torch.testing.assert_close(logits, distiller.student(weak)[0])
    torch.testing.assert_close(losses["loss_ce"], expected_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["loss_kd"], expected_kd, rtol=1e-10, atol=1e-12)
    (expected_ce + expected_kd).backward()
    for mine, theirs in zip(got, (p.grad for p in distiller.student.parameters())):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)


def test_kd_standardize_alone_on_one_view(host, fresh_cfg):
    cfg = _cfg(fresh_cfg, "KD", **{"LOGITS.STANDARDIZE": True})
    distiller = _build(host, cfg)
    assert distiller.num_views == 1
    weak, _, target = _batch(seed=4)
    _, losses = distiller.forward_train(image=weak, target=target, epoch=1)
    student, teacher = distiller.student(weak)[0], _logits(distiller.teacher, weak)
    expected = cfg.KD.LOSS.KD_WEIGHT * ref.kd(ref.z_score(student.detach()), ref.z_score(teacher), cfg.KD.TEMPERATURE)
    torch.testing.assert_close(losses["loss_kd"], expected, rtol=1e-10, atol=1e-12)


def test_dkd_with_swap_on_one_view_against_the_reference(host, fresh_cfg):
    cfg = _cfg(fresh_cfg, "DKD", **{"LOGITS.TEACHER_SWAP": True, "DKD.WARMUP": 20})
    distiller = _build(host, cfg)
    weak, _, target = _batch(seed=5)
    _, losses = distiller.forward_train(image=weak, target=target, epoch=5)
    student, teacher = distiller.student(weak)[0].detach(), ref.swap_rows(_logits(distiller.teacher, weak), target)
    expected = 5 / 20 * ref.dkd(student, teacher, target, cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T)
    torch.testing.assert_close(losses["loss_kd"], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(losses["loss_ce"], cfg.DKD.CE_WEIGHT * F.cross_entropy(student, target))


def test_dkd_two_views_sum_over_views(host, fresh_cfg):
    cfg = _cfg(fresh_cfg, "DKD", **{"PROTOCOL.VIEWS": 2, "LOGITS.STANDARDIZE": True})
    distiller = _build(host, cfg)
    weak, strong, target = _batch(seed=6)
    _, losses = distiller.forward_train(image_weak=weak, image_strong=strong, target=target, epoch=100)
    expected = sum(
        ref.dkd(ref.z_score(distiller.student(v)[0].detach()), ref.z_score(_logits(distiller.teacher, v)), target, cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T)
        for v in (weak, strong)
    )
    torch.testing.assert_close(losses["loss_kd"], expected, rtol=1e-9, atol=1e-12)


def test_two_view_kd_called_with_one_image_names_the_fix(host, fresh_cfg):
    distiller = _build(host, _cfg(fresh_cfg, "KD", **{"PROTOCOL.VIEWS": 2}))
    weak, _, target = _batch()
    with pytest.raises(TypeError, match="image_weak= and image_strong=.*PROTOCOL.VIEWS 1"):
        distiller.forward_train(image=weak, target=target, epoch=1)


# --------------------------------------------------------------------------- MLKD and SLD
def test_mlkd_teacher_swap_is_mlkd_of_the_swapped_teacher(host, fresh_cfg):
    from slkd.losses.mlkd import mlkd_losses

    if host.has_mlkd:
        pytest.skip("the host has its own MLKD; slkd's is not registered")
    distiller = _build(host, _cfg(fresh_cfg, "MLKD", **{"LOGITS.TEACHER_SWAP": True}))
    weak, strong, target = _batch(seed=7)
    _, losses = distiller.forward_train(image_weak=weak, image_strong=strong, target=target, epoch=1)
    students = [distiller.student(v)[0].detach() for v in (weak, strong)]
    teachers = [ref.swap_rows(_logits(distiller.teacher, v), target) for v in (weak, strong)]
    expected = mlkd_losses(*students, *teachers, target, base_temperature=fresh_cfg.KD.TEMPERATURE,
                           ce_weight=fresh_cfg.KD.LOSS.CE_WEIGHT, kd_weight=fresh_cfg.KD.LOSS.KD_WEIGHT)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("views", [1, 2])
def test_sld_standardize_and_swap_setting(host, fresh_cfg, views):
    from slkd.losses.sld import sld_loss

    cfg = _cfg(fresh_cfg, "SLD", **{"PROTOCOL.VIEWS": views, "LOGITS.STANDARDIZE": True, "LOGITS.TEACHER_SWAP": False})
    distiller = _build(host, cfg)
    weak, strong, target = _batch(seed=8)
    call = dict(image_weak=weak, image_strong=strong) if views == 2 else dict(image=weak)
    _, losses = distiller.forward_train(target=target, epoch=151, **call)
    expected_kd = expected_ce = 0.0
    for view in (weak, strong)[:views]:
        student, teacher = distiller.student(view)[0].detach(), _logits(distiller.teacher, view)
        expected_ce = expected_ce + F.cross_entropy(student, target)
        expected_kd = expected_kd + sld_loss(ref.z_score(student), ref.z_score(teacher), target, 151, teacher_swap=False)
    torch.testing.assert_close(losses["loss_kd"], 0.9 * expected_kd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses["loss_ce"], 0.1 * expected_ce, rtol=1e-12, atol=1e-12)
