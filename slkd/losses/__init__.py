"""Pure-torch losses: no mdistiller, no config.

The public API, importable from here: SLD (:mod:`slkd.losses.sld`), MLKD as released
(:mod:`slkd.losses.mlkd`) and the error their input checks raise.
"""

from slkd.errors import LossInputError
from slkd.losses.mlkd import batch_consistency, class_consistency, kd_term, mlkd_losses
from slkd.losses.sld import DEFAULT_TEMPERATURES, SLDLoss, SLDTerms, sld_loss, sld_terms, swap_logits

__all__ = [
    "DEFAULT_TEMPERATURES",
    "LossInputError",
    "SLDLoss",
    "SLDTerms",
    "batch_consistency",
    "class_consistency",
    "kd_term",
    "mlkd_losses",
    "sld_loss",
    "sld_terms",
    "swap_logits",
]
