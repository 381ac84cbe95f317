"""slkd.register() and slkd.host.registry against the real mdistiller host.

Tests that need mdistiller take the ``host`` fixture (tests/conftest.py) and skip, saying
why, when it cannot be imported. The tests of what happens WITHOUT mdistiller run in a
subprocess in which ``mdistiller`` is blocked (``sys.modules["mdistiller"] = None`` makes
every ``import mdistiller`` raise ``ModuleNotFoundError`` with ``name == "mdistiller"``,
exactly as on a machine where it is not installed) and ``SLKD_MDISTILLER_PATH`` is unset.
Blocking the name is more robust than pruning ``sys.path``: it works whether mdistiller
is pip-installed, on ``PYTHONPATH`` or reached through the environment variable, and it
never touches this process's imports.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.expected import MOVED_SLD_KEYS, SLD_NODE

needs_host = pytest.mark.host  # only the tests that take the ``host`` fixture

EXPECTED_SLD_NODE = {**SLD_NODE, **dict.fromkeys(MOVED_SLD_KEYS)}  # the moved keys hold null

SLKD_RUN_KEYS = {"SEED", "DETERMINISTIC", "AMP", "CHANNELS_LAST", "SYNC_BN", "FUSED_LOSS", "CUDA_GRAPHS", "DEVICE_VIEWS", "FAST", "EVAL_FREQ", "LOADER"}


# --------------------------------------------------------------------------- with a host
@needs_host
def test_register_is_idempotent(host):
    import slkd
    from slkd.host.distillers import MLKD, SLD
    from slkd.host.trainer import SLKDTrainer

    first = slkd.register()
    before = {
        "SLD": host.distiller_dict["SLD"],
        "MLKD": host.distiller_dict["MLKD"],
        "trainer": host.trainer_dict["slkd"],
        "cfg_SLD": host.cfg.SLD,
        "cfg_SLKD": host.cfg.SLKD,
        "distillers": dict(host.distiller_dict),
        "trainers": dict(host.trainer_dict),
    }
    second = slkd.register()  # must neither raise nor replace anything
    assert first == second
    assert "SLD" in first and "trainer:slkd" in first
    assert host.distiller_dict["SLD"] is before["SLD"] is SLD
    assert host.distiller_dict["MLKD"] is before["MLKD"] is MLKD
    assert host.trainer_dict["slkd"] is before["trainer"] is SLKDTrainer
    # the config nodes are the same objects (not re-created, so user edits survive)
    assert host.cfg.SLD is before["cfg_SLD"]
    assert host.cfg.SLKD is before["cfg_SLKD"]
    assert dict(host.distiller_dict) == before["distillers"]
    assert dict(host.trainer_dict) == before["trainers"]


@needs_host
def test_cfg_sld_node_is_exactly_the_documented_one(host):
    node = host.cfg.SLD
    assert set(node.keys()) == set(EXPECTED_SLD_NODE)
    for key, expected in EXPECTED_SLD_NODE.items():
        value = node[key]
        assert value == expected, f"SLD.{key} = {value!r}, expected {expected!r} (tests/helpers/expected.py)"
        assert type(value) is type(expected), f"SLD.{key} has type {type(value).__name__}"
    assert all(isinstance(t, float) for t in node.TEMPERATURES)


@needs_host
def test_cfg_slkd_node_present(host):
    assert set(host.cfg.SLKD.keys()) == SLKD_RUN_KEYS
    assert host.cfg.SLKD.AMP == "none"


@needs_host
def test_fresh_cfg_clone_carries_slkd_nodes(fresh_cfg, host):
    assert fresh_cfg.SLD == host.cfg.SLD and fresh_cfg.SLD is not host.cfg.SLD
    fresh_cfg.SLD.GAMMA = 3  # a clone: the host's CFG is untouched
    assert host.cfg.SLD.GAMMA == 150


@needs_host
def test_distiller_dict_sld_is_slkds(host):
    from slkd.host.distillers import SLD

    assert host.distiller_dict["SLD"] is SLD
    assert issubclass(SLD, host.distiller_base)
    assert SLD.__module__ == "slkd.host.distillers"


@needs_host
def test_mlkd_registered_on_both_hosts(host):
    """Upstream has no MLKD; the MLKD fork has it only as ``KD_ours``: slkd adds ``MLKD``."""
    from slkd.host.distillers import MLKD

    assert host.distiller_dict["MLKD"] is MLKD
    assert issubclass(MLKD, host.distiller_base)
    if host.flavour == "mlkd-fork":
        # the fork's own MLKD stays where it was, under its own name
        assert "KD_ours" in host.distiller_dict
        assert host.distiller_dict["KD_ours"] is not MLKD
        assert "ours" in host.trainer_dict
    else:
        assert "KD_ours" not in host.distiller_dict
    assert not host.has_mlkd  # slkd's own MLKD does not count as the host's


@needs_host
def test_trainer_registered(host):
    from slkd.host.trainer import SLKDTrainer

    assert host.trainer_dict["slkd"] is SLKDTrainer
    # the host's own trainers are still there
    assert {"base", "crd"} <= set(host.trainer_dict)


@needs_host
def test_host_stock_entries_untouched(host):
    for name in ("NONE", "CRD"):
        assert name in host.distiller_dict
        assert not host.distiller_dict[name].__module__.startswith("slkd")


@needs_host
@pytest.mark.parametrize("name", ["KD", "DKD"])
def test_kd_and_dkd_wrap_the_host_class_and_build_it_when_nothing_is_asked(host, fresh_cfg, name):
    """PROTOCOL and LOGITS off: distiller_dict[name] builds the host's own class, unchanged."""
    wrapper = host.distiller_dict[name]
    own = wrapper.host_class
    assert own.__module__ == f"mdistiller.distillers.{name}" and issubclass(wrapper, own)
    fresh_cfg.DISTILLER.TYPE = name
    student, teacher = (host.cifar_model_dict["resnet8"][0](num_classes=100) for _ in range(2))
    assert type(wrapper(student, teacher, fresh_cfg)) is own
    fresh_cfg.LOGITS.TEACHER_SWAP = False  # the method's own setting, written out
    fresh_cfg.PROTOCOL.VIEWS = 1
    assert type(wrapper(student, teacher, fresh_cfg)) is own
    fresh_cfg.LOGITS.TEACHER_SWAP = True
    assert type(wrapper(student, teacher, fresh_cfg)) is wrapper


class _SomeoneElsesSLD:
    """A different object registered under ``SLD`` by another plugin."""


def _someone_elses_trainer():
    """A different object registered under the trainer name ``slkd``."""


@needs_host
def test_register_refuses_to_overwrite_a_different_distiller(host, monkeypatch):
    import slkd
    from slkd.host.registry import RegistrationConflict

    # monkeypatch restores the host's global dict after the test
    monkeypatch.setitem(host.distiller_dict, "SLD", _SomeoneElsesSLD)
    with pytest.raises(RegistrationConflict) as caught:
        slkd.register()
    message = str(caught.value)
    assert "'SLD'" in message
    assert "distiller_dict" in message
    assert "_SomeoneElsesSLD" in message  # names what is there
    assert "slkd.host.distillers.SLD" in message  # and what slkd wanted to put
    assert "will not overwrite" in message
    assert host.distiller_dict["SLD"] is _SomeoneElsesSLD  # nothing was replaced


@needs_host
def test_register_refuses_to_overwrite_a_different_trainer(host, monkeypatch):
    import slkd
    from slkd.host.registry import RegistrationConflict

    monkeypatch.setitem(host.trainer_dict, "slkd", _someone_elses_trainer)
    with pytest.raises(RegistrationConflict, match=r"trainer_dict already has 'slkd'"):
        slkd.register()
    assert host.trainer_dict["slkd"] is _someone_elses_trainer


def test_registration_conflict_is_a_known_cli_error():
    from slkd.errors import KNOWN_ERRORS
    from slkd.host.registry import HostNotFound, RegistrationConflict

    assert RegistrationConflict in KNOWN_ERRORS and HostNotFound in KNOWN_ERRORS
    assert issubclass(HostNotFound, ImportError)


@needs_host
def test_register_after_conflict_is_removed_works_again(host, monkeypatch):
    import slkd
    from slkd.host.distillers import SLD
    from slkd.host.registry import RegistrationConflict

    monkeypatch.setitem(host.distiller_dict, "SLD", _SomeoneElsesSLD)
    with pytest.raises(RegistrationConflict):
        slkd.register()
    monkeypatch.undo()
    slkd.register()
    assert host.distiller_dict["SLD"] is SLD


# --------------------------------------------------------------------------- without a host
# One subprocess (importing torch costs seconds) in which mdistiller is blocked and
# SLKD_MDISTILLER_PATH is unset; it reports what it saw as JSON, the tests below read it.
_WITHOUT_MDISTILLER = r"""
import sys
sys.modules["mdistiller"] = None  # every `import mdistiller` now fails as if not installed
import json, os
report = {}

import torch
import slkd
z = torch.tensor([[0.2, 1.5, -0.3], [2.0, 0.1, 0.4]], requires_grad=True)
t = torch.tensor([[1.0, 0.0, 3.0], [0.5, 2.5, 0.0]])
y = torch.tensor([1, 0])
loss = slkd.sld_loss(z, t, y, epoch=151, gamma=150)
loss.backward()
report["loss"] = {
    "finite": bool(torch.isfinite(loss)),
    "grad": z.grad is not None and bool(torch.isfinite(z.grad).all()),
    "swap": slkd.swap_logits(t, y).tolist(),
    "module": float(slkd.SLDLoss()(z.detach(), t, y, 1)),
    "host_modules_loaded": sorted(m for m in sys.modules if m.startswith("slkd.host")),
}

from slkd.host.registry import HostNotFound

def attempt():
    try:
        slkd.register()
    except HostNotFound as error:
        return {"error": type(error).__name__, "message": str(error),
                "is_import_error": isinstance(error, ImportError)}
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": None}

report["unset"] = attempt()
os.environ["SLKD_MDISTILLER_PATH"] = sys.argv[1]  # a folder with no mdistiller in it
report["empty-checkout"] = attempt()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def without_mdistiller(tmp_path_factory):
    empty = tmp_path_factory.mktemp("no_mdistiller_here")
    env = {k: v for k, v in os.environ.items() if k not in ("SLKD_MDISTILLER_PATH", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MDISTILLER, str(empty)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["unset", "empty-checkout"])
def test_host_not_found_message_says_how_to_install(without_mdistiller, case):
    report = without_mdistiller[case]
    assert report["error"] == "HostNotFound", report
    assert report["is_import_error"]
    message = report["message"]
    assert "mdistiller" in message and "not on PyPI" in message
    assert "git clone https://github.com/megvii-research/mdistiller" in message
    assert "a08d46f" in message
    assert "pip install -e ." in message
    assert "SLKD_MDISTILLER_PATH" in message
    assert "Multi-Level-Logit-Distillation" in message  # the fork is named as an option


def test_loss_works_without_mdistiller(without_mdistiller):
    report = without_mdistiller["loss"]
    assert report["finite"] and report["grad"]
    assert report["swap"] == [[1.0, 3.0, 0.0], [2.5, 0.5, 0.0]]
    assert report["module"] > 0
    # importing slkd and using the loss never touches the host glue
    assert report["host_modules_loaded"] == []


@needs_host
def test_register_gives_an_imagenet_network_both_hosts_names(host):
    """slkd's r50_mv1 configs name upstream's MobileNetV1; the MLKD fork calls the same network
    MobileNetV2. mdistiller's tools/train.py looks the name up in the host's table itself."""
    import slkd

    assert "imagenet:MobileNetV1=MobileNetV2" in slkd.register()
    networks = host.imagenet_model_dict
    assert networks["MobileNetV1"] is networks["MobileNetV2"]
