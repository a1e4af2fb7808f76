"""Where the compiled backends' sources are: csrc/ in a checkout, scc_kernels/csrc once installed."""

from __future__ import annotations

from pathlib import Path


def csrc_dir() -> Path:
    """The C and CUDA sources: the installed package's copy (a wheel), else the repository's csrc/
    (a checkout, or the editable install, which maps scc_kernels.csrc there without copying it)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "csrc"
    return installed if installed.is_dir() else package.parent / "csrc"
