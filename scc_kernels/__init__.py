"""scc_kernels: the Spectral Correlation Coefficient loss (SPEC.md) with fast GPU backends."""

from __future__ import annotations

from ._cache import clear_caches
from .functional import scc_loss, spectral_correlation
from .loss import SCCLoss
from .planning import plan

__version__ = "0.1.0"
__all__ = [
    "SCCLoss",
    "__version__",
    "available_backends",
    "clear_caches",
    "plan",
    "scc_loss",
    "spectral_correlation",
]


def available_backends() -> dict[str, dict[str, object]]:
    """For every backend: whether it can run here and, if not, why (and what to install)."""
    from .backends.registry import info

    return {name: {"available": reason is None, "reason": reason} for name, reason in info().items()}
