"""The Triton DFT-as-matmul kernels (amplitude and banded spectra) against float64 results.

No GPU: the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET),
so the shapes stay small. They are still odd-sized and span several tiles and loop blocks.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from scc_kernels._options import Problem
from scc_kernels.backends import torch_backend, triton_dft
from utils import assert_matches_reference, random_problem

@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# Options combined rather than crossed:
# (spatial, channels, spectrum, bands, activation, target dtype, ignore_index, include_background).
# An integer target dtype means a label map.
DIRECT_CASES = [
    ((7, 9), 3, "amplitude", 1, "softmax", torch.int64, -100, True),
    ((12, 10), 3, "complex", 3, "sigmoid", torch.float32, None, True),
    ((9, 8), 4, "amplitude", 3, "none", torch.float64, None, False),
    ((20, 35), 2, "amplitude", 3, "softmax", torch.uint8, 255, False),  # 2 row, 2 column, 2 kw blocks
    ((1, 9), 1, "amplitude", 1, "sigmoid", torch.int32, None, True),
    ((5, 6, 7), 3, "amplitude", 3, "softmax", torch.int64, 0, False),
    ((6, 5, 4), 3, "complex", 3, "none", torch.int16, None, True),
    ((6, 9, 34), 2, "amplitude", 1, "sigmoid", torch.bfloat16, None, True),  # 2 kd, 2 kw tiles; 2 column blocks
    ((3, 7, 5), 2, "complex", 3, "softmax", torch.uint8, 1, True),
]


def _case_id(case):
    spatial, channels, spectrum, bands, activation, target_dtype, ignore_index, background = case
    return (f"{'x'.join(map(str, spatial))}-C{channels}-{spectrum}-K{bands}-{activation}-"
            f"{str(target_dtype).removeprefix('torch.')}-ign{ignore_index}-bg{background}")


@pytest.mark.parametrize("case", DIRECT_CASES, ids=_case_id)
def test_band_sums_and_backward_match_float64(case, device):
    """Sums and input gradient in float32 vs torch_backend run in float64 on the same data."""
    spatial, channels, spectrum, bands, activation, target_dtype, ignore_index, background = case
    label_map = not target_dtype.is_floating_point
    logits, target = random_problem(2, channels, spatial, label_map=label_map, ignore_index=ignore_index,
                                    device=device)
    target = target.to(target_dtype)
    target64 = target if label_map else target.double()  # the same (possibly rounded) values
    problem = Problem(spectrum, bands, activation, ignore_index, background)

    sums = triton_dft.band_sums(logits, target, problem)
    assert len(sums) == 1  # nothing saved: the backward recomputes the spectra
    assert [t.shape for t in triton_dft.band_sums_fake(logits, target, problem)] == [sums[0].shape]
    expected = torch_backend.band_sums(logits.double(), target64, problem)
    assert sums[0].shape == expected[0].shape and sums[0].dtype == torch.float32
    scale = expected[0].abs().amax()
    torch.testing.assert_close(sums[0].double(), expected[0], rtol=1e-5, atol=1e-5 * scale)

    grad_sums = torch.randn(expected[0].shape, dtype=torch.float64, device=device)
    grad = triton_dft.band_sums_backward(grad_sums.float(), logits, target, [], problem)
    grad_expected = torch_backend.band_sums_backward(grad_sums, logits.double(), target64, expected[1:], problem)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    error = (grad.double() - grad_expected).norm() / grad_expected.norm()
    assert error < 1e-5, f"relative gradient error {error:.2e}"
    if not background and activation != "softmax":  # softmax's Jacobian couples the channels
        assert bool((grad[:, 0] == 0).all())
    if ignore_index is not None:
        assert bool((grad.movedim(1, -1)[target == ignore_index] == 0).all())


# end to end through the public API; the glue module is written in parallel with this one
END_TO_END_CASES = [
    ((7, 9), dict(spectrum="amplitude", softmax=True), True),
    ((10, 11), dict(spectrum="amplitude", bands=4, sigmoid=True, batch=True), False),
    ((9, 6), dict(spectrum="complex", bands=3, softmax=True, ignore_index=1, include_background=False), True),
    ((5, 6, 7), dict(spectrum="amplitude", bands=4, softmax=True, batch=True, ignore_index=0), True),
    ((4, 5, 6), dict(spectrum="complex", bands=3, sigmoid=True), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("spatial,options,label_map", END_TO_END_CASES,
                         ids=lambda case: "x".join(map(str, case)) if isinstance(case, tuple) else None)
def test_end_to_end_matches_reference(spatial, options, label_map, dtype, device):
    pytest.importorskip("scc_kernels.backends.triton_backend", reason="the triton glue module is not written yet")
    logits, target = random_problem(2, 3, spatial, label_map=label_map, ignore_index=options.get("ignore_index"),
                                    dtype=dtype, device=device)
    assert_matches_reference("triton", logits, target, **options)


def test_too_large_falls_back_to_torch_with_one_warning(monkeypatch, device):
    monkeypatch.setattr(triton_dft, "MAX_SIDE", {2: 8, 3: 8})
    monkeypatch.setattr(triton_dft, "_fallback_warned", set())
    logits, target = random_problem(2, 3, (9, 7), device=device)
    problem = Problem("amplitude", 3, "softmax", None, True)

    with pytest.warns(UserWarning, match=r"\(9, 7\).*torch backend"):
        out = triton_dft.band_sums(logits, target, problem)
    expected = torch_backend.band_sums(logits, target, problem)
    assert len(out) == len(expected) == 3  # torch's saved spectra travel to its backward
    torch.testing.assert_close(out[0], expected[0])
    fake = triton_dft.band_sums_fake(logits, target, problem)
    assert [t.shape for t in fake] == [t.shape for t in out]

    grad_sums = torch.randn_like(out[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        triton_dft.band_sums(logits, target, problem)  # the same shape again: no second warning
        grad = triton_dft.band_sums_backward(grad_sums, logits, target, out[1:], problem)
    torch.testing.assert_close(grad, torch_backend.band_sums_backward(grad_sums, logits, target, out[1:], problem))


def test_one_spatial_dim_falls_back(monkeypatch, device):
    monkeypatch.setattr(triton_dft, "_fallback_warned", set())
    logits, target = random_problem(1, 2, (11,), device=device)
    problem = Problem("amplitude", 2, "sigmoid", None, True)
    with pytest.warns(UserWarning, match=r"\(11,\)"):
        out = triton_dft.band_sums(logits, target, problem)
    torch.testing.assert_close(out[0], torch_backend.band_sums(logits, target, problem)[0])
