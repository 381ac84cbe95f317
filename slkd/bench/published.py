"""Published CIFAR-100 top-1 (%) to set beside the benchmark's own numbers (docs/method.md, section 6).

These are the baselines' authors' numbers, not slkd's: the report shows them in their own
column with their source, next to the runs' numbers, and never mixes them in.
"""

from __future__ import annotations

# Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024: the results table
# of sunshangquan/logit-standardization-KD's README. Their settings for these runs are
# slkd's mdistiller_configs/cifar100/ls/{kd,dkd,mlkd}/<pair>.yaml.
LS_SOURCE = "logit-standardization README (Sun et al., CVPR 2024), settings in mdistiller_configs/cifar100/ls/"

SOURCES = {
    "KD": "mdistiller README (DKD paper), mean of 5 runs",
    "DKD": "mdistiller README (DKD paper), mean of 5 runs",
    "MLKD": "logit-standardization README",
    "KD+LS": LS_SOURCE,
    "DKD+LS": LS_SOURCE,
    "MLKD+LS": LS_SOURCE,
}

# pair (slkd's config names) -> method -> top-1
TOP1 = {
    "res32x4_res8x4": {"KD": 73.33, "DKD": 76.32, "MLKD": 77.08, "KD+LS": 76.62, "DKD+LS": 77.01, "MLKD+LS": 78.28},
    "vgg13_vgg8": {"KD": 72.98, "DKD": 74.68, "MLKD": 75.18, "KD+LS": 74.36, "DKD+LS": 74.81, "MLKD+LS": 75.22},
    "wrn40_2_wrn_40_1": {"KD": 73.54, "DKD": 74.81, "MLKD": 75.35, "KD+LS": 74.37, "DKD+LS": 74.89, "MLKD+LS": 75.56},
    "wrn40_2_wrn_16_2": {"KD": 74.92, "DKD": 76.23, "MLKD": 76.63, "KD+LS": 76.11, "DKD+LS": 76.39, "MLKD+LS": 76.95},
    "res56_res20": {"KD": 70.66, "DKD": 71.97, "MLKD": 72.19, "KD+LS": 71.43, "DKD+LS": 72.32, "MLKD+LS": 72.33},
    "res110_res32": {"KD": 73.08, "DKD": 74.11, "MLKD": 74.11, "KD+LS": 74.17, "DKD+LS": 74.29, "MLKD+LS": 74.32},
}


def published(pair: str, method: str) -> tuple[float, str] | None:
    """``(top-1, source)`` published for ``method`` on ``pair``, or None when there is none."""
    value = TOP1.get(pair, {}).get(method)
    return None if value is None else (value, SOURCES[method])
