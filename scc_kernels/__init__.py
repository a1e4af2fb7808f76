"""scc_kernels: the Spectral Correlation Coefficient loss (SPEC.md) with fast GPU backends."""

from __future__ import annotations

from .functional import scc_loss, spectral_correlation
from .loss import SCCLoss

__version__ = "0.1.0"
__all__ = ["SCCLoss", "backends", "scc_loss", "spectral_correlation", "__version__"]


# `backends` the function replaces `backends` the subpackage as an attribute of this package;
# the subpackage's modules stay importable by name (`from scc_kernels.backends import load`).
def backends() -> dict[str, dict[str, object]]:
    """For every backend: whether it can run here and, if not, why (and what to install)."""
    from .backends import info

    return {name: {"available": reason is None, "reason": reason} for name, reason in info().items()}
