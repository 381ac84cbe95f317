"""slkd.shipped: --cfg takes a file relative to the working directory first, then a name among
the shipped configs; a name matching nothing lists the closest ones (one line)."""

from pathlib import Path

import pytest

from slkd.errors import ConfigError
from slkd.shipped import configs_folder, resolve_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
NAME = "cifar100/sld/res32x4_res8x4.yaml"


def test_in_a_checkout_the_top_level_folder_is_the_shipped_one():
    assert configs_folder() == ROOT / "mdistiller_configs"
    assert NAME in shipped_configs() and "imagenet/r34_r18/sld.yaml" in shipped_configs()


def test_a_name_resolves_to_the_shipped_config_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(NAME) == ROOT / "mdistiller_configs" / NAME
    assert resolve_config("mdistiller_configs/" + NAME) == ROOT / "mdistiller_configs" / NAME  # as the README writes it


def test_a_file_in_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / NAME
    mine.parent.mkdir(parents=True)
    mine.write_text("SLD:\n  GAMMA: 3\n")
    assert resolve_config(NAME) == Path(NAME) and resolve_config(NAME).resolve() == mine


def test_an_absolute_path_is_taken_as_it_is(tmp_path):
    assert resolve_config(tmp_path / "nope.yaml") == tmp_path / "nope.yaml"  # load_config names it


@pytest.mark.parametrize(
    "name, closest",
    [
        ("cifar100/sld/res32x4_res8x.yaml", "cifar100/sld/res32x4_res8x4.yaml"),
        ("sld/wrn40_2_wrn16_2.yaml", "cifar100/sld/wrn40_2_wrn_16_2.yaml"),
        ("imagenet/r34_r18/sld", "imagenet/r34_r18/sld.yaml"),
    ],
)
def test_a_name_that_matches_nothing_lists_the_closest_shipped_configs(tmp_path, monkeypatch, name, closest):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        resolve_config(name)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config file {name} is neither a file here ({tmp_path}) nor one of slkd's shipped configs; closest shipped: ")
    listed = message.split("closest shipped: ")[1].split(", ")
    assert len(listed) == 5 and set(listed) <= set(shipped_configs())
    assert closest in listed
