"""The shipped configs (mdistiller_configs/) and slkd.host.config's loading and validation.

Every shipped YAML must merge into a fresh clone of the real host's ``CFG`` (after
``slkd.register()``), so these take the ``host`` fixture and skip without mdistiller.
The expected settings are written out here from docs/method.md, section 4, not read from slkd.
"""

import warnings
from pathlib import Path

import pytest
import yaml

from tests.helpers.expected import SLD_NODE

needs_host = pytest.mark.host  # on the tests that take the ``host`` fixture

CONFIGS = Path(__file__).resolve().parents[1] / "mdistiller_configs"
ALL_YAML = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "variants.yaml")  # that one is slkd-bench's, not a --cfg file

SLD_NODE_IN_FULL = SLD_NODE

# docs/method.md, section 4: file -> (teacher, student, learning rate of the released code)
CIFAR_PAIRS = {
    "res56_res20.yaml": ("resnet56", "resnet20", 0.025),
    "res110_res32.yaml": ("resnet110", "resnet32", 0.025),
    "res32x4_res8x4.yaml": ("resnet32x4", "resnet8x4", 0.025),
    "wrn40_2_wrn_16_2.yaml": ("wrn_40_2", "wrn_16_2", 0.025),
    "wrn40_2_wrn_40_1.yaml": ("wrn_40_2", "wrn_40_1", 0.025),
    "vgg13_vgg8.yaml": ("vgg13", "vgg8", 0.025),
    "wrn40_2_vgg8.yaml": ("wrn_40_2", "vgg8", 0.025),
    "wrn40_2_shuv1.yaml": ("wrn_40_2", "ShuffleV1", 0.01),
    "res32x4_shuv1.yaml": ("resnet32x4", "ShuffleV1", 0.009),
    "res32x4_shuv2.yaml": ("resnet32x4", "ShuffleV2", 0.008),
    "res50_mv2.yaml": ("ResNet50", "MobileNetV2", 0.008),
    "vgg13_mv2.yaml": ("vgg13", "MobileNetV2", 0.008),
}

# docs/method.md, section 4, ImageNet: folder -> (teacher, student names accepted, CE, KD)
IMAGENET = {
    "r34_r18": ("ResNet34", {"ResNet18"}, 0.5, 0.5),
    "r50_mv1": ("ResNet50", {"MobileNetV1", "MobileNetV2"}, 1.0, 0.5),
}


def _load(host, path, opts=()):
    from slkd.host.config import load_config

    return load_config(host.cfg, path, list(opts))


def _comments(path):
    return "\n".join(line for line in Path(path).read_text().splitlines() if line.lstrip().startswith("#"))


# --------------------------------------------------------------------------- every file
def test_there_are_shipped_configs():
    names = {str(p.relative_to(CONFIGS)) for p in ALL_YAML}
    assert {f"cifar100/sld/{name}" for name in CIFAR_PAIRS} <= names
    assert {f"imagenet/{folder}/{name}" for folder in IMAGENET for name in ("sld.yaml", "sld_gamma30.yaml")} <= names


@needs_host
@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_merges_into_a_fresh_cfg(host, path):
    from slkd.host.config import validate_sld
    from slkd.host.protocol import validate_protocol

    before = host.cfg.dump()
    cfg = _load(host, path)
    assert host.cfg.dump() == before, "load_config must not change the host's CFG"
    assert cfg is not host.cfg
    raw = yaml.safe_load(path.read_text())
    # every value written in the file is what the merged config holds
    for node, values in raw.items():
        for key, value in _flatten(values):
            merged = cfg[node]
            for part in key.split("."):
                merged = merged[part]
            expected = tuple(value) if isinstance(value, list) and isinstance(merged, tuple) else value
            assert merged == expected, f"{node}.{key}: file {value!r}, merged {merged!r}"
    assert cfg.DISTILLER.TYPE in host.distiller_dict, "the method must be registered on this host"
    assert cfg.SOLVER.TRAINER == "slkd"
    validate_protocol(cfg)
    if cfg.DISTILLER.TYPE == "SLD":
        assert set(raw["SLD"]) == set(SLD_NODE_IN_FULL), "the SLD node must be written out in full"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the faithful ImageNet configs warn by design
            validate_sld(cfg)


@needs_host
@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_models_exist_on_this_host(host, path):
    from slkd.host import models

    cfg = _load(host, path)
    models.check_names(host, cfg)  # raises ModelError listing the known names otherwise


def _flatten(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --------------------------------------------------------------------------- CIFAR-100
def test_the_twelve_cifar_pairs_are_shipped():
    folder = CONFIGS / "cifar100" / "sld"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(CIFAR_PAIRS)


@needs_host
@pytest.mark.parametrize("name", sorted(CIFAR_PAIRS))
def test_cifar_pair_has_released_settings(host, name):
    teacher, student, lr = CIFAR_PAIRS[name]
    path = CONFIGS / "cifar100" / "sld" / name
    cfg = _load(host, path)
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (teacher, student)
    assert cfg.DATASET.TYPE == "cifar100"
    assert cfg.SOLVER.LR == pytest.approx(lr, abs=0)
    assert cfg.SOLVER.EPOCHS == 240
    assert cfg.SOLVER.BATCH_SIZE == 64
    assert list(cfg.SOLVER.LR_DECAY_STAGES) == [150, 180, 210]
    assert cfg.SOLVER.LR_DECAY_RATE == pytest.approx(0.1)
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(5e-4)
    assert cfg.SOLVER.MOMENTUM == pytest.approx(0.9)
    assert cfg.SOLVER.TYPE == "SGD"
    raw = yaml.safe_load(path.read_text())
    assert raw["SLD"] == SLD_NODE_IN_FULL
    # the released code's protocol and teacher swap, written out
    assert raw["PROTOCOL"] == {"VIEWS": 2} and raw["LOGITS"] == {"TEACHER_SWAP": True, "STANDARDIZE": False}
    assert {key: cfg.SLD[key] for key in SLD_NODE_IN_FULL} == {
        key: (tuple(v) if isinstance(v, list) and isinstance(cfg.SLD[key], tuple) else v)
        for key, v in SLD_NODE_IN_FULL.items()
    }
    assert teacher in host.cifar_model_dict and host.cifar_model_dict[teacher][1] is not None
    assert student in host.cifar_model_dict


# --------------------------------------------------------------------------- ImageNet
@needs_host
@pytest.mark.parametrize("folder", sorted(IMAGENET))
def test_imagenet_faithful_and_gamma30_configs(host, folder):
    teacher, students, ce, kd = IMAGENET[folder]
    faithful = CONFIGS / "imagenet" / folder / "sld.yaml"
    early = CONFIGS / "imagenet" / folder / "sld_gamma30.yaml"
    assert faithful.is_file() and early.is_file()
    gammas = {}
    for path in (faithful, early):
        cfg = _load(host, path)
        assert cfg.DATASET.TYPE == "imagenet"
        assert cfg.DISTILLER.TEACHER == teacher
        assert cfg.DISTILLER.STUDENT in students
        assert cfg.SOLVER.BATCH_SIZE == 512
        assert cfg.SOLVER.EPOCHS == 100
        assert cfg.SOLVER.LR == pytest.approx(0.2)
        assert list(cfg.SOLVER.LR_DECAY_STAGES) == [30, 60, 90]
        assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-4)
        assert cfg.SLD.CE_WEIGHT == pytest.approx(ce)
        assert cfg.SLD.KD_WEIGHT == pytest.approx(kd)
        assert list(cfg.SLD.TEMPERATURES) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        raw = yaml.safe_load(path.read_text())["SLD"]
        assert set(raw) == set(SLD_NODE_IN_FULL)
        gammas[path.name] = cfg.SLD.GAMMA
    assert gammas == {"sld.yaml": 150, "sld_gamma30.yaml": 30}

    # both say in their comments which one they are
    faithful_text = _comments(faithful).lower()
    assert "faithful" in faithful_text and "150" in faithful_text
    assert "never" in faithful_text  # the pseudo-teacher term never switches on in 100 epochs
    early_text = _comments(early).lower()
    assert "30" in early_text and "first" in early_text and "decay" in early_text
    assert "not what the released code ran" in early_text
    assert "faithful" not in early_text


@needs_host
def test_faithful_imagenet_config_warns_that_gamma_never_fires(host):
    from slkd.host.config import validate_sld

    with pytest.warns(UserWarning, match="never switches on"):
        validate_sld(_load(host, CONFIGS / "imagenet" / "r34_r18" / "sld.yaml"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_sld(_load(host, CONFIGS / "imagenet" / "r34_r18" / "sld_gamma30.yaml"))


# --------------------------------------------------------------------------- load_config errors
def _config_error(host, path, opts=()):
    from slkd.host.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(host, path, opts)
    error = caught.value
    # a clear message of its own: no chained yacs / YAML exception shown under it
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert "Traceback" not in str(error)
    return str(error)


RES8X4 = CONFIGS / "cifar100" / "sld" / "res32x4_res8x4.yaml"


@needs_host
def test_unknown_override_key_suggests_the_nearest(host):
    message = _config_error(host, RES8X4, ["SLD.GAMA", "100"])
    assert "unknown config key SLD.GAMA" in message
    assert "did you mean SLD.GAMMA?" in message
    assert "the command line" in message


@needs_host
def test_unknown_key_in_file_names_the_file_and_suggests(host, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("SLD:\n  TEMPERATURE: [1.0, 2.0]\n")
    message = _config_error(host, path)
    assert "SLD.TEMPERATURE" in message
    assert "SLD.TEMPERATURES" in message
    assert str(path) in message


@needs_host
def test_unknown_key_without_close_match_lists_siblings(host):
    message = _config_error(host, None, ["SLD.ZZZZZZZZZZZZ", "1"])
    assert "SLD.ZZZZZZZZZZZZ" in message
    assert "SLD.GAMMA" in message and "SLD.STUDENT_SWAP" in message


@needs_host
def test_wrong_type_override(host):
    message = _config_error(host, RES8X4, ["SLD.GAMMA", "'soon'"])
    assert "bad value in the command line" in message
    assert "SLD.GAMMA" in message or "GAMMA" in message
    assert "soon" in message


@needs_host
def test_wrong_type_in_file(host, tmp_path):
    path = tmp_path / "wrong_type.yaml"
    path.write_text("SOLVER:\n  EPOCHS: many\n")
    message = _config_error(host, path)
    assert str(path) in message
    assert "EPOCHS" in message and "many" in message


@needs_host
def test_invalid_yaml(host, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("SLD:\n  GAMMA: [150\n  KD_WEIGHT: 0.9\n")
    message = _config_error(host, path)
    assert f"{path} is not valid YAML" in message


@needs_host
def test_yaml_that_is_not_a_mapping(host, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- SLD\n- GAMMA\n")
    message = _config_error(host, path)
    assert "mapping" in message and str(path) in message


@needs_host
def test_missing_config_file(host, tmp_path):
    message = _config_error(host, tmp_path / "nope.yaml")
    assert "does not exist" in message and "nope.yaml" in message


@needs_host
def test_odd_number_of_overrides(host):
    message = _config_error(host, RES8X4, ["SLD.GAMMA", "100", "SOLVER.LR"])
    assert "KEY VALUE pairs" in message and "odd number" in message
    assert "SOLVER.LR" in message


@needs_host
def test_overrides_apply_after_the_file(host):
    cfg = _load(host, RES8X4, ["SLD.GAMMA", "100", "SLD.TEMPERATURES", "[2.0, 4.0]"])
    assert cfg.SLD.GAMMA == 100
    assert list(cfg.SLD.TEMPERATURES) == [2.0, 4.0]
    assert cfg.SOLVER.LR == pytest.approx(0.025)


# --------------------------------------------------------------------------- validate_sld
def _sld_cfg(fresh_cfg, **changes):
    fresh_cfg.SOLVER.EPOCHS = 240
    fresh_cfg.SOLVER.TRAINER = "slkd"
    for key, value in changes.items():
        if key == "TRAINER":
            fresh_cfg.SOLVER.TRAINER = value
        else:
            fresh_cfg.SLD[key] = value
    return fresh_cfg


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"TEMPERATURES": []}, r"SLD\.TEMPERATURES.*empty"),
        ({"TEMPERATURES": [1.0, 0.0]}, r"SLD\.TEMPERATURES.*\[1\.0, 0\.0\]"),
        ({"TEMPERATURES": [-2.0]}, r"SLD\.TEMPERATURES.*\[-2\.0\]"),
        ({"TEMPERATURES": ["hot"]}, r"SLD\.TEMPERATURES.*hot"),
        ({"TEMPERATURES": [True]}, r"SLD\.TEMPERATURES.*True"),
        ({"CE_WEIGHT": -0.1}, "SLD.CE_WEIGHT"),
        ({"KD_WEIGHT": -1.0}, "SLD.KD_WEIGHT"),
        ({"KD_WEIGHT": float("nan")}, "SLD.KD_WEIGHT is nan: loss weights must be finite"),
        ({"CE_WEIGHT": float("inf")}, "SLD.CE_WEIGHT is inf: loss weights must be finite"),
        ({"STRONG_VIEW": False}, "SLD.STRONG_VIEW is now PROTOCOL.VIEWS"),
        ({"TEACHER_SWAP": True}, "SLD.TEACHER_SWAP is now LOGITS.TEACHER_SWAP"),
    ],
    ids=["empty", "zero", "negative", "string", "bool", "negative-ce", "negative-kd", "nan-kd", "inf-ce", "moved-views", "moved-swap"],
)
@needs_host
def test_validate_sld_rejects(fresh_cfg, changes, fragment):
    from slkd.host.config import ConfigError, validate_sld

    with pytest.raises(ConfigError, match=fragment):
        validate_sld(_sld_cfg(fresh_cfg, **changes))


@needs_host
def test_validate_sld_accepts_defaults_and_zero_weights(fresh_cfg):
    from slkd.host.config import validate_sld

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_sld(_sld_cfg(fresh_cfg))
        validate_sld(_sld_cfg(fresh_cfg, CE_WEIGHT=0.0, KD_WEIGHT=0.0))
        validate_sld(_sld_cfg(fresh_cfg, TRAINER="ours"))  # the MLKD fork's two-view trainer
        validate_sld(_sld_cfg(fresh_cfg, TRAINER="base"))  # the views are PROTOCOL's business


@needs_host
@pytest.mark.parametrize("gamma", [240, 300])
def test_validate_sld_warns_when_gamma_reaches_epochs(fresh_cfg, gamma):
    from slkd.host.config import validate_sld

    with pytest.warns(UserWarning, match=rf"SLD.GAMMA={gamma} >= SOLVER.EPOCHS=240"):
        validate_sld(_sld_cfg(fresh_cfg, GAMMA=gamma))


@needs_host
def test_validate_sld_no_warning_without_student_swap(fresh_cfg):
    from slkd.host.config import validate_sld

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_sld(_sld_cfg(fresh_cfg, GAMMA=240, STUDENT_SWAP=False))


# --------------------------------------------------------------------------- validate_run_options
@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("SOLVER.EPOCHS", 0, "SOLVER.EPOCHS is 0: it must be an integer >= 1"),
        ("SOLVER.BATCH_SIZE", 0, "SOLVER.BATCH_SIZE is 0: it must be an integer >= 1"),
        ("SOLVER.BATCH_SIZE", -8, "SOLVER.BATCH_SIZE is -8: it must be an integer >= 1"),
        ("DATASET.TEST.BATCH_SIZE", 0, "DATASET.TEST.BATCH_SIZE is 0: it must be an integer >= 1"),
        ("SOLVER.LR", -1.0, "SOLVER.LR is -1.0: it must be a number > 0"),
        ("SOLVER.LR", 0.0, "SOLVER.LR is 0.0: it must be a number > 0"),
        ("SOLVER.LR", float("nan"), "SOLVER.LR is nan: it must be a number > 0"),
        ("SOLVER.LR_DECAY_RATE", 0.0, r"SOLVER.LR_DECAY_RATE is 0.0: it must be a number in (0, 1]"),
        ("SOLVER.LR_DECAY_RATE", 2.0, r"SOLVER.LR_DECAY_RATE is 2.0: it must be a number in (0, 1]"),
        ("SOLVER.MOMENTUM", -0.5, "SOLVER.MOMENTUM is -0.5: it must be a number in [0, 1)"),
        ("SOLVER.MOMENTUM", 1.0, "SOLVER.MOMENTUM is 1.0: it must be a number in [0, 1)"),
        ("SOLVER.WEIGHT_DECAY", -1e-4, "SOLVER.WEIGHT_DECAY is -0.0001: it must be a number >= 0"),
        ("LOG.SAVE_CHECKPOINT_FREQ", 0, "LOG.SAVE_CHECKPOINT_FREQ is 0: it must be an integer >= 1"),
        ("SLKD.EVAL_FREQ", 0, "SLKD.EVAL_FREQ is 0: it must be an integer >= 1"),
        ("SLKD.LOADER.WORKERS", -2, "SLKD.LOADER.WORKERS is -2: it must be an integer >= -1"),
        ("SLKD.LOADER.PREFETCH", 0, "SLKD.LOADER.PREFETCH is 0: it must be an integer >= 1"),
        ("SLKD.LOADER.PREFETCH", -1, "SLKD.LOADER.PREFETCH is -1: it must be an integer >= 1"),
        ("SOLVER.EPOCHS", True, "SOLVER.EPOCHS is True: it must be an integer >= 1"),
        ("SOLVER.LR_DECAY_STAGES", [1, "a"], r"SOLVER.LR_DECAY_STAGES is [1, 'a']: it must be a list of epochs"),
        ("SOLVER.LR_DECAY_STAGES", [150.5], r"SOLVER.LR_DECAY_STAGES is [150.5]: it must be a list of epochs"),
        ("SOLVER.LR_DECAY_STAGES", [-1], r"SOLVER.LR_DECAY_STAGES is [-1]: it must be a list of epochs"),
    ],
)
@needs_host
def test_validate_run_options_rejects_out_of_range_numbers(fresh_cfg, key, value, fragment):
    """One message naming the key, the value and the allowed range (set here directly, as a
    config file of another type or a trainer built outside slkd-train could)."""
    from slkd.host.config import ConfigError, validate_run_options

    node, name = fresh_cfg, key
    while "." in name:
        head, name = name.split(".", 1)
        node = node[head]
    node[name] = value
    with pytest.raises(ConfigError) as caught:
        validate_run_options(fresh_cfg)
    assert str(caught.value).startswith(fragment)


@needs_host
def test_validate_run_options_accepts_the_edges_of_each_range(host):
    from slkd.host.config import validate_run_options

    cfg = _load(host, RES8X4, [
        "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "1", "DATASET.TEST.BATCH_SIZE", "1", "SOLVER.LR_DECAY_RATE", "1.0",
        "SOLVER.MOMENTUM", "0.0", "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.LR_DECAY_STAGES", "[]",
        "LOG.SAVE_CHECKPOINT_FREQ", "1", "SLKD.LOADER.WORKERS", "-1", "SLKD.LOADER.PREFETCH", "1",
    ])
    validate_run_options(cfg)
    cfg.SOLVER.LR_DECAY_STAGES = [0, 1]
    validate_run_options(cfg)


@needs_host
def test_device_views_are_refused_for_imagenet_in_one_line(fresh_cfg):
    from slkd.host.config import ConfigError, validate_run_options

    assert fresh_cfg.SLKD.DEVICE_VIEWS is False
    fresh_cfg.SLKD.DEVICE_VIEWS = True
    fresh_cfg.DATASET.TYPE = "cifar100"
    validate_run_options(fresh_cfg)
    fresh_cfg.DATASET.TYPE = "imagenet"
    with pytest.raises(ConfigError) as caught:
        validate_run_options(fresh_cfg)
    assert str(caught.value) == (
        "SLKD.DEVICE_VIEWS makes CIFAR-100's views on the device, this run trains on imagenet: "
        "set SLKD.DEVICE_VIEWS False (or drop --device-views)"
    )


# --------------------------------------------------------------------------- validate_trainer
@needs_host
@pytest.mark.parametrize("trainer", ["slkd", "base", "crd", "ours"])
def test_validate_trainer_accepts_slkd_and_loop_only_trainers(fresh_cfg, trainer):
    from slkd.host.config import validate_trainer

    fresh_cfg.SOLVER.TRAINER = trainer
    validate_trainer(fresh_cfg)


@needs_host
@pytest.mark.parametrize(
    "trainer, fragment",
    [
        ("dot", r"SOLVER.TRAINER 'dot' trains with DOT's optimizer .*SOLVER.DOT.DELTA.*mdistiller's own tools/train.py"),
        ("crd_dot", r"SOLVER.TRAINER 'crd_dot' trains with DOT's optimizer .*mdistiller's own tools/train.py"),
        ("aug", r"SOLVER.TRAINER 'aug' is not a trainer slkd-train can run: use slkd"),
    ],
)
def test_validate_trainer_refuses_what_changes_the_method(fresh_cfg, trainer, fragment):
    from slkd.host.config import ConfigError, validate_trainer

    fresh_cfg.SOLVER.TRAINER = trainer
    with pytest.raises(ConfigError, match=fragment):
        validate_trainer(fresh_cfg)
