"""How the Triton DFT kernels (triton_dft.py) tile a slice, which slices they run, and their FLOPs.

Plain Python, no triton: the cost model (scc_kernels.cost_model) reads these facts on any machine.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

MAX_SIDE = {2: 512, 3: 128}  # largest axis length per spatial rank the kernels are checked for


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, 1 << max(n - 1, 0).bit_length()))


class Blocks(NamedTuple):
    """The kernels' block constexprs (BKH, BKW, BH, BW are `tl.dot` dims: at least 16)."""

    BKD: int  # frequency tile: planes (1 in 2D)
    BKH: int  # frequency tile: rows
    BKW: int  # frequency tile: half-spectrum columns
    BH: int  # pixel rows per loop step
    BW: int  # pixel columns per loop step


class TilePlan(NamedTuple):
    """How the kernels tile a slice: `plan_tiles(spatial)`."""

    dims: tuple[int, int, int]  # (D, H, W); D = 1 in 2D
    tiles: tuple[int, int, int]  # frequency tiles along D, H and the half W axis
    blocks: Blocks
    three_d: bool

    @property
    def num_tiles(self) -> int:  # per slice: the kernels' grid axis 1
        return math.prod(self.tiles)


@functools.lru_cache(maxsize=64)
def plan_tiles(spatial: tuple[int, ...]) -> TilePlan:
    """Tile sizes and tile counts for a 2D or 3D slice."""
    depth, height, width = (1, *spatial) if len(spatial) == 2 else spatial
    half = width // 2 + 1
    bw = _pow2(width, 16, 32)
    if len(spatial) == 2:
        blocks = Blocks(BKD=1, BKH=_pow2(height, 16, 64), BKW=_pow2(half, 16, 32), BH=16, BW=bw)
    else:  # 3D: stage 1 is redone for every (kd, kh) tile, so BKD·BKH as large as registers allow
        blocks = Blocks(BKD=_pow2(depth, 1, 4), BKH=_pow2(height, 16, 32), BKW=16, BH=16, BW=bw)
    tiles = (-(-depth // blocks.BKD), -(-height // blocks.BKH), -(-half // blocks.BKW))
    return TilePlan((depth, height, width), tiles, blocks, len(spatial) == 3)


def flop_count(spatial: tuple[int, ...]) -> tuple[int, int]:
    """(forward, backward) FLOPs per slice as the kernels run them, padding included (docs/triton-dft.md)."""
    plan = plan_tiles(tuple(spatial))
    depth, height, width = plan.dims
    tiles_d, tiles_h, tiles_w = plan.tiles
    padded_d, padded_h, padded_w = tiles_d * plan.blocks.BKD, tiles_h * plan.blocks.BKH, tiles_w * plan.blocks.BKW
    n = depth * height * width
    stage1 = 2 * 2 * n * padded_w * tiles_h * tiles_d  # one signal
    stage2 = 4 * 2 * depth * height * padded_h * padded_w * tiles_d
    stage3 = 4 * 2 * depth * padded_d * padded_h * padded_w if plan.three_d else 0
    forward = 2 * (stage1 + stage2 + stage3)
    return forward, forward + stage1 + stage2 + stage3


def supported(spatial: tuple[int, ...]) -> bool:
    """Whether the DFT kernels run a slice of this spatial shape (2D or 3D, sides up to MAX_SIDE)."""
    return len(spatial) in MAX_SIDE and max(spatial) <= MAX_SIDE[len(spatial)]
