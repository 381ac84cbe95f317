"""Pure-torch losses: no mdistiller, no config.

The public API, importable from here: SLD (:mod:`slkd.losses.sld`), MLKD as released
(:mod:`slkd.losses.mlkd`), the logit transforms (:mod:`slkd.losses.logits`) and the error
their input checks raise.
"""

from slkd.errors import LossInputError
from slkd.losses.logits import standardize_logits, transform_logits
from slkd.losses.mlkd import batch_consistency, class_consistency, kd_term, mlkd_losses
from slkd.losses.sld import DEFAULT_TEMPERATURES, SLD_DEFAULTS, SLDLoss, SLDTerms, sld_loss, sld_terms, swap_logits

__all__ = [
    "DEFAULT_TEMPERATURES",
    "LossInputError",
    "SLD_DEFAULTS",
    "SLDLoss",
    "SLDTerms",
    "batch_consistency",
    "class_consistency",
    "kd_term",
    "mlkd_losses",
    "sld_loss",
    "sld_terms",
    "standardize_logits",
    "swap_logits",
    "transform_logits",
]
