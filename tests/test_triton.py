"""Triton backend: the one-pass complex (Parseval) kernels against float64 results, and the
backend glue. Runs on CUDA when present, else on CPU in Triton's interpreter (see conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch
from utils import assert_matches_reference, converged_problem, device_for, random_problem, typed_problem

import scc_kernels
from scc_kernels.backends import torch_backend, triton_backend, triton_dft
from scc_kernels.backends.registry import Problem
from scc_kernels.verify import GRAD_ATOL, GRAD_RTOL, LOSS_ATOL, LOSS_RTOL

_DEVICE = device_for("triton")
pytestmark = pytest.mark.skipif(
    triton_backend.unavailable_reason(_DEVICE) is not None,
    reason="needs CUDA, or TRITON_INTERPRET=1 set before triton is imported (tests/conftest.py sets it)",
)


@pytest.fixture
def device():
    return _DEVICE


# Options combined rather than crossed. Sizes are odd, and some exceed one block of pixels
# (BLOCK_N = 2048 / next_pow2(C), e.g. 512 for C = 3, 64 for C = 17) so that the per-block
# partial sums and the origin sample living in block 0 only are exercised.
CASES = [
    # (batch, channels, spatial, target, options, dtype)
    (2, 3, (7, 9), "int64", dict(softmax=True, ignore_index=255, include_background=False, batch=True), torch.float32),
    (3, 2, (31,), "uint8", dict(sigmoid=True), torch.float32),
    (1, 4, (5, 6, 7), "dense", dict(sigmoid=True, batch=True), torch.float32),
    (2, 3, (45, 53), "uint8", dict(softmax=True, ignore_index=255, batch=True), torch.float32),
    (2, 5, (9, 11, 13), "int64", dict(softmax=True, ignore_index=-100, include_background=False), torch.float32),
    (2, 17, (13, 21), "dense", dict(softmax=True, include_background=False), torch.float32),
    (2, 2, (33, 65), "int32", dict(), torch.float32),
    (2, 1, (11, 13), "dense", dict(sigmoid=True), torch.float32),
    (2, 3, (17, 19), "uint8", dict(softmax=True, ignore_index=255), torch.bfloat16),
    (2, 4, (7, 5, 9), "dense", dict(sigmoid=True, batch=True, include_background=False), torch.bfloat16),
    (1, 3, (23,), "int64", dict(ignore_index=-100), torch.float16),
]


def _make(batch, channels, spatial, target_kind, options, dtype, device):
    logits, target = typed_problem(spatial, options, target_kind, dtype, device, batch, channels)
    if "ignore_index" in options and batch > 1:
        # an ignored origin sample must get no √N·c_mean term, nonzero with batch=True when
        # another item's origin is kept
        target[0].view(-1)[0] = options["ignore_index"]
        target[1].view(-1)[0] = 0
    return logits, target


@pytest.mark.parametrize("batch, channels, spatial, target_kind, options, dtype", CASES)
def test_parseval_matches_reference(device, batch, channels, spatial, target_kind, options, dtype):
    logits, target = _make(batch, channels, spatial, target_kind, options, dtype, device)
    assert_matches_reference("triton", logits, target, spectrum="complex", **options)


@pytest.mark.parametrize("case", [0, 3, 4, 5], ids=lambda i: "x".join(map(str, CASES[i][2])))
def test_parseval_stats_and_backward_match_float64(device, case):
    """STATS and input gradient vs torch_backend run in float64 on the same data, with the same grad_stats."""
    batch, channels, spatial, target_kind, options, _ = CASES[case]
    logits, target = _make(batch, channels, spatial, target_kind, options, torch.float32, device)
    target64 = target if target_kind != "dense" else target.double()
    activation = "softmax" if options.get("softmax") else "sigmoid" if options.get("sigmoid") else "none"
    background = options.get("include_background", True)
    problem = Problem("complex", 1, activation, options.get("ignore_index"), background, "parseval")

    stats = triton_backend.band_stats(logits, target, problem)
    (expected,) = torch_backend.band_stats(logits.double(), target64, problem)
    assert len(stats) == 1 and stats[0].dtype == torch.float32  # nothing saved
    assert [t.shape for t in triton_backend.band_stats_fake(logits, target, problem)] == [expected.shape]
    scale = expected.abs().flatten(0, -2).amax(0).clamp(min=1e-30)  # per statistic
    torch.testing.assert_close(stats[0].double() / scale, expected / scale, rtol=1e-5, atol=1e-5)

    grad_stats = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad_stats = grad_stats.to(device)
    grad = triton_backend.band_stats_backward(grad_stats.float(), stats[0], logits, target, [], problem)
    grad_expected = torch_backend.band_stats_backward(grad_stats, expected, logits.double(), target64, [], problem)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    error = (grad.double() - grad_expected).norm() / grad_expected.norm()
    assert error < 1e-5, f"relative gradient error {error:.2e}"


@pytest.mark.parametrize("confidence", [4, 8])
@pytest.mark.parametrize("spatial, batch_option", [((20, 23), False), ((7, 6, 9), True)], ids=["20x23", "7x6x9"])
def test_parseval_near_convergence(device, confidence, spatial, batch_option):
    """Losses of ~1e-2 (confidence 4) down to ~1e-5 (8): Σ(x − y)² per sample keeps their digits."""
    logits, labels = converged_problem(
        2, 3, spatial, confidence=confidence, device=device, generator=torch.Generator().manual_seed(confidence)
    )
    assert_matches_reference("triton", logits, labels, spectrum="complex", softmax=True, batch=batch_option)


def test_layouts_the_kernels_do_not_assume(device):
    """A transposed (non-contiguous) input, a (B, 1, *S) label map and a float16 dense target."""
    logits, labels = random_problem(2, 3, (9, 7), device=device)
    assert_matches_reference(
        "triton", logits.transpose(-1, -2), labels.transpose(-1, -2).unsqueeze(1), spectrum="complex", softmax=True
    )
    logits, soft = random_problem(2, 3, (9, 7), label_map=False, device=device)
    assert_matches_reference("triton", logits, soft.half(), spectrum="complex", sigmoid=True)


def _assert_scalar_loss_matches_reference(run, logits, labels, **options):
    """`run(x, y, **options)` → scalar loss of the triton backend, vs the reference's (and grads)."""
    ref_logits = logits.double().cpu().requires_grad_(True)
    ref = scc_kernels.scc_loss(ref_logits, labels.cpu(), backend="reference", **options)
    ref.backward()
    x = logits.clone().requires_grad_(True)
    out = run(x, labels, **options)
    out.backward()
    assert out.shape == ()
    assert abs(out.item() - ref.item()) <= LOSS_RTOL[torch.float32] * abs(ref.item()) + LOSS_ATOL
    grad_error = (x.grad.double().cpu() - ref_logits.grad).norm()
    assert grad_error <= GRAD_RTOL[torch.float32] * ref_logits.grad.norm() + GRAD_ATOL


def _triton_loss(x, y, **options):
    return scc_kernels.scc_loss(x, y, backend="triton", **options)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_and_backward(device, reduction):
    logits, labels = random_problem(2, 4, (11, 13), ignore_index=255, device=device)
    _assert_scalar_loss_matches_reference(
        _triton_loss, logits, labels, spectrum="complex", softmax=True, ignore_index=255, reduction=reduction
    )


@pytest.mark.slow
@pytest.mark.parametrize("spectrum, bands", [("complex", None), ("amplitude", 3)], ids=["parseval", "dft"])
def test_compiles_to_one_graph(device, spectrum, bands):
    """band_stats_fake must describe what the kernels return, or torch.compile breaks."""
    logits, labels = random_problem(2, 3, (9, 7), ignore_index=255, device=device)
    compiled = torch.compile(_triton_loss, backend="aot_eager", fullgraph=True)
    _assert_scalar_loss_matches_reference(
        compiled,
        logits,
        labels,
        spectrum=spectrum,
        bands=bands,
        softmax=True,
        ignore_index=255,
        include_background=False,
    )


@pytest.mark.parametrize(
    "spectrum, bands",
    [("complex", None), ("amplitude", None), pytest.param("complex", 3, marks=pytest.mark.slow)],
    ids=["parseval", "dft-amplitude", "dft-complex-K3"],
)
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_nan_input_propagates(device, activation, spectrum, bands):
    """Also from an ignored pixel (SPEC §5): the reference zeroes those by a product, and NaN·0 is NaN."""
    logits, labels = random_problem(3, 3, (8, 9), ignore_index=255, device=device)
    logits[0, 1, 2, 3] = math.nan
    labels[0, 2, 3] = 1
    logits[1, 2, 4, 5] = math.nan
    labels[1, 4, 5] = 255
    options = dict(spectrum=spectrum, bands=bands, ignore_index=255, reduction="none")
    options.update({} if activation == "none" else {activation: True})
    nan = scc_kernels.scc_loss(logits, labels, backend="triton", **options).isnan().cpu()
    ref_nan = scc_kernels.scc_loss(logits.double().cpu(), labels.cpu(), backend="reference", **options)
    ref_nan = ref_nan.isnan()
    assert torch.equal(nan, ref_nan)
    assert nan[0, 1] and nan[1, 2] and not nan[2].any()  # (softmax: the item's other channels too)


@pytest.mark.parametrize("spectrum, bands", [("complex", None), ("amplitude", 3)], ids=["parseval", "dft"])
def test_ignore_index_beyond_int32(device, spectrum, bands):
    """Labels are compared in int64: 2**33 + 1 truncated to int32 would be class 1."""
    ignore_index = 2**33 + 1
    logits, labels = random_problem(2, 3, (9, 11), ignore_index=ignore_index, device=device)
    assert labels.dtype == torch.int64 and bool((labels == ignore_index).any())
    assert_matches_reference(
        "triton", logits, labels, spectrum=spectrum, bands=bands, softmax=True, ignore_index=ignore_index
    )


def test_unavailable_reason(monkeypatch):
    assert triton_backend.unavailable_reason(torch.device("cuda")) is None
    monkeypatch.setattr(triton_backend, "INTERPRETED", True)
    assert triton_backend.unavailable_reason(torch.device("cpu")) is None
    monkeypatch.setattr(triton_backend, "INTERPRETED", False)
    reason = triton_backend.unavailable_reason(torch.device("cpu"))
    assert isinstance(reason, str) and "TRITON_INTERPRET=1" in reason and "CUDA" in reason


def test_non_parseval_routes_to_triton_dft(device, monkeypatch):
    calls = []
    original = triton_dft.band_stats

    def recording(input, target, problem):
        calls.append(problem)
        return original(input, target, problem)

    monkeypatch.setattr(triton_dft, "band_stats", recording)
    logits, labels = random_problem(1, 2, (6, 7), device=device)
    scc_kernels.scc_loss(logits, labels, spectrum="complex", backend="triton")
    assert calls == []
    for options in (dict(spectrum="amplitude"), dict(spectrum="complex", bands=3)):
        scc_kernels.scc_loss(logits, labels, backend="triton", **options)
    assert [(p.spectrum, p.num_bands) for p in calls] == [("amplitude", 1), ("complex", 3)]
