"""SLD's defaults are written once (slkd.losses.sld.SLD_DEFAULTS): the loss, the config node,
the benchmark scripts and the README's table all hold the released code's settings, checked
here against the hand-written copy in tests/helpers/expected.py."""

import inspect
import re
from pathlib import Path

from slkd.losses.sld import SLD_DEFAULTS, SLDLoss, sld_loss
from tests.helpers.expected import MOVED_SLD_KEYS, SLD_NODE

ROOT = Path(__file__).resolve().parents[1]


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_sld_defaults_are_the_released_settings():
    assert {key: _plain(value) for key, value in SLD_DEFAULTS.items()} == SLD_NODE


def test_the_loss_keyword_defaults_are_the_released_settings():
    for function in (sld_loss, SLDLoss.__init__):
        parameters = inspect.signature(function).parameters
        assert tuple(parameters["temperatures"].default) == tuple(SLD_NODE["TEMPERATURES"])
        assert parameters["gamma"].default == SLD_NODE["GAMMA"]
        assert parameters["student_swap"].default is SLD_NODE["STUDENT_SWAP"]
        assert parameters["detach_pseudo_teacher"].default is SLD_NODE["DETACH_PSEUDO_TEACHER"]
        assert parameters["teacher_swap"].default is True  # SLD's own LOGITS.TEACHER_SWAP


def test_the_config_node_is_the_defaults_and_the_moved_keys():
    from slkd.host.config import sld_node

    node = sld_node()
    assert {key: _plain(node[key]) for key in SLD_NODE} == SLD_NODE
    assert set(node) == set(SLD_NODE) | set(MOVED_SLD_KEYS)
    assert all(node[key] is None for key in MOVED_SLD_KEYS)


def test_the_readme_table_is_the_defaults():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("The `SLD` node and its defaults"):]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table.split("\n\n", 2)[1], flags=re.M))
    assert set(rows) == set(SLD_NODE)
    for key, cell in rows.items():
        expected = SLD_NODE[key]
        if isinstance(expected, list):
            assert [float(v) for v in cell.strip(" []").split(",")] == expected, key
        else:
            assert cell.strip() == str(expected), key


def test_the_benchmark_scripts_take_the_defaults():
    for script in ("speed/common.py", "loss_host_time.py"):
        text = (ROOT / "benchmarks" / script).read_text()
        assert "SLD_DEFAULTS" in text and "(1.0, 2.0, 3.0" not in text, script
