"""slkd.bench.stats against scipy.stats on the same numbers: mean ± std, the paired
difference's interval (ttest_rel) and Welch's (ttest_ind, equal_var=False)."""

import numpy as np
import pytest
from scipy import stats as sps

from slkd.bench.stats import NONE, PAIRED, WELCH, difference, mean_std

VARIANT = {0: 76.12, 1: 76.85, 2: 75.93, 3: 76.40}
BASELINE = {0: 73.30, 1: 73.95, 2: 73.41, 3: 72.88}


def test_mean_std_is_numpys_with_ddof_1():
    mean, std = mean_std(VARIANT.values())
    values = np.array(list(VARIANT.values()), dtype=np.float64)
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    assert std == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert mean_std([71.5]) == (71.5, None)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_same_seeds_give_the_paired_interval_of_ttest_rel(confidence):
    result = difference(VARIANT, BASELINE, confidence)
    seeds = sorted(VARIANT)
    reference = sps.ttest_rel([VARIANT[s] for s in seeds], [BASELINE[s] for s in seeds]).confidence_interval(confidence)
    assert result.kind == PAIRED and result.df == len(seeds) - 1
    assert result.estimate == pytest.approx(np.mean(list(VARIANT.values())) - np.mean(list(BASELINE.values())), abs=1e-12)
    assert (result.low, result.high) == (pytest.approx(reference.low, abs=1e-10), pytest.approx(reference.high, abs=1e-10))


def test_pairing_follows_the_seeds_not_the_order():
    shuffled = {seed: BASELINE[seed] for seed in (3, 1, 0, 2)}
    assert difference(VARIANT, shuffled) == difference(VARIANT, BASELINE)
    # pairing by seed is narrower here than ignoring it (the seeds share their data order)
    welch = sps.ttest_ind(list(VARIANT.values()), list(BASELINE.values()), equal_var=False).confidence_interval()
    result = difference(VARIANT, BASELINE)
    assert result.high - result.low != pytest.approx(welch.high - welch.low)


def test_other_seeds_give_welchs_interval_of_ttest_ind():
    baseline = {5: 73.3, 6: 73.95, 7: 73.41}
    result = difference(VARIANT, baseline)
    reference = sps.ttest_ind(list(VARIANT.values()), list(baseline.values()), equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert result.kind == WELCH
    assert result.df == pytest.approx(reference.df, rel=1e-12)
    assert (result.low, result.high) == (pytest.approx(interval.low, abs=1e-10), pytest.approx(interval.high, abs=1e-10))


def test_seeds_that_overlap_only_in_part_are_not_paired():
    baseline = {0: 73.3, 1: 73.95, 9: 73.41}
    assert difference(VARIANT, baseline).kind == WELCH


def test_fewer_than_two_seeds_give_no_interval():
    one = difference({0: 76.0}, {0: 73.0})
    assert (one.kind, one.low, one.high, one.estimate) == (NONE, None, None, 3.0)
    assert difference({0: 76.0}, BASELINE).kind == NONE
    assert "no CI" in one.describe()


def test_no_spread_gives_a_zero_width_interval():
    result = difference({0: 75.0, 1: 76.0}, {0: 74.0, 1: 75.0})
    assert (result.kind, result.low, result.high) == (PAIRED, 1.0, 1.0)
    welch = difference({0: 75.0, 1: 75.0}, {2: 74.0, 3: 74.0})
    assert (welch.kind, welch.low, welch.high) == (WELCH, 1.0, 1.0)


def test_describe_names_the_kind():
    text = difference(VARIANT, BASELINE).describe()
    assert text.startswith("+") and text.endswith("(paired)") and "[" in text


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="between 0 and 1"):
        difference(VARIANT, BASELINE, confidence=95)
    with pytest.raises(ValueError, match="one value on each side"):
        difference({}, BASELINE)
