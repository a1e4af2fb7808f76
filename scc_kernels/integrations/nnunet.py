"""nnU-Net v2 trainers whose loss is nnU-Net's own Dice + CE plus λ·SCC at every output scale.

    python -m scc_kernels nnunet-install            # once: lets nnU-Net find the trainers by name
    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerSCC

Each scale's SCC term gets that scale's deep-supervision weight; change λ or the SCC options in a
subclass (`class MyTrainer(nnUNetTrainerSCC): scc_weight = 0.2`). README.md, "Use it with nnU-Net".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from scc_kernels import SCCLoss

# `from scc_kernels.integrations.nnunet import *` is what nnunet-install writes into nnU-Net
__all__ = ["nnUNetTrainerSCC", "nnUNetTrainerSCC_smoke"]


class SpatialPlusSCC(torch.nn.Module):
    """L = L_spatial + λ·L_SCC at one output scale."""

    def __init__(self, spatial: torch.nn.Module, scc: SCCLoss, scc_weight: float) -> None:
        super().__init__()
        self.spatial = spatial
        self.scc = scc
        self.scc_weight = scc_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.spatial(output, target) + self.scc_weight * self.scc(output, target)


def add_scc(loss: torch.nn.Module, scc: SCCLoss, scc_weight: float) -> torch.nn.Module:
    """nnU-Net's loss with λ·SCC added at each output scale, under nnU-Net's own scale weights."""
    if isinstance(loss, DeepSupervisionWrapper):
        loss.loss = SpatialPlusSCC(loss.loss, scc, scc_weight)
        return loss
    return SpatialPlusSCC(loss, scc, scc_weight)


class nnUNetTrainerSCC(nnUNetTrainer):
    """nnU-Net's default trainer with L = L_DiceCE + λ·L_SCC (SPEC.md), deep supervision as nnU-Net's."""

    scc_weight: float = 0.5  # λ
    scc_spectrum: str = "amplitude"
    scc_bands: int | None = None
    scc_band_weights: Sequence[float] | None = None
    scc_batch: bool = False
    # Background off, as nnU-Net's Dice (do_bg=False): away from the zero frequency the background's
    # spectrum is minus the foreground classes' summed spectrum, so its r would count them again.
    scc_include_background: bool = False

    def _build_loss(self) -> torch.nn.Module:
        if self.label_manager.has_regions:
            raise NotImplementedError(
                f"{type(self).__name__}: region-based training (sigmoid outputs) is not supported"
            )
        return add_scc(super()._build_loss(), self._build_scc_loss(), self.scc_weight)

    def _build_scc_loss(self) -> SCCLoss:
        # nnU-Net's targets are (B, 1, *S) label maps, float or integer; the ignore label (if the
        # dataset has one) is the largest label, never a network output
        return SCCLoss(
            softmax=True,
            to_onehot_y=True,
            include_background=self.scc_include_background,
            spectrum=self.scc_spectrum,
            bands=self.scc_bands,
            band_weights=self.scc_band_weights,
            ignore_index=self.label_manager.ignore_label,
            batch=self.scc_batch,
            # under nnU-Net's DDP, r over every rank's batch, as its batch Dice (ddp=self.is_ddp) does
            sync_batch=self.scc_batch and self.is_ddp,
        )


class nnUNetTrainerSCC_smoke(nnUNetTrainerSCC):
    """nnUNetTrainerSCC for smoke tests: one epoch of two training and one validation iteration."""

    # nnU-Net records __init__'s parameters by name (inspect.signature): they must be spelled out
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's own signature)
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
