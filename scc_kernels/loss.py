"""SCCLoss: the nn.Module, with MONAI's argument names (monai.losses.DiceLoss style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import functional
from ._options import make_options


class SCCLoss(torch.nn.Module):
    """Spectral Correlation Coefficient loss, `1 - r` (SPEC §3), as a drop-in MONAI-style loss.

    Example::

        loss = SCCLoss(softmax=True, to_onehot_y=True)  # logits (B, C, H, W), labels (B, 1, H, W)
        value = loss(logits, labels)

    Options are checked here, once; tensors are checked on every call.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        spectrum: str = "amplitude",
        bands: int | None = None,
        band_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        batch: bool = False,
        sync_batch: bool = False,
        process_group=None,
        eps: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.options = make_options(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            spectrum=spectrum,
            bands=bands,
            band_weights=band_weights,
            ignore_index=ignore_index,
            batch=batch,
            sync_batch=sync_batch,
            process_group=process_group,
            eps=eps,
            reduction=reduction,
            backend=backend,
        )
        if isinstance(other_act, torch.nn.Module):  # a submodule: its parameters train and move with .to()
            self.other_act = other_act

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return functional.loss(input, target, self.options)

    def extra_repr(self) -> str:
        o = self.options
        return f"spectrum={o.spectrum!r}, bands={o.bands}, activation={o.activation!r}, backend={o.backend!r}"
