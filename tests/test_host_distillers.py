"""slkd's SLD and MLKD distillers inside the real mdistiller host.

* one SGD step for every shipped CIFAR-100 pair, with the host's real (randomly
  initialised) teacher and student networks;
* equivalence with the authors' released SLD code (``mdistiller/distillers/SLD.py`` of
  StephenEkaputra/Swapped-Logit-Distillation): same weights, views and labels give the same
  ``loss_ce``, ``loss_kd`` and student gradients, before and after GAMMA;
* the single-view mode and the errors of a wrong call;
* one step of slkd's MLKD.

All take the ``host`` fixture and skip without mdistiller. The released checkout is the
``released_sld`` fixture (``$SLKD_RELEASED_SLD_PATH``, tests/helpers/hosts.py); the
equivalence tests skip, saying so, when it is absent.
"""

import contextlib
import copy
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.host

CONFIGS = Path(__file__).resolve().parents[1] / "mdistiller_configs"
CIFAR_CONFIGS = sorted((CONFIGS / "cifar100" / "sld").glob("*.yaml"))
RES8X4 = CONFIGS / "cifar100" / "sld" / "res32x4_res8x4.yaml"
NUM_CLASSES = 100


def _cfg(host, path=RES8X4, opts=()):
    from slkd.host.config import load_config

    return load_config(host.cfg, path, list(opts))


def _models(host, cfg, seed=0):
    torch.manual_seed(seed)
    teacher = host.cifar_model_dict[cfg.DISTILLER.TEACHER][0](num_classes=NUM_CLASSES)
    student = host.cifar_model_dict[cfg.DISTILLER.STUDENT][0](num_classes=NUM_CLASSES)
    return teacher, student


def _views(batch, seed=1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    weak = torch.randn(batch, 3, 32, 32, generator=generator, dtype=dtype)
    strong = torch.randn(batch, 3, 32, 32, generator=generator, dtype=dtype)
    target = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    return weak, strong, target


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# --------------------------------------------------------------------------- (a) every pair
@pytest.mark.parametrize("path", CIFAR_CONFIGS, ids=lambda p: p.stem)
def test_one_training_step_for_every_cifar_pair(host, path):
    cfg = _cfg(host, path)
    teacher, student = _models(host, cfg)
    distiller = host.distiller_dict[cfg.DISTILLER.TYPE](student, teacher, cfg)
    from slkd.host.distillers import SLD

    assert type(distiller) is SLD and distiller.num_views == 2
    distiller.train()
    assert distiller.student.training
    assert not any(m.training for m in distiller.teacher.modules()), "the teacher must stay in eval mode"

    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=cfg.SOLVER.LR, momentum=0.9)
    student_before = _snapshot(distiller.student)
    teacher_before = _snapshot(distiller.teacher)
    weak, strong, target = _views(2)

    # epoch past GAMMA, so both the teacher-swap and the pseudo-teacher terms run
    logits, losses = distiller(image_weak=weak, image_strong=strong, target=target, epoch=cfg.SLD.GAMMA + 1)
    assert logits.shape == (2, NUM_CLASSES)
    assert set(losses) == {"loss_ce", "loss_kd"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{name} = {value}"
        assert value.requires_grad
    assert losses["loss_kd"].item() > 0 and losses["loss_ce"].item() > 0
    optimizer.zero_grad()
    sum(losses.values()).backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in distiller.teacher.parameters())
    optimizer.step()

    after = distiller.student.state_dict()
    changed = [n for n, p in distiller.student.named_parameters() if not torch.equal(p.detach(), student_before[n])]
    assert changed, "no student parameter moved"
    assert len(changed) >= len(list(distiller.student.parameters())) // 2
    assert any(not torch.equal(after[n], student_before[n]) for n in after if "running_mean" in n)
    teacher_after = distiller.teacher.state_dict()
    for name, value in teacher_before.items():  # weights and BatchNorm statistics alike
        assert torch.equal(teacher_after[name], value), f"teacher {name} changed"
    assert not distiller.teacher.training


# --------------------------------------------------------------------------- (b) the released code
@contextlib.contextmanager
def _placeholders_for_unused_imports():
    """The released SLD.py starts with ``from termios import CEOL`` and ``from turtle import
    st``, never used. ``turtle`` needs Tk and ``termios`` is POSIX only: where one cannot be
    imported, a placeholder module with that one name stands in while SLD.py is loaded."""
    inserted = []
    for name, attribute in (("termios", "CEOL"), ("turtle", "st")):
        try:
            importlib.import_module(name)
        except Exception:  # ImportError, or Tk's own error while importing turtle
            placeholder = types.ModuleType(name)
            setattr(placeholder, attribute, None)
            sys.modules[name] = placeholder
            inserted.append(name)
    try:
        yield
    finally:
        for name in inserted:
            sys.modules.pop(name, None)


_RELEASED_PACKAGE = "_slkd_test_released_sld_distillers"


@pytest.fixture(scope="module")
def released_sld_class(released_sld):
    """The released ``SLD`` class, loaded in isolation from the installed host.

    How: the released ``mdistiller/distillers/`` folder is registered under a private package
    name (a bare module object whose ``__path__`` is that folder, so its ``__init__.py``, which
    imports every other distiller, never runs), and only ``SLD.py`` is executed as a submodule
    of it. Its relative imports ``from ._base import Distiller`` and ``from .loss import ...``
    then resolve to the released checkout's own ``_base.py`` and ``loss.py`` under that private
    name. Nothing is added to ``sys.path`` and no module called ``mdistiller`` is created or
    replaced, so the host under test (upstream or the MLKD fork) and the released fork never
    clash in ``sys.modules``; everything is removed again afterwards.
    """
    folder = released_sld / "mdistiller" / "distillers"
    source = folder / "SLD.py"
    package = types.ModuleType(_RELEASED_PACKAGE)
    package.__path__ = [str(folder)]
    package.__package__ = _RELEASED_PACKAGE
    sys.modules[_RELEASED_PACKAGE] = package
    try:
        spec = importlib.util.spec_from_file_location(f"{_RELEASED_PACKAGE}.SLD", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        with _placeholders_for_unused_imports():
            spec.loader.exec_module(module)
        yield module.SLD
    finally:
        for name in [n for n in sys.modules if n == _RELEASED_PACKAGE or n.startswith(_RELEASED_PACKAGE + ".")]:
            del sys.modules[name]


def _released_cfg(host, ce_weight, kd_weight):
    """The released SLD reads its weights from ``KD.LOSS`` (temperatures 1..6 and gamma 150
    are hard-coded in it)."""
    cfg = host.cfg.clone()
    cfg.defrost()
    cfg.KD.LOSS.CE_WEIGHT = ce_weight
    cfg.KD.LOSS.KD_WEIGHT = kd_weight
    return cfg


def _sharpen(network, factor):
    """Scale the classifier so the random network's logits are peaked like a trained one's:
    then the student's swap term (L_SS) is a sizeable part of the loss and its gradient."""
    classifier = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        classifier.weight.mul_(factor)
        classifier.bias.mul_(factor)


@pytest.fixture(scope="module")
def pair64(host):
    """float64 resnet32x4 teacher and resnet8x4 student, views and labels chosen so that
    some rows need no swap: row 0's label is the teacher's top class on the weak view, row
    1's the student's; the other rows are swapped for both."""
    cfg = _cfg(host, RES8X4)
    teacher, student = _models(host, cfg, seed=3)
    teacher, student = teacher.double().eval(), student.double().train()
    _sharpen(student, 20.0)
    weak, strong, target = _views(4, seed=4, dtype=torch.float64)
    with torch.no_grad():
        target[0] = teacher(weak)[0][0].argmax()
        target[1] = student(weak)[0][1].argmax()  # train-mode BN: same output as in the step
    return cfg, teacher, student, weak, strong, target


def _step(distiller, weak, strong, target, epoch):
    distiller.train()
    distiller.student.zero_grad(set_to_none=True)
    logits, losses = distiller(image_weak=weak, image_strong=strong, target=target, epoch=epoch)
    sum(losses.values()).backward()
    grads = {name: p.grad.detach().clone() for name, p in distiller.student.named_parameters()}
    return logits.detach(), {k: v.detach() for k, v in losses.items()}, grads


@pytest.fixture(scope="module")
def equivalence_runs(host, pair64, released_sld_class):
    """``run(epoch, implementation, detach=False)`` -> (logits, losses, grads), cached.

    Each run builds a distiller on its own deep copies of the same weights (BatchNorm
    statistics included): slkd's SLD from res32x4_res8x4.yaml (its SLD node: temperatures
    1..6, GAMMA 150, CE 0.1, KD 0.9), the released SLD with those weights in ``KD.LOSS``.
    """
    cfg, teacher, student, weak, strong, target = pair64
    assert list(cfg.SLD.TEMPERATURES) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and cfg.SLD.GAMMA == 150
    cache = {}

    def run(epoch, implementation, detach=False):
        key = (epoch, implementation, detach)
        if key not in cache:
            if implementation == "slkd":
                our_cfg = cfg.clone()
                our_cfg.SLD.DETACH_PSEUDO_TEACHER = detach
                distiller = host.distiller_dict["SLD"](copy.deepcopy(student), copy.deepcopy(teacher), our_cfg)
            else:
                assert not detach, "the released code has no such option"
                released_cfg = _released_cfg(host, cfg.SLD.CE_WEIGHT, cfg.SLD.KD_WEIGHT)
                distiller = released_sld_class(copy.deepcopy(student), copy.deepcopy(teacher), released_cfg)
            cache[key] = _step(distiller, weak, strong, target, epoch)
        return cache[key]

    return run


def _max_abs(a, b):
    return float((a - b).abs().max())


def _grad_diff(grads, ref_grads):
    return max(_max_abs(grads[n], ref_grads[n]) for n in ref_grads)


def _grad_scale(grads):
    return max(float(g.abs().max()) for g in grads.values())


@pytest.mark.parametrize("epoch", [1, 150, 151])
def test_equivalent_to_released_sld(equivalence_runs, epoch):
    logits, losses, grads = equivalence_runs(epoch, "slkd")
    ref_logits, ref_losses, ref_grads = equivalence_runs(epoch, "released")
    assert set(losses) == set(ref_losses) == {"loss_ce", "loss_kd"}
    assert torch.equal(logits, ref_logits)
    assert set(grads) == set(ref_grads)
    scale = _grad_scale(ref_grads)
    print(
        f"\nepoch {epoch}: loss_ce {losses['loss_ce'].item():.10g} loss_kd {losses['loss_kd'].item():.10g}; "
        f"max|diff| loss_ce {_max_abs(losses['loss_ce'], ref_losses['loss_ce']):.3e}, "
        f"loss_kd {_max_abs(losses['loss_kd'], ref_losses['loss_kd']):.3e}, "
        f"student grads {_grad_diff(grads, ref_grads):.3e} (largest grad {scale:.3e})"
    )
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-12, atol=1e-12)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12 * scale, msg=name)


def test_pseudo_teacher_term_equivalent_to_released(equivalence_runs):
    """What switches on after GAMMA (epoch 151 minus epoch 150: the L_SS term, weighted, on
    both views), in value and gradient, compared on its own scale."""
    _, ours_on, ours_grads_on = equivalence_runs(151, "slkd")
    _, ours_off, ours_grads_off = equivalence_runs(150, "slkd")
    _, ref_on, ref_grads_on = equivalence_runs(151, "released")
    _, ref_off, ref_grads_off = equivalence_runs(150, "released")
    ours_term = ours_on["loss_kd"] - ours_off["loss_kd"]
    ref_term = ref_on["loss_kd"] - ref_off["loss_kd"]
    assert ref_term.item() > 1e-3 * ref_on["loss_kd"].item(), "the test data should make L_SS matter"
    torch.testing.assert_close(ours_term, ref_term, rtol=1e-9, atol=1e-12)
    ours_delta = {n: ours_grads_on[n] - ours_grads_off[n] for n in ours_grads_on}
    ref_delta = {n: ref_grads_on[n] - ref_grads_off[n] for n in ref_grads_on}
    scale = _grad_scale(ref_delta)
    assert scale > 1e-3 * _grad_scale(ref_grads_on), "the L_SS gradient should be sizeable"
    print(
        f"\nL_SS part: {ref_term.item():.10g}, max|diff| value {_max_abs(ours_term, ref_term):.3e}, "
        f"gradient {_grad_diff(ours_delta, ref_delta):.3e} (largest {scale:.3e})"
    )
    for name in ref_delta:
        torch.testing.assert_close(ours_delta[name], ref_delta[name], rtol=1e-8, atol=1e-10 * scale, msg=name)


def test_released_pseudo_teacher_is_not_detached(equivalence_runs):
    """The released code lets the gradient flow through the swapped student target, as slkd's
    default does (above). With DETACH_PSEUDO_TEACHER True the loss values stay the same but
    the gradients differ from the released ones once the pseudo-teacher term is on, and only
    then."""
    for epoch, same_grads in ((1, True), (151, False)):
        _, losses, grads = equivalence_runs(epoch, "slkd", detach=True)
        _, ref_losses, ref_grads = equivalence_runs(epoch, "released")
        for name in losses:
            torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-12, atol=1e-12)
        diff, scale = _grad_diff(grads, ref_grads), _grad_scale(ref_grads)
        if same_grads:
            assert diff <= 1e-10 * scale
        else:
            assert diff > 1e-4 * scale, "detaching the pseudo-teacher should change the gradient"


def test_equivalent_to_released_sld_in_float32(host, released_sld_class):
    """The same comparison in float32, as training runs."""
    cfg = _cfg(host, RES8X4)
    teacher, student = _models(host, cfg, seed=5)
    teacher.eval()
    _sharpen(student, 20.0)
    weak, strong, target = _views(3, seed=6)
    for epoch in (1, 151):
        ours = host.distiller_dict["SLD"](copy.deepcopy(student), copy.deepcopy(teacher), cfg)
        theirs = released_sld_class(copy.deepcopy(student), copy.deepcopy(teacher), _released_cfg(host, 0.1, 0.9))
        _, losses, grads = _step(ours, weak, strong, target, epoch)
        _, ref_losses, ref_grads = _step(theirs, weak, strong, target, epoch)
        scale = _grad_scale(ref_grads)
        print(
            f"\nfloat32 epoch {epoch}: max|diff| loss_ce {_max_abs(losses['loss_ce'], ref_losses['loss_ce']):.3e}, "
            f"loss_kd {_max_abs(losses['loss_kd'], ref_losses['loss_kd']):.3e} (of {ref_losses['loss_kd'].item():.4g}), "
            f"grads {_grad_diff(grads, ref_grads):.3e} (largest {scale:.3e})"
        )
        for name in losses:
            torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-5, atol=1e-5)
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


# --------------------------------------------------------------------------- (c) views and calls
def _small_distiller(host, opts=(), seed=0):
    cfg = _cfg(host, RES8X4, ["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8", *opts])
    teacher, student = _models(host, cfg, seed=seed)
    distiller = host.distiller_dict["SLD"](student, teacher, cfg)
    distiller.train()
    return distiller, cfg


def test_single_view_mode_runs_with_image(host):
    distiller, cfg = _small_distiller(host, ["PROTOCOL.VIEWS", "1", "SOLVER.TRAINER", "base"])
    assert distiller.num_views == 1
    image, _, target = _views(3, seed=7)
    logits, losses = distiller(image=image, target=target, epoch=151)
    assert set(losses) == {"loss_ce", "loss_kd"}
    assert all(torch.isfinite(v) for v in losses.values())
    # one view: CE_WEIGHT * CE of that view, and the loss of that view alone
    torch.testing.assert_close(losses["loss_ce"], 0.1 * F.cross_entropy(logits, target))
    with torch.no_grad():
        teacher_logits = distiller.teacher(image)[0]
    import slkd

    expected_kd = 0.9 * slkd.sld_loss(logits, teacher_logits, target, epoch=151, gamma=150)
    torch.testing.assert_close(losses["loss_kd"], expected_kd, rtol=1e-5, atol=1e-5)
    sum(losses.values()).backward()
    # evaluation goes through forward_test with image=
    distiller.eval()
    assert distiller(image=image).shape == (3, NUM_CLASSES)


def test_two_view_mode_called_with_one_image_names_the_fix(host):
    distiller, _ = _small_distiller(host)
    image, _, target = _views(2, seed=8)
    with pytest.raises(TypeError) as caught:
        distiller(image=image, target=target, epoch=1)
    message = str(caught.value)
    assert "image_weak=" in message and "image_strong=" in message
    assert "PROTOCOL.VIEWS 1" in message
    assert "slkd" in message  # the trainer that feeds two views
    with pytest.raises(TypeError, match="image_strong"):
        distiller(image_weak=image, target=target, epoch=1)


def test_missing_epoch_raises(host):
    distiller, _ = _small_distiller(host)
    weak, strong, target = _views(2, seed=9)
    with pytest.raises(TypeError, match=r"epoch="):
        distiller(image_weak=weak, image_strong=strong, target=target)
    single, _ = _small_distiller(host, ["PROTOCOL.VIEWS", "1", "SOLVER.TRAINER", "base"])
    with pytest.raises(TypeError, match=r"epoch="):
        single(image=weak, target=target)


def test_sld_rejects_an_invalid_node(host):
    from slkd.host.config import ConfigError

    cfg = _cfg(host, RES8X4, ["SLD.TEMPERATURES", "[]"])
    teacher, student = _models(host, _cfg(host, RES8X4, ["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8"]))
    with pytest.raises(ConfigError, match="TEMPERATURES"):
        host.distiller_dict["SLD"](student, teacher, cfg)


@pytest.mark.parametrize("training", [False, True], ids=["eval-one-pass", "train-per-view"])
def test_teacher_logits_are_the_views_rows_in_order(host, training):
    """Both views' teacher rows, weak then strong: one forward pass in eval mode (the same
    logits, BatchNorm using its running statistics), one per view in training mode."""
    from slkd.host.distillers import teacher_logits

    cfg = _cfg(host, RES8X4, ["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8"])
    teacher, _ = _models(host, cfg, seed=5)
    teacher.train(training)
    weak, strong, _ = _views(4, seed=6)
    with torch.no_grad():
        expected = torch.cat([teacher(weak)[0], teacher(strong)[0]])
    batches = []
    hook = teacher.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    rows = teacher_logits(teacher, [weak, strong])
    hook.remove()
    assert batches == ([4, 4] if training else [8])
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-5)
    assert not rows.requires_grad


# --------------------------------------------------------------------------- (d) MLKD
def test_mlkd_one_step(host):
    from slkd.host.distillers import MLKD

    cfg = _cfg(host, RES8X4, ["DISTILLER.TYPE", "MLKD", "DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8"])
    teacher, student = _models(host, cfg, seed=11)
    distiller = host.distiller_dict["MLKD"](student, teacher, cfg)
    assert type(distiller) is MLKD and distiller.num_views == 2
    distiller.train()
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.025, momentum=0.9)
    before = _snapshot(distiller.student)
    teacher_before = _snapshot(distiller.teacher)
    weak, strong, target = _views(4, seed=12)
    logits, losses = distiller(image_weak=weak, image_strong=strong, target=target, epoch=1)
    assert logits.shape == (4, NUM_CLASSES)
    assert set(losses) == {"loss_ce", "loss_kd", "loss_cc", "loss_bc"}
    for name, value in losses.items():
        assert torch.isfinite(value).all(), f"{name} = {value}"
    optimizer.zero_grad()
    sum(value.mean() for value in losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in distiller.student.named_parameters())
    assert all(torch.equal(distiller.teacher.state_dict()[n], v) for n, v in teacher_before.items())
    assert not distiller.teacher.training


def test_fused_loss_gives_the_same_step(host):
    """SLKD.FUSED_LOSS: the distiller computes its loss with the fused kernels (Triton's CPU
    interpreter here) and the step equals the eager one to float rounding."""
    results = {}
    for fused in (False, True):
        distiller, _ = _small_distiller(host, ["SLKD.FUSED_LOSS", str(fused)])
        assert distiller.criterion.fused is fused
        weak, strong, target = _views(6, seed=9)
        _, losses = distiller(image_weak=weak, image_strong=strong, target=target, epoch=151)
        sum(losses.values()).backward()
        grads = {name: p.grad.clone() for name, p in distiller.student.named_parameters()}
        results[fused] = (losses, dict(distiller.step_stats), grads)
    (eager_losses, eager_stats, eager_grads), (losses, stats, grads) = results[False], results[True]
    for name in ("loss_ce", "loss_kd"):
        torch.testing.assert_close(losses[name], eager_losses[name], rtol=1e-5, atol=1e-6)
    for name in eager_stats:
        torch.testing.assert_close(stats[name], eager_stats[name], rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_graph_keys_name_what_the_step_depends_on(host):
    """SLKD.CUDA_GRAPHS records one graph per key: SLD's step changes only when L_SS switches
    on, MLKD's never."""
    from slkd.host.distillers import MLKD
    from slkd.host.graphs import graph_key

    distiller, _ = _small_distiller(host, ["SLD.GAMMA", "150"])
    assert [graph_key(distiller, epoch) for epoch in (1, 150, 151, 240)] == [False, False, True, True]
    distiller, _ = _small_distiller(host, ["SLD.STUDENT_SWAP", "False"])
    assert graph_key(distiller, 240) is False
    cfg = _cfg(host, CONFIGS / "cifar100" / "mlkd" / "res32x4_res8x4.yaml", ["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8"])
    teacher, student = _models(host, cfg)
    assert graph_key(MLKD(student, teacher, cfg), 240) is None  # slkd's (the fork keeps its own)


def test_steps_make_no_tensors_from_host_values_once_warm(host):
    """A CUDA graph cannot record a tensor made from Python numbers (a copy from a temporary
    host buffer): after one warm step, SLD's and MLKD's steps make none (on a GPU each would
    also be a host-to-device copy per step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from slkd.host.distillers import MLKD

    class HostTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("lift_fresh", "lift_fresh_copy", "scalar_tensor"):
                self.made.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    sld, _ = _small_distiller(host)
    cfg = _cfg(host, CONFIGS / "cifar100" / "mlkd" / "res32x4_res8x4.yaml", ["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8"])
    teacher, student = _models(host, cfg)
    mlkd = MLKD(student, teacher, cfg).train()
    weak, strong, target = _views(4, seed=11)
    for distiller in (sld, mlkd):
        for attempt in ("warm", "checked"):
            with HostTensors() as watch:
                _, losses = distiller(image_weak=weak, image_strong=strong, target=target, epoch=200)
                sum(losses.values()).backward()
            if attempt == "checked":
                assert watch.made == [], f"{type(distiller).__name__} made tensors from host values: {watch.made}"
