"""The logit-standardization authors' published +LS settings (mdistiller_configs/cifar100/ls/)
and numbers (slkd.bench.published), against the table of their README written out here:
top-1, and the base temperature and weight in the names of the logs it links (DKD's third
value: the config BETA that --kd-weight multiplies)."""

from pathlib import Path

import pytest
import yaml

LS = Path(__file__).resolve().parents[1] / "mdistiller_configs" / "cifar100" / "ls"

# method -> pair -> (top-1, base temperature, kd weight, DKD BETA before the weight)
README = {
    "KD": {"res32x4_res8x4": (76.62, 2, 9, None), "vgg13_vgg8": (74.36, 3, 9, None), "wrn40_2_wrn_40_1": (74.37, 2, 9, None),
           "wrn40_2_wrn_16_2": (76.11, 2, 9, None), "res56_res20": (71.43, 2, 9, None), "res110_res32": (74.17, 2, 9, None)},
    "DKD": {"res32x4_res8x4": (77.01, 2, 9, 8.0), "vgg13_vgg8": (74.81, 2, 15, 2.0), "wrn40_2_wrn_40_1": (74.89, 2, 12, 2.0),
            "wrn40_2_wrn_16_2": (76.39, 2, 12, 2.0), "res56_res20": (72.32, 3, 18, 2.0), "res110_res32": (74.29, 2, 15, 2.0)},
    "MLKD": {"res32x4_res8x4": (78.28, 2, 9, None), "vgg13_vgg8": (75.22, 2, 6, None), "wrn40_2_wrn_40_1": (75.56, 2, 9, None),
             "wrn40_2_wrn_16_2": (76.95, 2, 9, None), "res56_res20": (72.33, 2, 9, None), "res110_res32": (74.32, 2, 9, None)},
}
CASES = [(method, pair) for method, pairs in README.items() for pair in pairs]


def test_one_config_per_published_number():
    shipped = {(path.parent.name.upper(), path.stem) for path in LS.rglob("*.yaml")}
    assert shipped == set(CASES)


@pytest.mark.parametrize("method, pair", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_published_number_sits_in_the_published_table(method, pair):
    from slkd.bench.published import published

    value, source = published(pair, f"{method}+LS")
    assert value == README[method][pair][0]
    assert "logit-standardization README" in source and "CVPR 2024" in source


@pytest.mark.host
@pytest.mark.parametrize("method, pair", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_config_holds_the_published_setting(host, method, pair):
    from slkd.host.config import load_config
    from slkd.host.protocol import resolve_standardize, resolve_teacher_swap, resolve_views, validate_protocol

    path = LS / method.lower() / f"{pair}.yaml"
    cfg = load_config(host.cfg, path, [])
    validate_protocol(cfg)
    _, temperature, weight, beta = README[method][pair]
    assert cfg.DISTILLER.TYPE == method
    assert resolve_standardize(cfg) and not resolve_teacher_swap(cfg)
    assert resolve_views(cfg) == (2 if method == "MLKD" else 1)
    assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.BATCH_SIZE, list(cfg.SOLVER.LR_DECAY_STAGES)) == ((480 if method == "MLKD" else 240), 64, [150, 180, 210])
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(5e-4)
    if method == "DKD":
        assert (cfg.DKD.T, cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.CE_WEIGHT, cfg.DKD.WARMUP) == (temperature, weight, beta * weight, 1.0, 20)
    else:
        assert (cfg.KD.TEMPERATURE, cfg.KD.LOSS.KD_WEIGHT, cfg.KD.LOSS.CE_WEIGHT) == (temperature, weight, 0.1)
    assert cfg.SOLVER.LR == pytest.approx(0.01 if (method, pair) == ("MLKD", "vgg13_vgg8") else 0.025 if method == "MLKD" else 0.05)
    assert str(README[method][pair][0]) in path.read_text().split("EXPERIMENT:")[0], "the comment names the number"
    assert yaml.safe_load(path.read_text())["LOGITS"] == {"TEACHER_SWAP": False, "STANDARDIZE": True}
