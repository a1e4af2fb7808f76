"""Radial frequency bands (SPEC §3 step 5) and the Hermitian weights of the rfft half grid.

Every backend and the reference take their band index from here, decided in exact integer
arithmetic so that a bin on a band boundary lands in the outer band on every machine
(docs/numerics.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._cache import TableCache


def frequency_indices(n: int, half: bool = False) -> torch.Tensor:
    """Integer frequency index k of every bin along an axis of n samples, int64: fftfreq(n)·n
    (0, 1, …, −1), or 0 … n//2 for the last axis of the rfftn half grid."""
    if half:
        return torch.arange(n // 2 + 1)
    return (torch.arange(n) + n // 2) % n - n // 2


@TableCache
def band_index(spatial: tuple[int, ...], num_bands: int, half: bool = False) -> torch.Tensor:
    """Band of every bin, shape `spatial` (full grid) or the rfftn half grid (`half=True`), int64.

    Band j of a bin with frequency indices k_d is the largest j ≤ K − 1 with
    j²·D ≤ 4·K²·Σ_d (k_d/n_d)² (K = num_bands, D = len(spatial)). With P = Π_d n_d², the
    integer S = Σ_d k_d²·(P/n_d²) is exact in int64, and the condition reads S ≥ τ_j with
    τ_j = ⌈j²·D·P / (4K²)⌉, so a boundary bin (S = τ_j) lands in the outer band j.
    """
    dims, K = len(spatial), num_bands
    scale = math.prod([n * n for n in spatial])
    if dims * scale // 4 >= 2**63 or K >= 2**15:  # S or j²·r below would overflow int64
        raise ValueError(
            f"exact band tables need D·Π n_d²/4 < 2**63 (about 2**31 bins a slice) and bands < 32768 "
            f"(int64 arithmetic); got spatial {tuple(spatial)}, bands {K}"
        )
    squares = torch.zeros((), dtype=torch.int64)  # + each axis's term (int64): the (broadcast) sum
    for axis, n in enumerate(spatial):
        k = frequency_indices(n, half and axis == dims - 1)
        term = k * k * (scale // (n * n))  # k²·P/n², at most P/4
        squares = squares + term.view((1,) * axis + (-1,) + (1,) * (dims - axis - 1))
    # τ_j = j²·q + ⌈j²·r/(4K²)⌉ with D·P = q·4K² + r: no product beyond D·P/4 or 4K⁴
    quotient, remainder = dims * scale // (4 * K * K), dims * scale % (4 * K * K)
    j2 = torch.arange(1, K) ** 2
    thresholds = j2 * quotient - (-(j2 * remainder) // (4 * K * K))
    return torch.searchsorted(thresholds, torch.broadcast_to(squares, _grid(spatial, half)).contiguous(), right=True)


def _grid(spatial: tuple[int, ...], half: bool) -> tuple[int, ...]:
    return (*spatial[:-1], spatial[-1] // 2 + 1) if half else tuple(spatial)


def mirror(Z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Z at the mirror frequency: bin k ← bin −k (mod n) along every axis in `dims`.

    A real signal's exact transform has Z[−k] = conj(Z[k]); (Z + mirror(Z).conj()) / 2 makes a
    rounded one exactly Hermitian."""
    return Z.flip(dims).roll((1,) * len(dims), dims) if dims else Z


@TableCache
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


@TableCache
def half_grid_tables(spatial: tuple[int, ...], num_bands: int, device: torch.device) -> HalfGridTables:
    """The tables for one shape, made once per device (O(bins) memory, no copy per call)."""
    # the uncached builders: only this entry holds the tables (none left behind on the CPU)
    band = band_index.build(spatial, num_bands, half=True).reshape(-1)
    weight = hermitian_weights.build(spatial).reshape(-1)
    counts = torch.zeros(num_bands, dtype=torch.float64).index_add_(0, band, weight)
    spread = band * SPREAD + torch.arange(band.numel()) % SPREAD
    band = band.to(device)
    weight = weight.to(device=device, dtype=torch.float32)
    return HalfGridTables(band, band.int(), spread.to(device), weight, counts.to(device))
