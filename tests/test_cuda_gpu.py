"""The CUDA C++ kernels on a GPU: every case of cuda_cases.py through the cuda backend (the torch
extension, prebuilt or JIT-compiled) and the cupy backend (NVRTC), and CuPy's FFT against the
reference's spectra. Skipped without a CUDA device; a backend that cannot run says why.
"""

from __future__ import annotations

import pytest
import torch
from cuda_cases import KernelCases

import scc_kernels
from scc_kernels.backends.registry import unavailable_reason
from scc_kernels.bands import band_index

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class TestOnGPU(KernelCases):
    @pytest.fixture(params=["cuda", "cupy"])
    def backend(self, request):
        reason = unavailable_reason(request.param, "cuda")
        if reason is not None:
            pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
        return request.param, "cuda"


def test_reference_spectra_match_cupy_fft():
    """SPEC §3 from CuPy's FFT (full spectra, a mask per band) against the reference backend."""
    cupy = pytest.importorskip("cupy", reason="CuPy (cupy-cuda12x or 13x) is not installed")
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64, device="cuda")
    y = torch.rand(2, 3, 9, 10, dtype=torch.float64, device="cuda")
    for spectrum in ("amplitude", "complex"):
        X = cupy.fft.fftn(cupy.asarray(x), axes=(2, 3), norm="ortho")
        Y = cupy.fft.fftn(cupy.asarray(y), axes=(2, 3), norm="ortho")
        if spectrum == "amplitude":
            X, Y = cupy.abs(X), cupy.abs(Y)
        X, Y = X.reshape(2, 3, -1), Y.reshape(2, 3, -1)
        bands = band_index((9, 10), 3).reshape(-1)
        r = []
        for j in range(3):
            in_band = cupy.asarray((bands == j).nonzero().reshape(-1).numpy())
            u, v = cupy.take(X, in_band, axis=-1), cupy.take(Y, in_band, axis=-1)
            u, v = u - u.mean(-1, keepdims=True), v - v.mean(-1, keepdims=True)
            s_uv, s_uu, s_vv = ((a * b.conj()).real.sum(-1) for a, b in ((u, v), (u, u), (v, v)))
            r.append((s_uv + 1e-5) / cupy.sqrt((s_uu + 1e-5) * (s_vv + 1e-5)))
        expected = torch.as_tensor(cupy.stack(r, -1).mean(-1).get())
        got = scc_kernels.spectral_correlation(x, y, spectrum=spectrum, bands=3, backend="reference")
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
