"""SPEC §4 precision sweep: every fast backend runnable here against the float64 reference.

Float32 inputs in the regimes where naive float32 breaks: near-converged predictions (losses from
about 1e-3 down to 1e-6 and below), bands of a few bins, huge magnitudes (the right value, or
NaN where a float32 sum must overflow), across 1D to 3D odd sizes, 1 to 64 bands and both
spectra. The plain float32 reference runs on the same inputs; the fast backends must beat it.
The Triton kernels run interpreted on the CPU here, so they get the small shapes only.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from utils import op_static

from scc_kernels import scc_loss, spectral_correlation
from scc_kernels._options import make_options
from scc_kernels.backends.registry import unavailable_reason
from scc_kernels.verify import compare_with_reference, make_problem

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED = 20261129

# (spatial, small enough for the interpreter)
SHAPES = [
    ((61,), True),
    ((11,), True),
    ((19, 17), True),
    ((63, 65), False),
    ((45, 47), False),
    ((128, 96), False),
    ((9, 10, 11), True),
    ((20, 18, 22), False),
]
REGIMES = ["random", "converged 4", "converged 6", "converged 8", "converged 10", "huge 1e15", "huge 1e30"]
SPECTRA_BANDS = [("complex", None), ("amplitude", None), ("amplitude", 4), ("complex", 24), ("amplitude", 64)]


def _cases():
    """Every (regime, spectrum, bands), each on a shape taken in turn from SHAPES."""
    shapes = itertools.cycle(range(len(SHAPES)))
    for regime in REGIMES:
        for spectrum, bands in SPECTRA_BANDS:
            spatial, small = SHAPES[next(shapes)]
            options = dict(spectrum=spectrum, bands=bands)
            if not regime.startswith("huge"):
                options["softmax"] = True
            if regime == "converged 8" and bands is None:
                options["batch"] = True  # class statistics merged over the batch
            yield pytest.param(
                regime,
                spatial,
                options,
                small,
                id=f"{regime.replace(' ', '')}-{'x'.join(map(str, spatial))}-{spectrum}-K{bands}",
                marks=() if regime == "converged 8" else pytest.mark.slow,  # the fast tier: one regime
            )


CASES = list(_cases())


def _errors(backend, regime, spatial, options, seed=SEED):
    generator = torch.Generator().manual_seed(seed)
    logits, target = make_problem(
        regime, 2, 3, spatial, options, dtype=torch.float32, device=DEVICE, generator=generator
    )
    return compare_with_reference(backend, logits, target, **options)


# the torch backend's cases on each of its paths for the spectrum (fused: the amplitude spectrum's)
TORCH_CASES = [
    pytest.param(*case.values, path, id=f"{case.id}-{path}", marks=case.marks)
    for case in CASES
    for path in ("fft", "fused")
    if path == "fft" or case.values[2]["spectrum"] == "amplitude"
]


@pytest.mark.parametrize("regime, spatial, options, small, torch_path", TORCH_CASES, indirect=["torch_path"])
def test_torch_backend_meets_spec(regime, spatial, options, small, torch_path):
    errors = _errors("torch", regime, spatial, options)
    assert errors.ok, f"seed {SEED}: {errors}"


@pytest.mark.skipif(unavailable_reason("triton", DEVICE) is not None, reason="triton cannot run here")
@pytest.mark.parametrize("regime, spatial, options, small", [c for c in CASES if c.values[-1]])
def test_triton_backend_meets_spec(regime, spatial, options, small):
    errors = _errors("triton", regime, spatial, options)
    assert errors.ok, f"seed {SEED}: {errors}"


@pytest.mark.slow
def test_torch_backend_beats_the_float32_reference_near_convergence():
    """Near convergence the plain definition in float32 loses most digits of the loss (raw
    cancellation, 1 − a rounded r): with up to 4 bands the stable statistics are at least 10×
    closer in the worst case and closer case by case. (In bands of a few dozen bins or fewer both
    meet SPEC but are limited alike by the float32 resolution of the spectra themselves.)"""
    ours, plain = [], []
    for case in CASES:
        regime, spatial, options, _ = case.values
        if regime.startswith("converged") and regime != "converged 4" and (options["bands"] or 1) <= 4:
            ours.append(_errors("torch", regime, spatial, options).loss)
            plain.append(_errors("reference", regime, spatial, options).loss)
    assert len(ours) >= 6
    assert max(ours) < max(plain) / 10, (ours, plain)
    assert all(o < p for o, p in zip(ours, plain)), (ours, plain)


@pytest.mark.parametrize("length, bands", [(9, 4), (11, 5), (13, 6)])
def test_mirror_pair_bands_give_r_one_and_no_gradient(length, bands):
    """In 1D of odd length (no Nyquist bin), with these band counts, every band but the lowest
    holds just a bin k and its mirror -k, whose amplitudes are equal:
    r is exactly 1 and the gradient exactly 0, whatever the float32 rounding of the spectra."""
    generator = torch.Generator().manual_seed(SEED)
    logits = torch.randn(2, 3, length, generator=generator).requires_grad_(True)
    labels = torch.randint(0, 3, (2, length), generator=generator)
    weights = [0.0] + [1.0] * (bands - 1)  # the mirror-pair bands only
    r = spectral_correlation(logits, labels, softmax=True, bands=bands, band_weights=weights, backend="torch")
    assert torch.equal(r, torch.ones_like(r))
    loss = scc_loss(logits, labels, softmax=True, bands=bands, band_weights=weights, backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e37])
@pytest.mark.parametrize("spectrum, bands", [("complex", None), ("amplitude", None), ("amplitude", 3)])
def test_overflow_gives_nan_never_a_finite_wrong_value(magnitude, spectrum, bands):
    generator = torch.Generator().manual_seed(SEED)
    logits = (magnitude * torch.randn(2, 2, 13, 12, generator=generator, dtype=torch.float64)).float()
    target = torch.rand(2, 2, 13, 12, generator=generator)
    x = logits.clone().requires_grad_(True)
    loss = scc_loss(x, target, spectrum=spectrum, bands=bands, reduction="none", backend="torch")
    loss.sum().backward()
    assert loss.isnan().all(), loss  # every slice's Σx² passes float32's range
    expected = scc_loss(
        logits.double(), target.double(), spectrum=spectrum, bands=bands, reduction="none", backend="reference"
    )
    assert torch.isfinite(expected).all()  # float64 holds it: the NaN is float32's overflow, not a NaN input


def test_losses_span_the_near_converged_range():
    """The sweep reaches the losses SPEC §4 names (1e-3 down to 1e-6): the regimes are what they say."""
    generator = torch.Generator().manual_seed(SEED)
    losses = {}
    for confidence in (4, 10):
        logits, labels = make_problem(
            f"converged {confidence}", 2, 3, (63, 65), {}, dtype=torch.float64, device="cpu", generator=generator
        )
        losses[confidence] = scc_loss(logits, labels, softmax=True, reduction="none", backend="reference")
    assert 1e-3 < losses[4].median() < 1e-1
    assert 0 < losses[10].median() < 3e-6


@pytest.mark.parametrize("spatial", [(9, 10, 11), (12, 10), (7, 8, 6)])
def test_self_mirrored_columns_are_exactly_hermitian(spatial):
    """The rfftn columns k = 0 (and n/2) hold bins k and −k along the other axes: after
    make_hermitian they are exact conjugates, so a band of such pairs has equal amplitudes."""
    from scc_kernels.backends._spectra import make_hermitian

    generator = torch.Generator().manual_seed(SEED)
    x = 1e15 * torch.randn(2, 3, *spatial, generator=generator)
    Z = make_hermitian(torch.fft.rfftn(x, dim=tuple(range(2, x.dim())), norm="ortho"), spatial[-1])
    other = tuple(range(2, x.dim() - 1))
    columns = (0, spatial[-1] // 2) if spatial[-1] % 2 == 0 else (0,)
    for column in columns:
        plane = Z[..., column]
        assert torch.equal(plane, plane.flip(other).roll((1,) * len(other), other).conj())


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])
def test_band_of_mirror_pairs_at_a_huge_magnitude(backend):
    """64 bands on 9×10×11: some hold just a mirror pair of the zero column. Their amplitudes
    differ by an ulp of 1e15 in a plain float32 FFT: above eps, r fell from 1 to ~0 (loss 2% off)."""
    if unavailable_reason(backend, DEVICE) is not None:
        pytest.skip(f"{backend} cannot run here")
    for seed in range(3):
        errors = _errors(backend, "huge 1e15", (9, 10, 11), dict(spectrum="amplitude", bands=64), seed=seed)
        assert errors.ok, f"seed {seed}: {errors}"


def _one_pixel_class_problem(spatial, seed=SEED):
    """Random logits; labels all 0 but one random pixel of class 1 per item: class 1's target has
    a flat amplitude spectrum (|Y| = 1/√N at every bin), so S_vv = 0 and r rests on eps."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, 3, *spatial, generator=generator)
    labels = torch.zeros(2, *spatial, dtype=torch.int64)
    for item in labels.view(2, -1):
        item[torch.randint(item.numel(), (1,), generator=generator)] = 1
    return logits.to(DEVICE), labels.to(DEVICE)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("spatial", [(12, 10, 9), (16, 16)])
def test_one_pixel_class_meets_spec(backend, spatial):
    """A class on one voxel under a prediction spread over the image: the transform base is the
    target there (_spectra.base_is_prediction: x holds far more energy), so |Y| keeps its own
    rounding instead of the prediction's (the loss was 3x off SPEC at 12x10x9 with the base
    chosen by largest magnitude alone)."""
    if unavailable_reason(backend, DEVICE) is not None:
        pytest.skip(f"{backend} cannot run here")
    logits, labels = _one_pixel_class_problem(spatial)
    for options in (dict(softmax=True), dict(softmax=True, batch=True)):
        errors = compare_with_reference(backend, logits, labels, **options)
        assert errors.ok, f"seed {SEED}: {errors} ({options})"


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "spatial",
    [
        pytest.param((17, 1), marks=pytest.mark.slow),
        (18, 1),
        pytest.param((22, 1), marks=pytest.mark.slow),
        (32,),
        pytest.param((6, 5), marks=pytest.mark.slow),
        pytest.param((63,), marks=pytest.mark.slow),
        pytest.param((5, 5, 5), marks=pytest.mark.slow),
    ],
)
def test_one_pixel_class_above_the_tiny_path_meets_spec(backend, spatial):
    """A class on one pixel has a flat |Y|: its centred target moments are exactly 0 (_stats.with_flat_targets).
    Computed in float32 they were rounding noise that eps amplified: the torch backend missed SPEC §4's
    gradient tolerance by 3-11x at these sizes, where the float32 reference passes at 18x1 and 22x1."""
    if unavailable_reason(backend, DEVICE) is not None:
        pytest.skip(f"{backend} cannot run here")
    for seed in range(2):
        logits, labels = _one_pixel_class_problem(spatial, seed=SEED + seed)
        for options in (dict(include_background=False), dict(bands=2), dict(batch=True, include_background=False)):
            errors = compare_with_reference(backend, logits, labels, softmax=True, **options)
            assert errors.ok, f"seed {SEED + seed}: {errors} ({options})"


# Tiny inputs (SPEC §4): 3- to 5-sample signals and singleton axes, where a band's centred values
# span one or two directions and 1 − r is flat (r at ±1, or resting on eps for a flat target
# spectrum such as a one-pixel class). Float32 statistics missed the gradient tolerance there by
# up to 5x (torch) and 1.7x (triton), the float32 reference passing: both now take the float64
# path for slices of at most torch_backend.TINY_BINS half-grid bins.
TINY_CASES = [  # the fast tier: 5 samples in 3 bands
    pytest.param((3,), None, marks=pytest.mark.slow),
    pytest.param((4,), None, marks=pytest.mark.slow),
    pytest.param((5,), None, marks=pytest.mark.slow),
    ((5,), 3),
    pytest.param((5, 1), 2, marks=pytest.mark.slow),
    pytest.param((9, 1), 5, marks=pytest.mark.slow),
    pytest.param((1, 7), None, marks=pytest.mark.slow),
    pytest.param((1, 7), 3, marks=pytest.mark.slow),
    pytest.param((3, 1, 2), 2, marks=pytest.mark.slow),
]


def _tiny_problem(spatial, target_kind, seed):
    """2·randn logits (2, 2, *spatial) with a label map ("labels"), a label map of one pixel of
    class 1 per item ("one pixel": a flat target spectrum) or a soft target ("soft")."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, 2, *spatial, generator=generator, dtype=torch.float64)
    if target_kind == "soft":
        target = torch.rand(2, 2, *spatial, generator=generator, dtype=torch.float64)
    elif target_kind == "labels":
        target = torch.randint(0, 2, (2, *spatial), generator=generator)
    else:
        target = torch.zeros(2, *spatial, dtype=torch.int64)
        for item in target.view(2, -1):
            item[torch.randint(item.numel(), (1,), generator=generator)] = 1
    return logits.float().to(DEVICE), target.to(DEVICE)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    "target_kind",
    [pytest.param("labels", marks=pytest.mark.slow), "one pixel", pytest.param("soft", marks=pytest.mark.slow)],
)
@pytest.mark.parametrize(
    "spatial, bands", TINY_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"K{v}"
)
def test_tiny_signals_meet_spec(backend, target_kind, spatial, bands):
    if unavailable_reason(backend, DEVICE) is not None:
        pytest.skip(f"{backend} cannot run here")
    for seed in range(3):
        logits, target = _tiny_problem(spatial, target_kind, seed)
        for spectrum in ("amplitude", "complex") if bands else ("amplitude",):  # complex, K=1: Parseval
            for background in (True, False):
                options = dict(softmax=True, spectrum=spectrum, bands=bands, include_background=background)
                errors = compare_with_reference(backend, logits, target, **options)
                assert errors.ok, f"seed {seed}: {errors} ({options})"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("spectrum", [pytest.param("amplitude", marks=pytest.mark.slow), "complex"])
def test_tiny_path_op_contract(backend, spectrum):
    """The float64 tiny path through the custom ops: its fake (float64 statistics) matches what
    it computes, under opcheck, forward and backward."""
    if unavailable_reason(backend, DEVICE) is not None:
        pytest.skip(f"{backend} cannot run here")
    logits, target = _tiny_problem((5, 1), "labels", 0)
    static = op_static(backend, logits, make_options(spectrum=spectrum, bands=2, softmax=True))
    stats, *saved = torch.ops.scc_kernels.spectral_stats(logits, target, *static)
    assert stats.dtype == torch.float64
    torch.library.opcheck(torch.ops.scc_kernels.spectral_stats.default, (logits.requires_grad_(True), target, *static))
    grad_stats = torch.randn(stats.shape, generator=torch.Generator().manual_seed(4), dtype=stats.dtype).to(DEVICE)
    torch.library.opcheck(
        torch.ops.scc_kernels.spectral_stats_backward.default,
        (grad_stats, stats, logits.detach(), target, saved, *static),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )
