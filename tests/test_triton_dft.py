"""The Triton DFT-as-matmul kernels (amplitude and banded spectra) against float64 results.

No GPU: the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET),
so the shapes stay small. They are still odd-sized and span several tiles and loop blocks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from utils import assert_matches_reference, converged_problem, device_for, kernel_case_id, random_problem

from scc_kernels import planning
from scc_kernels._options import make_options
from scc_kernels.backends import dft_tiles, torch_backend, triton_backend, triton_dft
from scc_kernels.backends._spectra import base_is_prediction
from scc_kernels.backends.registry import Problem
from scc_kernels.verify import blob_labels


@pytest.fixture
def device():
    return device_for("triton")


@pytest.fixture
def dft_path(monkeypatch):
    """Through scc_loss, the DFT path on a GPU too (where the plan may choose the FFT for a shape)."""
    monkeypatch.setattr(planning, "_triton_path", lambda input, opts: "dft")


# Options combined rather than crossed:
# (spatial, channels, spectrum, bands, activation, target dtype, ignore_index, include_background).
# An integer target dtype means a label map.
DIRECT_CASES = [
    ((7, 9), 3, "amplitude", 1, "softmax", torch.int64, -100, True),
    ((12, 10), 3, "complex", 3, "sigmoid", torch.float32, None, True),
    pytest.param(((9, 8), 4, "amplitude", 3, "none", torch.float64, None, False), marks=pytest.mark.slow),
    pytest.param(
        ((20, 35), 2, "amplitude", 3, "softmax", torch.uint8, 255, False),  # 2 row, 2 column, 2 kw blocks
        marks=pytest.mark.slow,
    ),
    ((1, 9), 1, "amplitude", 1, "sigmoid", torch.int32, None, True),
    pytest.param(((5, 6, 7), 3, "amplitude", 3, "softmax", torch.int64, 0, False), marks=pytest.mark.slow),
    pytest.param(((6, 5, 4), 3, "complex", 3, "none", torch.int16, None, True), marks=pytest.mark.slow),
    pytest.param(
        ((6, 9, 34), 2, "amplitude", 1, "sigmoid", torch.bfloat16, None, True),  # 2 kd, 2 kw tiles; 2 column blocks
        marks=pytest.mark.slow,
    ),
    pytest.param(((3, 7, 5), 2, "complex", 3, "softmax", torch.uint8, 1, True), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=kernel_case_id)
def test_band_stats_and_backward_match_float64(case, device):
    """STATS and input gradient in float32 vs torch_backend run in float64 on the same data."""
    spatial, channels, spectrum, bands, activation, target_dtype, ignore_index, background = case
    label_map = not target_dtype.is_floating_point
    logits, target = random_problem(2, channels, spatial, label_map=label_map, ignore_index=ignore_index, device=device)
    target = target.to(target_dtype)
    problem = Problem(spectrum, bands, activation, ignore_index, background, "dft")
    grad = _assert_matches_float64(logits, target, problem)
    if not background and activation != "softmax":  # softmax's Jacobian couples the channels
        assert bool((grad[:, 0] == 0).all())
    if ignore_index is not None:
        assert bool((grad.movedim(1, -1)[target == ignore_index] == 0).all())


@pytest.mark.parametrize(
    "spatial, spectrum, bands",
    [((20, 23), "amplitude", 4), pytest.param((7, 6, 9), "complex", 3, marks=pytest.mark.slow)],
    ids=["20x23-amplitude-K4", "7x6x9-complex-K3"],
)
def test_band_stats_near_convergence_match_float64(spatial, spectrum, bands, device):
    """x = one-hot + 1e-4·noise, given as probabilities (no activation, so x − y is exact in float32):
    m2_dd, ~1e-8 of m2_uu here, still matches to ~1e-5 of its size because d comes from the transform
    of x − y; from two rounded spectra it is off by ~1e-3. (Where the base spectrum is near 0 at a
    bin, d is limited by that spectrum's float32 rounding: up to ~2e-5, torch_backend in float32 alike.)"""
    generator = torch.Generator().manual_seed(0)
    labels = blob_labels(2, 3, spatial, generator=generator)
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    x = one_hot + 1e-4 * torch.randn(one_hot.shape, generator=generator, dtype=torch.float64)
    problem = Problem(spectrum, bands, "none", None, True, "dft")
    # the gradient's phase X/|X| at bins where |X| is at rounding level is rounding too (torch alike)
    _assert_matches_float64(x.float().to(device), labels.to(device), problem, stats_tol=5e-5, grad_tol=1e-4)


def _assert_matches_float64(logits, target, problem, stats_tol=1e-5, grad_tol=1e-5):
    """triton_dft's STATS (to `stats_tol` of each statistic's largest value), saved tensors and input
    gradient (for random grad_stats) vs torch_backend in float64 on the same values; returns the gradient."""
    target64 = target.double() if target.is_floating_point() else target  # the same (possibly rounded) values
    stats, *saved = triton_dft.band_stats(logits, target, problem)
    fake = triton_dft.band_stats_fake(logits, target, problem)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in (stats, *saved)]
    expected, *expected_saved = torch_backend.band_stats(logits.double(), target64, problem)
    assert stats.shape == expected.shape and stats.dtype == torch.float32
    # the same base signal per slice (_spectra.py)
    assert torch.equal(saved[0], base_is_prediction(logits, target, problem))
    scale = expected.abs().flatten(0, -2).amax(0).clamp(min=1e-30)  # per statistic
    torch.testing.assert_close(stats.double() / scale, expected / scale, rtol=stats_tol, atol=stats_tol)

    grad_stats = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad_stats = grad_stats.to(logits.device)
    grad = triton_dft.band_stats_backward(grad_stats.float(), stats, logits, target, saved, problem)
    grad_expected = torch_backend.band_stats_backward(
        grad_stats, expected, logits.double(), target64, expected_saved, problem
    )
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    error = (grad.double() - grad_expected).norm() / grad_expected.norm()
    assert error < grad_tol, f"relative gradient error {error:.2e}"
    return grad


# end to end through the public API
END_TO_END_CASES = [
    ((7, 9), dict(spectrum="amplitude", softmax=True), True),
    ((10, 11), dict(spectrum="amplitude", bands=4, sigmoid=True, batch=True), False),
    ((9, 6), dict(spectrum="complex", bands=3, softmax=True, ignore_index=1, include_background=False), True),
    pytest.param(
        (5, 6, 7),
        dict(spectrum="amplitude", bands=4, softmax=True, batch=True, ignore_index=0),
        True,
        marks=pytest.mark.slow,
    ),
    pytest.param((4, 5, 6), dict(spectrum="complex", bands=3, sigmoid=True), False, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.slow)], ids=["float32", "bfloat16"]
)
@pytest.mark.parametrize(
    "spatial,options,label_map",
    END_TO_END_CASES,
    ids=lambda case: "x".join(map(str, case)) if isinstance(case, tuple) else None,
)
@pytest.mark.usefixtures("dft_path")
def test_end_to_end_matches_reference(spatial, options, label_map, dtype, device):
    logits, target = random_problem(
        2, 3, spatial, label_map=label_map, ignore_index=options.get("ignore_index"), dtype=dtype, device=device
    )
    assert_matches_reference("triton", logits, target, **options)


# Near-converged softmax predictions (SPEC §4): losses ~1e-3 at confidence 4, ~1e-5 at 8
# (bands raise them), where d = u − v must come from the transform of x − y. Combined, not crossed.
CONVERGED_CASES = [
    pytest.param(4, (20, 23), "amplitude", None, marks=pytest.mark.slow),
    pytest.param(8, (20, 23), "amplitude", None, marks=pytest.mark.slow),
    (8, (20, 23), "amplitude", 4),
    pytest.param(4, (20, 23), "complex", 4, marks=pytest.mark.slow),
    (8, (20, 23), "complex", 4),
    pytest.param(4, (7, 6, 9), "amplitude", 4, marks=pytest.mark.slow),
    pytest.param(8, (7, 6, 9), "amplitude", None, marks=pytest.mark.slow),
    pytest.param(8, (7, 6, 9), "complex", 4, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "confidence, spatial, spectrum, bands",
    CONVERGED_CASES,
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
@pytest.mark.usefixtures("dft_path")
def test_near_convergence_matches_reference(confidence, spatial, spectrum, bands, device):
    logits, labels = converged_problem(
        2, 3, spatial, confidence=confidence, device=device, generator=torch.Generator().manual_seed(confidence)
    )
    assert_matches_reference("triton", logits, labels, spectrum=spectrum, bands=bands, softmax=True)


@pytest.mark.usefixtures("dft_path")
@pytest.mark.parametrize("spectrum, regime", [("amplitude", "random"), ("complex", "converged")])
def test_bands_of_few_bins(spectrum, regime, device):
    """11×9 in 12 bands: a few bins each, some only Hermitian mirror pairs (equal amplitudes, r = 1)."""
    generator = torch.Generator().manual_seed(12)
    if regime == "random":
        logits, labels = random_problem(2, 3, (11, 9), device=device, generator=generator)
    else:
        logits, labels = converged_problem(2, 3, (11, 9), confidence=6, device=device, generator=generator)
    assert_matches_reference("triton", logits, labels, spectrum=spectrum, bands=12, softmax=True)


def test_too_large_runs_the_fft_path_without_a_warning(monkeypatch, device):
    """A slice outside the DFT kernels' range runs triton_fft (planning.resolve's path)."""
    monkeypatch.setattr(dft_tiles, "MAX_SIDE", {2: 8, 3: 8})
    logits, target = random_problem(2, 3, (9, 7), device=device, generator=torch.Generator().manual_seed(7))
    path = planning.resolve("triton", logits, make_options(bands=3, softmax=True)).path
    problem = Problem("amplitude", 3, "softmax", None, True, path)
    grad_stats = torch.randn((2, 3, 3, 8), generator=torch.Generator().manual_seed(1)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the package's (triton 3.6's interpreter has its own)
        out = triton_backend.band_stats(logits, target, problem)
        fake = triton_backend.band_stats_fake(logits, target, problem)
        grad = triton_backend.band_stats_backward(grad_stats, out[0], logits, target, out[1:], problem)
    assert path == "fft" and len(out[1:]) == 2  # the FFT path and its saved tensors
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in out]
    # Against the torch backend in float64: float32 rounding of gradients near 1 is ~1e-6 absolute.
    logits64, grad_stats64 = logits.double(), grad_stats.double()
    expected = torch_backend.band_stats(logits64, target, problem)
    torch.testing.assert_close(out[0].double(), expected[0], rtol=1e-5, atol=1e-6)
    expected_grad = torch_backend.band_stats_backward(
        grad_stats64, expected[0], logits64, target, expected[1:], problem
    )
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-5 * expected_grad.abs().max().item())


def test_one_spatial_dim_runs_the_fft_path(device):
    logits, target = random_problem(1, 2, (41,), device=device)  # 21 bins: above the tiny path's 16
    path = planning.resolve("triton", logits, make_options(bands=2, sigmoid=True)).path
    problem = Problem("amplitude", 2, "sigmoid", None, True, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the package's (triton 3.6's interpreter has its own)
        out = triton_backend.band_stats(logits, target, problem)
    assert path == "fft" and len(out[1:]) == 2  # the FFT path and its saved tensors
    torch.testing.assert_close(out[0], torch_backend.band_stats(logits, target, problem)[0], rtol=1e-5, atol=1e-6)
