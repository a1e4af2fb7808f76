"""The reference against hand-computed values, an independent numpy implementation, and properties."""

import math

import numpy as np
import pytest
import torch

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
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in S], indexing="ij")
    rho = np.sqrt(sum(f**2 for f in freqs))
    band = np.minimum(np.floor(K * rho / (0.5 * np.sqrt(len(S)))), K - 1).astype(int)
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
