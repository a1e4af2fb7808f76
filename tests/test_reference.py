"""The reference against hand-computed values, an independent numpy implementation, and properties."""

import functools
import math

import numpy as np
import pytest
import torch
from test_bands import exact_band

import scc_kernels
from scc_kernels import scc_loss, spectral_correlation


def r_ref(x, y, **options):
    return spectral_correlation(x, y, backend="reference", **options)


# --- tiny hand-computed cases: 1×1×2×2, r in closed form -----------------------------------------

X_TINY = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]], dtype=torch.float64)
Y_TINY = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)


def test_tiny_complex_by_hand():
    # Parseval: drop the origin sample: x' = (0.5, 0, 0), y' = (1, 1, 0):
    # S_uv = 0.5, S_uu = 0.25, S_vv = 2  →  r = 0.5 / sqrt(0.5) = 1/√2
    r = r_ref(X_TINY, Y_TINY, spectrum="complex", eps=0.0)
    assert r.item() == pytest.approx(1 / math.sqrt(2), abs=1e-14)


def test_tiny_amplitude_by_hand():
    # |X| = (0.75, 0.25, 0.75, 0.25), |Y| = (1.5, 0.5, 0.5, 0.5):
    # S_uv = 0.25, S_uu = 0.25, S_vv = 0.75  →  r = 0.25 / sqrt(0.1875) = 1/√3
    r = r_ref(X_TINY, Y_TINY, spectrum="amplitude", eps=0.0)
    assert r.item() == pytest.approx(1 / math.sqrt(3), abs=1e-14)
    eps = 1e-2
    r = r_ref(X_TINY, Y_TINY, spectrum="amplitude", eps=eps)
    assert r.item() == pytest.approx((0.25 + eps) / math.sqrt((0.25 + eps) * (0.75 + eps)), abs=1e-14)


def test_tiny_loss_reductions_by_hand():
    x = torch.cat([X_TINY, Y_TINY], dim=1)  # 2 channels: (x, y) vs (y, y)
    y = torch.cat([Y_TINY, Y_TINY], dim=1)
    losses = scc_loss(x, y, spectrum="complex", eps=0.0, reduction="none", backend="reference")
    expected = torch.tensor([[1 - 1 / math.sqrt(2), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-14)
    total = scc_loss(x, y, spectrum="complex", eps=0.0, reduction="sum", backend="reference")
    assert total.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-14)


@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
def test_empty_prediction_and_target_give_r_one(spectrum):
    zeros = torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    for eps in (1e-5, 0.0):
        assert torch.equal(r_ref(zeros, zeros, spectrum=spectrum, eps=eps), torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
def test_identical_prediction_and_target_give_r_one(spectrum):
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(r_ref(x, x, spectrum=spectrum, bands=3), torch.ones(2, 3, dtype=torch.float64))


def test_empty_band_gives_r_one():
    # 2×2: radii are 0, 0.5, 0.5, 0.707 of ρ_max = 0.707, so with 8 bands most are empty
    x, y = torch.rand(1, 1, 2, 2, dtype=torch.float64), torch.rand(1, 1, 2, 2, dtype=torch.float64)
    weights = [0, 1, 0, 1, 0, 0, 0, 0]  # bands 1 and 3 are empty: r = 1 there
    assert r_ref(x, y, bands=8, band_weights=weights).item() == 1.0


# --- an independent implementation in numpy, float64 -------------------------------------------


def numpy_scc(x, y, spectrum, bands, eps, batch):
    """SPEC §3 steps 4-7 written again from the text, with numpy.fft and explicit loops."""
    B, C, *S = x.shape
    K = bands or 1
    indices = np.meshgrid(*[np.rint(np.fft.fftfreq(n) * n).astype(int) for n in S], indexing="ij")
    band = np.vectorize(lambda *k: exact_band(tuple(map(int, k)), S, K))(*indices)  # SPEC v3: exact
    spectra = []
    for arr in (x, y):
        F = np.fft.fftn(arr, axes=tuple(range(2, arr.ndim)), norm="ortho")
        spectra.append(np.abs(F) if spectrum == "amplitude" else F)
    u, v = spectra
    groups = [[(b,) for b in range(B)]] if batch else [[(b,)] for b in range(B)]
    out = np.zeros((C,) if batch else (B, C))
    for c in range(C):
        for slices in groups:
            rs = []
            for j in range(K):
                uu = np.concatenate([u[s[0], c][band == j] for s in slices])
                vv = np.concatenate([v[s[0], c][band == j] for s in slices])
                if uu.size == 0:
                    rs.append(1.0)
                    continue
                du, dv = uu - uu.mean(), vv - vv.mean()
                s_uv = np.real(np.sum(du * np.conj(dv)))
                s_uu, s_vv = np.sum(np.abs(du) ** 2), np.sum(np.abs(dv) ** 2)
                rs.append((s_uv + eps) / np.sqrt((s_uu + eps) * (s_vv + eps)))
            if batch:
                out[c] = np.mean(rs)
            else:
                out[slices[0][0], c] = np.mean(rs)
    return out


@pytest.mark.parametrize("spatial", [(11,), (6, 9), (5, 4, 7)])
@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
@pytest.mark.parametrize("bands,batch", [(None, False), (3, False), (4, True)])
def test_reference_matches_numpy(spatial, spectrum, bands, batch):
    x = torch.rand(2, 3, *spatial, dtype=torch.float64)
    y = (torch.rand(2, 3, *spatial, dtype=torch.float64) > 0.5).double()
    got = r_ref(x, y, spectrum=spectrum, bands=bands, batch=batch, eps=1e-5)
    expected = numpy_scc(x.numpy(), y.numpy(), spectrum, bands, 1e-5, batch)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_parseval_identity():
    """Complex spectrum, one band: the sums over the full spectrum equal the sums over samples ≠ origin."""
    x = torch.rand(3, 2, 8, 7, dtype=torch.float64)
    y = torch.rand(3, 2, 8, 7, dtype=torch.float64)
    xs, ys = x.flatten(2)[..., 1:], y.flatten(2)[..., 1:]
    s_uv, s_uu, s_vv = (xs * ys).sum(-1), (xs * xs).sum(-1), (ys * ys).sum(-1)
    eps = 1e-3
    expected = (s_uv + eps) / torch.sqrt((s_uu + eps) * (s_vv + eps))
    torch.testing.assert_close(r_ref(x, y, spectrum="complex", eps=eps), expected, rtol=1e-12, atol=1e-12)


def test_version():
    assert scc_kernels.__version__


# --- exactly Hermitian spectra (SPEC §3 step 4) -----------------------------------------------


def _anti_hermitian_noise(monkeypatch):
    """torch.fft.fftn as an FFT whose rounding is not Hermitian (MKL's AVX-512 path: mirror bins
    of amplitude 1e15 came out 0.125 apart): adds 1e-16·max|X| of anti-Hermitian noise."""
    from scc_kernels.bands import mirror

    fftn = torch.fft.fftn
    generator = torch.Generator().manual_seed(16)

    def noisy_fftn(x, *args, dim=None, **kwargs):
        X = fftn(x, *args, dim=dim, **kwargs)
        noise = torch.randn(X.shape, dtype=X.dtype, generator=generator)
        noise = (noise - mirror(noise, tuple(dim)).conj()) / 2  # noise[−k] = −conj(noise[k])
        return X + 1e-16 * X.abs().amax() * noise

    monkeypatch.setattr(torch.fft, "fftn", noisy_fftn)


def test_a_band_of_mirror_pairs_has_r_one_whatever_the_fft_rounding(monkeypatch):
    """64 bands on 9×10×11: bands made of one mirror pair have equal amplitudes, so r = 1 exactly,
    at magnitude 1e15 too (with the noise, and no Hermitian projection, r was about 0.05)."""
    from scc_kernels.bands import band_index

    spatial = (9, 10, 11)
    table = band_index(spatial, 64)
    pairs = []
    for band in range(64):
        bins = (table == band).nonzero().tolist()
        if len(bins) == 2 and all((a + b) % n == 0 for a, b, n in zip(*bins, spatial)):
            pairs.append(band)
    assert len(pairs) >= 3
    generator = torch.Generator().manual_seed(20261206)
    x = 1e15 * torch.randn(2, 3, *spatial, dtype=torch.float64, generator=generator)
    y = 1e15 * torch.randn(2, 3, *spatial, dtype=torch.float64, generator=generator)
    _anti_hermitian_noise(monkeypatch)
    for band in pairs:
        weights = [1.0 if j == band else 0.0 for j in range(64)]
        r = r_ref(x, y, bands=64, band_weights=weights)
        assert torch.equal(r, torch.ones_like(r)), f"band {band}: r = {r}"


def test_mirror_pairs_have_equal_amplitudes_whatever_the_lanes_of_abs():
    """11 samples, 64 bands: every band is one bin or one mirror pair, so every r is 1 and the loss
    0. torch's complex abs rounds a conjugate pair's |X| an ulp apart where one bin falls in a
    vector lane and its mirror in the remainder: at 1e15 that is a spread far above eps (the
    loss was 0.0141 for one slice of this draw, the precision sweep's seed 14)."""
    from scc_kernels.verify import make_problem

    for seed in range(20):  # the sweep's draws (benchmarks/precision_sweep.py --seeds 20)
        options = dict(spectrum="amplitude", bands=64)
        generator = torch.Generator().manual_seed(seed)
        x, y = make_problem("huge 1e15", 2, 3, (11,), options, dtype=torch.float32, device="cpu", generator=generator)
        loss = scc_loss(x.double(), y.double(), reduction="none", backend="reference", **options)
        assert torch.equal(loss, torch.zeros_like(loss)), f"seed {seed}: {loss}"


@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
def test_the_hermitian_projection_leaves_other_values_alone(monkeypatch, spectrum):
    """Where the FFT is Hermitian up to rounding, the projection changes values by rounding only."""
    x = torch.randn(2, 3, 6, 9, 5, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 3, (2, 6, 9, 5))
    options = dict(spectrum=spectrum, bands=5, softmax=True, reduction="none", backend="reference")
    exact = scc_loss(x, y, **options)
    (exact_grad,) = torch.autograd.grad(exact.sum(), x)
    _anti_hermitian_noise(monkeypatch)
    noisy = scc_loss(x, y, **options)
    (noisy_grad,) = torch.autograd.grad(noisy.sum(), x)
    torch.testing.assert_close(noisy, exact, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(noisy_grad, exact_grad, rtol=1e-12, atol=1e-15)


# --- torch.func transforms, twice on the same shape (issue 16) -----------------------------------

TRANSFORMS = ["grad", "grad of grad", "vmap", "jacrev", "jvp", "hessian"]


def _transform(name, f, x, v):
    func = torch.func
    if name == "grad":
        return func.grad(f)(x)
    if name == "grad of grad":
        return func.grad(lambda z: (func.grad(f)(z) * v).sum())(x)
    if name == "vmap":
        return func.vmap(f)(torch.stack([x, v]))
    if name == "jacrev":
        return func.jacrev(f)(x)
    if name == "jvp":
        return func.jvp(f, (x,), (v,))[1]
    return func.hessian(f)(x)


def _autograd(name, f, x, v):
    """The same quantity with torch.autograd (no functorch)."""
    x = x.detach().requires_grad_(True)
    if name == "vmap":
        return torch.stack([f(x.detach()), f(v)])
    if name == "hessian":
        return torch.autograd.functional.hessian(f, x)
    (g,) = torch.autograd.grad(f(x), x, create_graph=name == "grad of grad")
    if name == "grad of grad":
        (g,) = torch.autograd.grad((g * v).sum(), x)
    return (g * v).sum() if name == "jvp" else g


@pytest.mark.filterwarnings("ignore:scc_kernels. backend:UserWarning")  # auto: torch.func runs the reference
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_torch_func_transform_twice_on_the_same_shape(name, backend):
    """The first transform used to leave a functorch-wrapped tensor in the band-table cache: the
    second hessian, or a grad of grad, then hit an internal assert."""
    scc_kernels.clear_caches()  # the first call builds the tables inside the transform
    spatial = (5, 4) if name == "hessian" else (5, 6, 3)
    x = torch.randn(1, 2, *spatial, dtype=torch.float64)
    v = torch.randn(1, 2, *spatial, dtype=torch.float64)
    target = torch.nn.functional.one_hot(torch.randint(0, 2, (1, *spatial)), 2).movedim(-1, 1).double()

    def f(z, backend=backend):
        return scc_loss(z, target, bands=3, softmax=True, backend=backend)

    results = [_transform(name, f, x, v) for _ in range(2)]
    expected = _autograd(name, functools.partial(f, backend="reference"), x, v)  # the others lack double backward
    for attempt, result in enumerate(results):
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12, msg=f"call {attempt}")
