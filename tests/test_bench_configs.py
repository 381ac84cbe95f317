"""The MLKD configs (mdistiller_configs/cifar100/mlkd/ and mlkd_fork/) and the configs
slkd-bench writes for every pair and method.

Each merges into the real host's ``CFG`` (``host`` fixture; skipped without mdistiller).
The expected settings are written out here: MLKD under SLD's protocol (the same pair,
learning rate and schedule as ``sld/<pair>.yaml``), and the MLKD fork's published settings
(its ``configs/cifar100/ours/<pair>.yaml`` at 5ee473f), checked against the fork's own
files when the host is the fork.
"""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "mdistiller_configs" / "cifar100"
SLD_PAIRS = sorted(p.stem for p in (CONFIGS / "sld").glob("*.yaml"))

# the MLKD fork at 5ee473f, configs/cifar100/ours/<pair>.yaml: pair -> (epochs, learning rate)
FORK_PUBLISHED = {
    "res32x4_res8x4": (240, 0.025),
    "res56_res20": (240, 0.025),
    "res110_res32": (240, 0.025),
    "vgg13_vgg8": (240, 0.025),
    "wrn40_2_wrn_16_2": (240, 0.025),
    "wrn40_2_wrn_40_1": (240, 0.025),
    "res32x4_shuv1": (960, 0.01),
    "res32x4_shuv2": (960, 0.01),
    "res50_mv2": (480, 0.01),
    "vgg13_mv2": (480, 0.01),
    "wrn40_2_shuv1": (480, 0.01),
}


def _load(host, path, opts=()):
    from slkd.host.config import load_config

    return load_config(host.cfg, path, list(opts))


def _check_mlkd_node_and_schedule(cfg):
    assert cfg.DISTILLER.TYPE == "MLKD"
    assert cfg.DATASET.TYPE == "cifar100"
    assert cfg.KD.TEMPERATURE == 4
    assert (cfg.KD.LOSS.CE_WEIGHT, cfg.KD.LOSS.KD_WEIGHT) == (0.1, 0.9)
    assert cfg.SOLVER.BATCH_SIZE == 64
    assert list(cfg.SOLVER.LR_DECAY_STAGES) == [150, 180, 210]
    assert cfg.SOLVER.LR_DECAY_RATE == 0.1
    assert cfg.SOLVER.WEIGHT_DECAY == 5e-4
    assert cfg.SOLVER.MOMENTUM == 0.9
    assert cfg.SOLVER.TYPE == "SGD"
    assert cfg.SOLVER.TRAINER == "slkd"
    assert cfg.LOG.WANDB is False


def test_mlkd_configs_cover_the_sld_pairs():
    assert sorted(p.stem for p in (CONFIGS / "mlkd").glob("*.yaml")) == SLD_PAIRS
    assert len(SLD_PAIRS) == 12
    assert sorted(p.stem for p in (CONFIGS / "mlkd_fork").glob("*.yaml")) == sorted(FORK_PUBLISHED)


@pytest.mark.host
@pytest.mark.parametrize("pair", SLD_PAIRS)
def test_mlkd_config_has_slds_protocol(host, pair):
    path = CONFIGS / "mlkd" / f"{pair}.yaml"
    cfg, sld = _load(host, path), _load(host, CONFIGS / "sld" / f"{pair}.yaml")
    assert cfg.DISTILLER.TYPE in host.distiller_dict
    _check_mlkd_node_and_schedule(cfg)
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (sld.DISTILLER.TEACHER, sld.DISTILLER.STUDENT)
    assert cfg.SOLVER.LR == sld.SOLVER.LR
    assert cfg.SOLVER.EPOCHS == sld.SOLVER.EPOCHS == 240
    assert "same-protocol config" in path.read_text().splitlines()[0]


@pytest.mark.host
@pytest.mark.parametrize("pair", sorted(FORK_PUBLISHED))
def test_mlkd_fork_config_has_the_forks_published_settings(host, pair):
    path = CONFIGS / "mlkd_fork" / f"{pair}.yaml"
    cfg, sld = _load(host, path), _load(host, CONFIGS / "sld" / f"{pair}.yaml")
    _check_mlkd_node_and_schedule(cfg)
    assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (sld.DISTILLER.TEACHER, sld.DISTILLER.STUDENT)
    assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.LR) == FORK_PUBLISHED[pair]
    assert "MLKD fork's published settings" in path.read_text().splitlines()[0]
    if host.flavour == "mlkd-fork":
        published = yaml.safe_load((Path(host.package.__file__).parents[1] / "configs/cifar100/ours" / f"{pair}.yaml").read_text())
        assert published["DISTILLER"]["TYPE"] == "KD_ours"
        assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (published["DISTILLER"]["TEACHER"], published["DISTILLER"]["STUDENT"])
        for key in ("BATCH_SIZE", "EPOCHS", "LR", "LR_DECAY_STAGES", "LR_DECAY_RATE", "WEIGHT_DECAY", "MOMENTUM"):
            expected = published["SOLVER"][key]
            assert (list(cfg.SOLVER[key]) if isinstance(expected, list) else cfg.SOLVER[key]) == expected, key


@pytest.mark.host
@pytest.mark.parametrize("pair", SLD_PAIRS)
def test_every_benchmark_config_merges_into_the_host(host, pair, tmp_path):
    from slkd.bench.configs import run_config
    from slkd.bench.sources import BenchError, known_pairs, source_config

    root = Path(host.package.__file__).resolve().parents[1]
    pair_ = known_pairs()[pair]
    for method in ("KD", "DKD", "CRD", "MLKD", "SLD"):
        try:
            source = source_config(method, pair_, root)
        except BenchError:
            assert method == "DKD" and pair == "wrn40_2_vgg8"  # mdistiller ships none
            continue
        config, _ = run_config(method, pair_, source, prefix=tmp_path, seed=1, epochs=None, overrides=[])
        written = tmp_path / f"{method}.yaml"
        written.write_text(yaml.safe_dump(config))
        cfg = _load(host, written)
        assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (method, pair_.teacher, pair_.student)
        assert cfg.DISTILLER.TYPE in host.distiller_dict
