"""The report's statistics: mean ± standard deviation over seeds, and the difference of two
variants with a confidence interval.

For a variant ``a`` and a baseline ``b`` (top-1 per seed), the difference is
``d = mean(a) - mean(b)`` and its interval ``d ± t_{1-alpha/2, df} * se``:

- **paired** (both ran the same seeds, at least two): with ``slkd``'s ``SLKD.SEED`` a seed
  fixes the student's initial weights and the data order, so the per-seed differences
  ``d_i = a_i - b_i`` are the samples: ``se = sd(d_i) / sqrt(n)``, ``df = n - 1``
  (``scipy.stats.ttest_rel``'s interval);
- **Welch** (otherwise, at least two seeds each): ``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` and
  Welch-Satterthwaite's ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``
  (``scipy.stats.ttest_ind(equal_var=False)``'s interval).

With fewer seeds there is no interval (:attr:`Difference.kind` ``"none"``). Standard
deviations are sample ones (``ddof = 1``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

PAIRED, WELCH, NONE = "paired", "Welch", "none"


def mean_std(values) -> tuple[float, float | None]:
    """``(mean, sample standard deviation)`` of ``values``; the deviation is None for one value."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class Difference:
    """``estimate = mean(variant) - mean(baseline)`` with its ``confidence`` interval
    ``[low, high]`` (None when ``kind`` is ``"none"``) and the t distribution's ``df``."""

    estimate: float
    low: float | None
    high: float | None
    kind: str  # PAIRED, WELCH or NONE
    df: float | None
    confidence: float

    def describe(self) -> str:
        """``+1.23 [+0.40, +2.06] (paired)``, or ``+1.23 (no CI: ...)``."""
        if self.kind == NONE:
            return f"{self.estimate:+.2f} (no CI: fewer than 2 seeds)"
        return f"{self.estimate:+.2f} [{self.low:+.2f}, {self.high:+.2f}] ({self.kind})"


def difference(variant: dict, baseline: dict, confidence: float = 0.95) -> Difference:
    """The difference of two variants' values, each a ``{seed: value}`` dict; paired by seed
    when both hold the same seeds (two or more), Welch's otherwise."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}: it must lie strictly between 0 and 1")
    if not variant or not baseline:
        raise ValueError("difference needs at least one value on each side")
    a, b = [float(v) for v in variant.values()], [float(v) for v in baseline.values()]
    estimate = statistics.fmean(a) - statistics.fmean(b)
    if set(variant) == set(baseline) and len(variant) >= 2:
        deltas = [float(variant[seed]) - float(baseline[seed]) for seed in sorted(variant)]
        se, df, kind = statistics.stdev(deltas) / math.sqrt(len(deltas)), len(deltas) - 1.0, PAIRED
    elif len(a) >= 2 and len(b) >= 2:
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        se, kind = math.sqrt(va + vb), WELCH
        # both sides without spread: df is 0/0; any df gives the zero-width interval
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else float(len(a) + len(b) - 2)
    else:
        return Difference(estimate, None, None, NONE, None, confidence)
    half = float(student_t.ppf(0.5 + confidence / 2.0, df)) * se
    return Difference(estimate, estimate - half, estimate + half, kind, df, confidence)
