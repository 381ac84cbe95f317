"""--fast (SLKD.FAST, slkd.host.fast): what it turns on, how explicit settings combine with
it, its refusal on a CPU, and how a run records it. The expansion is a config matter and is
tested on a CPU with slkd-train's device choice stood in by "cuda"; the GPU runs it gives
are benchmarks/gpu_fast_check.sh's."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "mdistiller_configs" / "cifar100"
SLD_CFG = str(CONFIGS / "sld" / "res32x4_res8x4.yaml")
MLKD_CFG = str(CONFIGS / "mlkd" / "res32x4_res8x4.yaml")
FAST_ON = {"CUDA_GRAPHS": True, "FUSED_LOSS": True, "AMP": "bf16", "CHANNELS_LAST": True, "DEVICE_VIEWS": True}


def fast_keys(cfg) -> dict:
    return {key: cfg.SLKD[key] for key in FAST_ON}


@pytest.fixture
def on_gpu(monkeypatch):
    """slkd-train's device choice answers "cuda" (the config is all this looks at)."""
    from slkd.run import train

    monkeypatch.setattr(train, "resolve_device", lambda requested: "cuda")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def built(host, argv):
    from slkd.run.train import build_config, parse_args

    return build_config(parse_args(argv), host.cfg)


@pytest.mark.host
@pytest.mark.parametrize("switch", [["--fast"], ["SLKD.FAST", "True"]], ids=["flag", "override"])
def test_fast_turns_on_its_five_settings_and_says_so(host, on_gpu, capsys, switch):
    plain = built(host, ["--cfg", SLD_CFG])
    assert fast_keys(plain) == {"CUDA_GRAPHS": False, "FUSED_LOSS": False, "AMP": "none", "CHANNELS_LAST": False, "DEVICE_VIEWS": False}
    capsys.readouterr()
    cfg = built(host, ["--cfg", SLD_CFG, *switch])
    assert cfg.SLKD.FAST is True and fast_keys(cfg) == FAST_ON
    assert capsys.readouterr().out.strip() == "[slkd] --fast: CUDA graphs, the fused loss, bf16 autocast, channels-last, the device-side views"


@pytest.mark.host
@pytest.mark.parametrize(
    "flags, overrides, changed, note",
    [
        (["--amp", "fp16"], [], {"AMP": "fp16"}, "bf16 autocast: SLKD.AMP fp16 as set"),
        (["--amp", "none"], [], {"AMP": "none"}, "bf16 autocast: SLKD.AMP none as set"),
        ([], ["SLKD.CUDA_GRAPHS", "False"], {"CUDA_GRAPHS": False}, "CUDA graphs: SLKD.CUDA_GRAPHS False as set"),
        ([], ["SLKD.AMP", "fp16", "SLKD.DEVICE_VIEWS", "False"], {"AMP": "fp16", "DEVICE_VIEWS": False}, "the device-side views: SLKD.DEVICE_VIEWS False as set"),
        (["--channels-last"], [], {}, "channels-last: SLKD.CHANNELS_LAST True as set"),
    ],
)
def test_a_key_set_on_the_command_line_keeps_its_value(host, on_gpu, capsys, flags, overrides, changed, note):
    """--fast fills in only what the run does not set itself: --fast --amp fp16 is fp16 in
    CUDA graphs, --fast SLKD.CUDA_GRAPHS False everything but the graphs."""
    cfg = built(host, ["--cfg", SLD_CFG, "--fast", *flags, *overrides])
    assert fast_keys(cfg) == {**FAST_ON, **changed}
    assert note in capsys.readouterr().out


@pytest.mark.host
def test_a_key_in_the_config_file_keeps_its_value(host, on_gpu, tmp_path):
    config = yaml.safe_load(Path(SLD_CFG).read_text())
    config.setdefault("SLKD", {})["CHANNELS_LAST"] = False
    config["SLKD"]["AMP"] = "none"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = built(host, ["--cfg", str(path), "--fast"])
    assert fast_keys(cfg) == {**FAST_ON, "CHANNELS_LAST": False, "AMP": "none"}


@pytest.mark.host
def test_a_shipped_config_name_works_with_fast_from_any_folder(host, on_gpu, tmp_path, monkeypatch):
    """--cfg given as a shipped config's name (no such file in the working directory): --fast
    reads the same file to see which keys the config sets."""
    monkeypatch.chdir(tmp_path)
    cfg = built(host, ["--cfg", "cifar100/sld/res32x4_res8x4.yaml", "--fast"])
    assert fast_keys(cfg) == FAST_ON and cfg.DISTILLER.TYPE == "SLD"


@pytest.mark.host
def test_what_does_not_apply_to_the_run_stays_off_with_its_reason(host, on_gpu, capsys, monkeypatch):
    cfg = built(host, ["--cfg", MLKD_CFG, "--fast"])
    assert fast_keys(cfg) == {**FAST_ON, "FUSED_LOSS": False}
    assert "the fused loss: off, MLKD has no fused loss" in capsys.readouterr().out
    cfg = built(host, ["--cfg", SLD_CFG, "--fast", "PROTOCOL.VIEWS", "1"])
    assert fast_keys(cfg) == {**FAST_ON, "DEVICE_VIEWS": False}
    assert "the device-side views: off, SLD trains on one view" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = built(host, ["--cfg", SLD_CFG, "--fast"])
    assert fast_keys(cfg) == {**FAST_ON, "CUDA_GRAPHS": False}
    assert "CUDA graphs: off, not under torchrun yet" in capsys.readouterr().out


@pytest.mark.host
@pytest.mark.parametrize("switch", [["--fast"], ["SLKD.FAST", "True"]], ids=["flag", "override"])
def test_fast_on_a_cpu_is_refused_in_one_line(host, in_tmp, capsys, switch):
    from slkd.run.train import main

    assert main(["--cfg", SLD_CFG, "--smoke", "--device", "cpu", *switch]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == [
        "slkd-train: error: --fast (SLKD.FAST) turns on CUDA graphs, the fused loss and bf16 for a GPU, and this run is on cpu: "
        "drop --fast (or set SLKD.FAST False)"
    ]
    assert "Traceback" not in captured.err and not Path("output").exists()


def test_the_trainers_check_refuses_a_cpu_and_an_unexpanded_config():
    """The trainer checks too (mdistiller's tools/train.py does not expand SLKD.FAST)."""
    from slkd.errors import ConfigError
    from slkd.host.config import slkd_node
    from slkd.host.fast import check
    from yacs.config import CfgNode as CN

    cfg = CN({"SLKD": slkd_node()})
    check(cfg, "cpu")  # off: nothing to check
    cfg.SLKD.FAST = True
    with pytest.raises(ConfigError, match="this run is on cpu: drop --fast"):
        check(cfg, "cpu")
    with pytest.raises(ConfigError, match="none of its settings is on: slkd-train and slkd-bench expand it"):
        check(cfg, "cuda")
    cfg.SLKD.AMP = "fp16"
    check(cfg, "cuda")


@pytest.mark.host
def test_the_run_records_fast_as_an_execution_setting(host, on_gpu):
    """--fast is not in the run folder's name (flags never are); the saved config holds
    SLKD.FAST and what it set. A resume may change SLKD.FAST and the modes that compute the
    same, not the precision: a --fast run resumed without --fast is refused for SLKD.AMP."""
    from slkd.host.trainer import RESUME_MAY_CHANGE
    from slkd.run.train import experiment_name
    from slkd.utils.settings import EXECUTION_KEYS, changed_settings

    plain, quick = built(host, ["--cfg", SLD_CFG]), built(host, ["--cfg", SLD_CFG, "--fast"])
    assert experiment_name(quick, []) == experiment_name(plain, [])
    saved = yaml.safe_load(quick.dump())["SLKD"]
    assert saved["FAST"] is True and {key: saved[key] for key in FAST_ON} == FAST_ON
    assert "SLKD.FAST" in EXECUTION_KEYS
    assert changed_settings(quick.dump(), plain.dump(), RESUME_MAY_CHANGE) == ["SLKD.AMP bf16 (now none)"]


def test_a_gpu_run_without_fast_says_what_it_would_give():
    from slkd.host.config import slkd_node
    from slkd.host.fast import MEASURED, hint
    from yacs.config import CfgNode as CN

    cfg = CN({"SLKD": slkd_node()})
    line = hint(cfg, "cuda")
    assert line.startswith("[slkd] eager steps (the default") and "--fast would turn on CUDA graphs" in line
    assert line.endswith(MEASURED) and "\n" not in line
    assert hint(cfg, "cpu") is None
    cfg.SLKD.FAST = True
    assert hint(cfg, "cuda") is None


@pytest.mark.host
def test_slkd_bench_writes_fast_into_every_runs_config(host, tmp_path):
    from slkd.bench.configs import run_config
    from slkd.bench.sources import known_pairs

    pair = known_pairs()["res32x4_res8x4"]

    def slkd_node(**asked):
        config, notes = run_config("SLD", pair, Path(SLD_CFG), prefix=tmp_path, seed=0, epochs=None, overrides=[], **asked)
        return config["SLKD"], notes

    assert slkd_node() == ({"AMP": "none"}, slkd_node()[1])
    node, notes = slkd_node(fast=True)
    assert node == {"AMP": "bf16", "FAST": True} and "SLKD.AMP 'bf16' (--fast)" in notes and "SLKD.FAST True (--fast)" in notes
    assert slkd_node(fast=True, amp="fp16")[0] == {"AMP": "fp16", "FAST": True}


@pytest.mark.parametrize("argv", [["--fast", "--smoke"], ["--fast", "--device", "cpu"]])
def test_slkd_bench_refuses_fast_on_a_cpu(argv, capsys):
    from slkd.bench.cli import main

    assert main(["run", "--dry-run", *argv]) == 1
    err = capsys.readouterr().err
    assert err == (
        "slkd-bench: error: --fast turns on CUDA graphs, the fused loss and bf16 for a GPU, and these runs are on cpu: "
        "drop --fast, or give --device cuda on a machine with a GPU\n"
    )
