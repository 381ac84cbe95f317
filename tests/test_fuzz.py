"""Generated input for the config loader and the loss entry points: nothing but the
documented errors ever come out: ConfigError from the config, and from the loss
LossInputError exactly when the input is invalid, a finite value otherwise."""

import math
import warnings

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slkd.host.config import ConfigError, load_config, validate_run_options, validate_sld
from slkd.errors import LossInputError
from slkd.losses.checks import MAX_TEMPERATURE, MIN_TEMPERATURE
from slkd.losses.sld import SLDLoss, sld_loss, swap_logits
from tests.helpers.tiny import tiny_cfg

BASE = tiny_cfg("/tmp/unused")
KNOWN = ["SLD.GAMMA", "SLD.TEMPERATURES", "SLD.CE_WEIGHT", "SLD.KD_WEIGHT", "SLD.STRONG_VIEW", "PROTOCOL.VIEWS", "LOGITS.TEACHER_SWAP", "LOGITS.STANDARDIZE",
         "SOLVER.EPOCHS", "SOLVER.LR", "SOLVER.LR_DECAY_STAGES", "SLKD.AMP", "SLKD.EVAL_FREQ",
         "SLKD.LOADER.WORKERS", "DISTILLER.TYPE", "SLD", "SOLVER", "NOPE.KEY", "SLD.GAMA"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.floats(-10, 10), max_size=4), st.lists(st.text(max_size=3), max_size=3),
)
settings_ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _nest(key, value):
    node = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def _load_and_validate(path, opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_config(BASE, path, opts)
        validate_run_options(cfg)
        validate_sld(cfg)


@settings_
@given(key=st.sampled_from(KNOWN), value=scalars)
def test_yaml_files_give_a_config_or_a_config_error(tmp_path, key, value):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_nest(key, value)))
    try:
        _load_and_validate(path, [])
    except ConfigError:
        pass


@settings_
@given(text=st.text(max_size=80))
def test_arbitrary_text_files_give_a_config_or_a_config_error(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    try:
        _load_and_validate(path, [])
    except ConfigError:
        pass


@settings_
@given(opts=st.lists(st.one_of(st.sampled_from(KNOWN), st.text(max_size=10)), max_size=5))
def test_command_line_overrides_give_a_config_or_a_config_error(opts):
    try:
        _load_and_validate(None, opts)
    except ConfigError:
        pass


temperature_lists = st.lists(
    st.one_of(st.floats(MIN_TEMPERATURE, MAX_TEMPERATURE), st.floats(allow_nan=True, allow_infinity=True)), max_size=4
)


def _valid_temperatures(temperatures) -> bool:
    return bool(temperatures) and all(MIN_TEMPERATURE <= t <= MAX_TEMPERATURE for t in temperatures)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(0, 5), classes=st.integers(0, 6), target_shift=st.integers(-2, 8),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
    temperatures=temperature_lists,
    epoch=st.integers(-5, 400), scale=st.floats(0, 1e4),
    detach=st.booleans(), teacher_swap=st.booleans(),
)
def test_loss_errs_exactly_on_invalid_input_and_is_finite_otherwise(rows, classes, target_shift, dtype, temperatures, epoch, scale, detach, teacher_swap):
    generator = torch.Generator().manual_seed(rows * 31 + classes)
    student = (torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale).to(dtype)
    target = (torch.arange(rows) + target_shift) % max(classes + 2, 1) - (1 if target_shift < 0 else 0)
    valid = (
        rows > 0 and classes > 0 and dtype.is_floating_point
        and all(0 <= t < classes for t in target.tolist()) and _valid_temperatures(temperatures)
    )

    def loss():
        return sld_loss(student, teacher, target, epoch, temperatures=temperatures, gamma=150,
                        detach_pseudo_teacher=detach, teacher_swap=teacher_swap)

    if not valid:
        with pytest.raises(LossInputError):
            loss()
        return
    value = loss()
    assert value.dim() == 0
    assert math.isfinite(float(value)) and float(value) >= -1e-3


@settings(max_examples=60, deadline=None)
@given(temperatures=temperature_lists, gamma=st.integers(-3, 300))
def test_loss_module_refuses_exactly_the_bad_temperatures_at_construction(temperatures, gamma):
    if not _valid_temperatures(temperatures):
        with pytest.raises(LossInputError, match="temperatures"):
            SLDLoss(temperatures=temperatures, gamma=gamma)
        return
    module = SLDLoss(temperatures=temperatures, gamma=gamma)
    assert module.temperatures.tolist() == list(temperatures)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), classes=st.integers(1, 6), seed=st.integers(0, 1000))
def test_swap_of_random_rows_keeps_values_and_crowns_the_label(rows, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 3, (rows, classes), generator=generator).float()
    target = torch.randint(0, classes, (rows,), generator=generator)
    swapped = swap_logits(logits, target)
    assert torch.equal(swapped.sort(dim=1).values, logits.sort(dim=1).values)
    assert torch.equal(swapped.gather(1, target.view(-1, 1)).squeeze(1), logits.max(dim=1).values)
