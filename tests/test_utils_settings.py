"""slkd.utils.settings: which config differences count as another training."""

import yaml
from yacs.config import CfgNode as CN

from slkd.utils.settings import EXECUTION_KEYS, changed_settings, flatten, is_under


def _dump(**nodes):
    return CN(nodes, new_allowed=True).dump()


def test_changed_values_are_named_in_key_order_with_both_values():
    saved = _dump(SOLVER={"LR": 0.05, "EPOCHS": 240}, SLKD={"SEED": 0, "AMP": "none"})
    current = _dump(SOLVER={"LR": 0.1, "EPOCHS": 240}, SLKD={"SEED": 0, "AMP": "bf16"})
    assert changed_settings(saved, current) == ["SLKD.AMP none (now bf16)", "SOLVER.LR 0.05 (now 0.1)"]


def test_keys_under_may_change_and_keys_of_one_side_only_are_not_compared():
    saved = _dump(SOLVER={"LR": 0.05, "EPOCHS": 240}, SLKD={"LOADER": {"WORKERS": 2}})
    current = _dump(SOLVER={"LR": 0.05, "EPOCHS": 480}, SLKD={"LOADER": {"WORKERS": 15}, "NEW_OPTION": True})
    assert changed_settings(saved, current, ("SOLVER.EPOCHS", "SLKD.LOADER")) == []
    assert changed_settings(saved, current) == ["SLKD.LOADER.WORKERS 2 (now 15)", "SOLVER.EPOCHS 240 (now 480)"]


def test_a_tuple_and_the_list_it_is_dumped_as_are_the_same():
    assert changed_settings(_dump(SOLVER={"LR_DECAY_STAGES": (150, 180)}), yaml.safe_dump({"SOLVER": {"LR_DECAY_STAGES": [150, 180]}})) == []


def test_is_under_matches_whole_names_only():
    assert is_under("SLKD.LOADER.WORKERS", EXECUTION_KEYS) and is_under("LOG.PREFIX", EXECUTION_KEYS)
    assert not is_under("SLKD.LOADERS", ("SLKD.LOADER",)) and not is_under("SOLVER.LR", EXECUTION_KEYS)
    assert flatten({"A": {"B": 1, "C": {"D": [2]}}, "E": None}) == {"A.B": 1, "A.C.D": [2], "E": None}
