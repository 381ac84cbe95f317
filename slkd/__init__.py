"""slkd: Swapped Logit Distillation (SLD) for mdistiller.

The loss needs nothing but torch::

    from slkd import sld_loss, SLDLoss, swap_logits

``register()`` adds SLD (and MLKD where the host lacks it) to an installed mdistiller; it is
also the ``mdistiller.plugins`` entry point, so a host that loads plugins calls it itself.
"""

from slkd.losses.sld import DEFAULT_TEMPERATURES, SLDLoss, sld_loss, swap_logits

__version__ = "0.1.0"


def register():
    """Add slkd's config nodes, distillers and trainer to mdistiller; idempotent.

    Imports mdistiller lazily; raises :class:`slkd.host.registry.HostNotFound` with install
    instructions when it is missing. Returns the names that were registered.
    """
    from slkd.host.registry import register as register_with_host

    return register_with_host()


__all__ = ["DEFAULT_TEMPERATURES", "SLDLoss", "sld_loss", "swap_logits", "register", "__version__"]
