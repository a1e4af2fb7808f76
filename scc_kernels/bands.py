"""Radial frequency bands (SPEC §3 step 5) and the Hermitian weights of the rfft half grid.

Every backend takes its band index from here, so that a bin on a band boundary falls in the
same band everywhere (the floor is computed once, in float64).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch


@functools.lru_cache(maxsize=64)
def band_index(spatial: tuple[int, ...], num_bands: int, half: bool = False) -> torch.Tensor:
    """Band of every bin, shape `spatial` (full grid) or the rfftn half grid (`half=True`)."""
    freqs = [torch.fft.fftfreq(n, dtype=torch.float64) for n in spatial]
    if half:
        freqs[-1] = freqs[-1][: spatial[-1] // 2 + 1].abs()
    grids = torch.meshgrid(*freqs, indexing="ij")
    radius = torch.sqrt(sum(g * g for g in grids))
    radius_max = 0.5 * math.sqrt(len(spatial))
    return torch.floor(num_bands * radius / radius_max).clamp_(max=num_bands - 1).long()


@functools.lru_cache(maxsize=64)
def hermitian_weights(spatial: tuple[int, ...]) -> torch.Tensor:
    """How many full-spectrum bins each rfftn bin stands for: 1 or 2, shape of the half grid.

    Along the last axis, bin 0 and (for even n) bin n/2 are their own mirror image; every other
    bin also stands for its conjugate partner.
    """
    n = spatial[-1]
    last = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    last[0] = 1.0
    if n % 2 == 0:
        last[-1] = 1.0
    half_shape = (*spatial[:-1], n // 2 + 1)
    return last.expand(half_shape).contiguous()


SPREAD = 8


class HalfGridTables(NamedTuple):
    """What a transform backend needs to reduce rfftn bins by band, flat over the half grid."""

    band: torch.Tensor  # (M,) int64: band of each rfftn bin (torch's index ops are fastest with int64)
    band32: torch.Tensor  # (M,) int32: the same, for the kernels
    # (M,) int64: band·SPREAD + bin mod SPREAD. torch's CPU index_add_ runs ~15× slower into a
    # few columns than into many; a segment sum into K·SPREAD columns, then over SPREAD, does not.
    band_spread: torch.Tensor
    weight: torch.Tensor  # (M,) float32: how many full-spectrum bins it stands for (1 or 2)
    counts: torch.Tensor  # (K,) float64: full-spectrum bins per band


@functools.lru_cache(maxsize=64)
def half_grid_tables(spatial: tuple[int, ...], num_bands: int, device: torch.device) -> HalfGridTables:
    """The tables for one shape, made once per device (O(bins) memory, no copy per call)."""
    band = band_index(spatial, num_bands, half=True).reshape(-1)
    weight = hermitian_weights(spatial).reshape(-1)
    counts = torch.zeros(num_bands, dtype=torch.float64).index_add_(0, band, weight)
    spread = band * SPREAD + torch.arange(band.numel()) % SPREAD
    band = band.to(device)
    weight = weight.to(device=device, dtype=torch.float32)
    return HalfGridTables(band, band.int(), spread.to(device), weight, counts.to(device))
