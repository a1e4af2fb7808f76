"""Band tables (SPEC §3 step 5) against the definition in exact rational arithmetic, and the
byte-bounded caches that hold them."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

import scc_kernels
from scc_kernels._cache import tensor_bytes
from scc_kernels.bands import band_index, half_grid_tables, hermitian_weights

SHAPES = [(16, 16), (7,), (12, 10, 9), (31, 17), (5, 1), (1, 9), (64, 48), (8, 8, 8), (2,), (3, 5, 1, 2)]


def exact_band(indices: tuple[int, ...], spatial: tuple[int, ...], num_bands: int) -> int:
    """SPEC §3 step 5 in Fractions: the largest j ≤ K − 1 with j²·D ≤ 4·K²·Σ_d (k_d/n_d)²."""
    radius2 = sum(Fraction(k, n) ** 2 for k, n in zip(indices, spatial))
    j = 0
    while j + 1 < num_bands and (j + 1) ** 2 * len(spatial) <= 4 * num_bands**2 * radius2:
        j += 1
    return j


def fftfreq_index(i: int, n: int) -> int:
    """numpy.fft.fftfreq(n)[i] · n, an integer."""
    return i if i <= (n - 1) // 2 else i - n


def exact_table(spatial: tuple[int, ...], num_bands: int, half: bool) -> torch.Tensor:
    grid = (*spatial[:-1], spatial[-1] // 2 + 1) if half else spatial
    table = torch.empty(grid, dtype=torch.int64)
    for position in itertools.product(*map(range, grid)):
        indices = tuple(fftfreq_index(i, n) for i, n in zip(position, spatial))
        table[position] = exact_band(indices, spatial, num_bands)
    return table


@pytest.mark.parametrize(
    "spatial",
    [pytest.param(s, marks=pytest.mark.slow) if s == (64, 48) else s for s in SHAPES],
    ids=lambda s: "x".join(map(str, s)),
)
def test_band_tables_are_exact(spatial):
    for num_bands in (1, 2, 3, 4, 7, 16, 64):
        for half in (False, True):
            expected = exact_table(spatial, num_bands, half)
            got = band_index(spatial, num_bands, half=half)
            assert torch.equal(got, expected), f"{spatial}, K={num_bands}, half={half}"


@pytest.mark.parametrize("spatial", [(16, 16), (12, 10, 9), (31, 17), (1, 9), (7,)])
def test_half_grid_counts_are_the_exact_full_spectrum_counts(spatial):
    """The half grid's Hermitian weights add up, band by band, to the full spectrum's exact counts."""
    for num_bands in (4, 9):
        full = exact_table(spatial, num_bands, half=False)
        expected = torch.bincount(full.flatten(), minlength=num_bands).double()
        tables = half_grid_tables(spatial, num_bands, torch.device("cpu"))
        assert torch.equal(tables.counts, expected)
        assert torch.equal(tables.band32, tables.band.int())
    # the example of issue 16: float64 rounding put two boundary bins in band 2 here (on some CPUs)
    assert half_grid_tables((16, 16), 4, torch.device("cpu")).counts.tolist() == [21, 76, 114, 45]
    assert torch.bincount(band_index((16, 16), 4, half=True).flatten()).tolist() == [13, 41, 62, 28]


def test_a_bin_on_a_boundary_belongs_to_the_outer_band():
    """Bin (6, 6) of 16×16 with 4 bands: K·ρ/ρ_max = 4·(6√2/16)/(√2/2) = 3 exactly; float64 gives
    2.9999999999999996 (or 3, depending on the CPU's vector path)."""
    spatial, num_bands = (16, 16), 4
    assert 4 * num_bands**2 * (Fraction(6, 16) ** 2 + Fraction(6, 16) ** 2) == 3**2 * 2  # on the boundary
    table = band_index(spatial, num_bands)
    for row, column in [(6, 6), (-6, 6), (6, -6), (-6, -6)]:
        assert table[row, column] == 3
    assert table[6, 5] == 2  # just inside
    # 1D: bin k sits on boundary j = 2k·K/n; here every bin is on one
    assert band_index((8,), 4).tolist() == [0, 1, 2, 3, 3, 3, 2, 1]


def test_sizes_beyond_exact_int64_arithmetic_are_a_clear_error():
    with pytest.raises(ValueError, match="exact band tables"):
        band_index((2**21, 2**21, 2**21), 4)
    with pytest.raises(ValueError, match="exact band tables"):
        band_index((5,), 2**15)


# --- the caches ----------------------------------------------------------------------------------


@pytest.fixture
def small_budgets():
    """Every table cache with a 64 KiB budget for the test, emptied before and after."""
    caches = scc_kernels._cache._CACHES
    budgets = [cache.budget for cache in caches]
    scc_kernels.clear_caches()
    for cache in caches:
        cache.budget = 64 * 2**10
    yield caches
    for cache, budget in zip(caches, budgets):
        cache.budget = budget
    scc_kernels.clear_caches()


def test_caches_stay_within_their_byte_budget(small_budgets):
    for depth in range(1, 41):  # 40 distinct volumes, each table below the budget
        spatial = (9, 10, depth)
        x = torch.randn(1, 2, *spatial)
        target = torch.randint(0, 2, (1, *spatial))
        for backend in ("reference", "torch"):
            assert torch.isfinite(scc_kernels.scc_loss(x, target, bands=3, backend=backend))
        for cache in small_budgets:
            assert cache.nbytes <= cache.budget, (cache.__name__, depth, cache.nbytes)
    assert 0 < len(half_grid_tables) < 40 and 0 < len(band_index) < 40


def test_the_newest_table_stays_even_above_the_budget(small_budgets):
    first = half_grid_tables((64, 64, 5), 4, torch.device("cpu"))  # ~ 250 KiB, over the 64 KiB budget
    assert len(half_grid_tables) == 1 and half_grid_tables.nbytes == tensor_bytes(first)
    assert half_grid_tables((64, 64, 5), 4, torch.device("cpu")) is first  # kept: no rebuild per call
    half_grid_tables((64, 64, 6), 4, torch.device("cpu"))
    assert len(half_grid_tables) == 1  # the older one went


def test_clear_caches_empties_every_cache():
    band_index((5, 6), 3)
    hermitian_weights((5, 6))
    half_grid_tables((5, 6), 3, torch.device("cpu"))
    assert len(band_index) and len(hermitian_weights) and len(half_grid_tables)
    scc_kernels.clear_caches()
    assert all(len(cache) == 0 and cache.nbytes == 0 for cache in scc_kernels._cache._CACHES)
    assert torch.equal(band_index((5, 6), 3), exact_table((5, 6), 3, half=False))  # rebuilt


def test_a_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCC_KERNELS_TABLE_CACHE_MB", "0.5")
    assert scc_kernels._cache._budget_from_environment() == 2**19
    monkeypatch.setenv("SCC_KERNELS_TABLE_CACHE_MB", "lots")
    with pytest.warns(UserWarning, match="SCC_KERNELS_TABLE_CACHE_MB"):
        assert scc_kernels._cache._budget_from_environment() == 256 * 2**20


def test_cached_tables_are_plain_tensors_whatever_transform_built_them():
    """Built inside torch.func.grad, a table must not be a functorch wrapper (it broke the next transform)."""
    scc_kernels.clear_caches()

    def build_inside(x):
        table = band_index((7, 6), 3).double()
        return (x * table).sum()

    torch.func.grad(build_inside)(torch.randn(7, 6, dtype=torch.float64))
    table = band_index((7, 6), 3)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(table)
    assert math.prod(table.shape) == 42
