"""SCCLoss: the nn.Module, with MONAI's argument names (monai.losses.DiceLoss style)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from . import functional
from ._options import SCCOptions, documented, make_options, with_other_act


class SCCLoss(torch.nn.Module):
    """Spectral Correlation Coefficient loss, 1 - r (SPEC §3), as a drop-in MONAI-style loss:
    add it to a spatial loss, `DiceCELoss(...)(x, y) + λ * SCCLoss(...)(x, y)`.

    Example::

        loss = SCCLoss(softmax=True, to_onehot_y=True)  # logits (B, C, H, W), labels (B, 1, H, W)
        value = loss(logits, labels)

    The options are checked here, once; the tensors on every call. `forward(input, target)`
    takes and returns what `scc_loss` does.
    """

    @documented
    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
        spectrum: str = "amplitude",
        bands: int | None = None,
        band_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        batch: bool = False,
        sync_batch: bool = False,
        process_group: object | None = None,
        eps: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        """
        Args:
            {options}
            reduction: "mean" or "sum" over the per-(item, class) losses, or "none" to return
                them, shape (B, C') or (C',) with `batch=True`.

        Raises:
            {raises}
        """
        super().__init__()
        # keyword by keyword, not from locals() (see functional.scc_loss)
        self.options = make_options(
            spectrum=spectrum,
            bands=bands,
            band_weights=band_weights,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            to_onehot_y=to_onehot_y,
            include_background=include_background,
            ignore_index=ignore_index,
            batch=batch,
            sync_batch=sync_batch,
            process_group=process_group,
            eps=eps,
            reduction=reduction,
            backend=backend,
        )
        # an attribute (an nn.Module becomes a submodule: its parameters train and move with .to()),
        # read at every call, so that reassigning `loss.other_act` takes effect as the repr shows
        self.other_act = other_act

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        options = self.options
        if self.other_act is not options.other_act:  # reassigned since construction: checked as then
            options = with_other_act(options, self.other_act)
        return functional.loss(input, target, options)

    def extra_repr(self) -> str:
        """Every option that differs from its default (`other_act` shows as the submodule or by name)."""
        defaults = SCCOptions()
        changed = []
        for field in dataclasses.fields(SCCOptions):
            value = getattr(self.options, field.name)
            if field.name == "other_act" or value == getattr(defaults, field.name):
                continue
            changed.append(f"{field.name}={value!r}")
        if self.other_act is not None and "other_act" not in self._modules:
            changed.append(f"other_act={getattr(self.other_act, '__name__', self.other_act)!r}")
        return ", ".join(changed)
