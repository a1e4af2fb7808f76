"""The Triton kernels around torch.fft (triton_fft.py) against float64 results.

No GPU: the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET).
Shapes are odd-sized and span several pixel blocks and bin tiles (BLOCK = 1024) where it matters.
Through scc_loss the path is forced with the `fft_path` fixture: in the interpreter
planning.resolve picks it only where the DFT kernels do not reach (1D, large slices).
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from utils import assert_matches_reference, converged_problem, device_for, kernel_case_id, op_static, random_problem

from scc_kernels import planning, scc_loss
from scc_kernels._options import make_options
from scc_kernels.backends import torch_backend, triton_fft
from scc_kernels.backends._spectra import base_is_prediction
from scc_kernels.backends.registry import Problem
from scc_kernels.verify import huge_problem


@pytest.fixture
def device():
    return device_for("triton")


@pytest.fixture
def fft_path(monkeypatch):
    monkeypatch.setattr(planning, "_triton_path", lambda input, opts: "fft")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the module's entry points, against torch_backend in float64 on the same values

# Options combined rather than crossed: (spatial, channels, spectrum, bands, activation,
# target dtype, ignore_index, include_background). An integer target dtype means a label map.
DIRECT_CASES = [
    ((2500,), 3, "amplitude", 3, "softmax", torch.int64, -100, True),  # 2 pixel blocks, 2 bin tiles
    ((13,), 2, "complex", 2, "sigmoid", torch.float32, None, False),
    ((40, 61), 3, "amplitude", 1, "softmax", torch.uint8, 255, False),  # 2 tiles
    ((12, 9), 4, "complex", 3, "none", torch.float64, None, True),
    pytest.param(
        ((9, 10, 24), 2, "amplitude", 24, "sigmoid", torch.int32, None, True),  # 2 tiles
        marks=pytest.mark.slow,
    ),
    pytest.param(
        ((5, 6, 7), 3, "complex", 64, "softmax", torch.int64, 2**33 + 1, True),  # ignore_index beyond int32
        marks=pytest.mark.slow,
    ),
    ((7, 5, 4), 3, "amplitude", 3, "none", torch.bfloat16, None, False),
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=kernel_case_id)
def test_band_stats_and_backward_match_float64(case, device):
    """STATS, saved tensors, fake structure and input gradient (for random grad_stats) in float32
    vs torch_backend run in float64 on the same data."""
    spatial, channels, spectrum, bands, activation, target_dtype, ignore_index, background = case
    seed = len(spatial) * 100 + bands
    label_map = not target_dtype.is_floating_point
    logits, target = random_problem(
        2, channels, spatial, label_map=label_map, ignore_index=ignore_index, device=device, generator=_generator(seed)
    )
    target = target.to(target_dtype)
    target64 = target.double() if target.is_floating_point() else target  # the same (possibly rounded) values
    problem = Problem(spectrum, bands, activation, ignore_index, background, "fft")

    stats, *saved = triton_fft.band_stats(logits, target, problem)
    fake = triton_fft.band_stats_fake(logits, target, problem)
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in (stats, *saved)]
    assert len(saved) == 2  # the FFT path's: half spectra and the base flags
    assert torch.equal(saved[1], base_is_prediction(logits, target, problem))
    expected, *expected_saved = torch_backend.band_stats(logits.double(), target64, problem)
    scale = expected.abs().flatten(0, -2).amax(0).clamp(min=1e-30)  # per statistic
    torch.testing.assert_close(
        stats.double() / scale, expected / scale, rtol=1e-5, atol=1e-5, msg=lambda message: f"seed {seed}: {message}"
    )

    grad_stats = torch.randn(expected.shape, dtype=torch.float64, generator=_generator(seed)).to(device)
    grad = triton_fft.band_stats_backward(grad_stats.float(), stats, logits, target, saved, problem)
    expected_grad = torch_backend.band_stats_backward(
        grad_stats, expected, logits.double(), target64, expected_saved, problem
    )
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    error = (grad.double() - expected_grad).norm() / expected_grad.norm()
    assert error < 1e-5, f"seed {seed}: relative gradient error {error:.2e}"
    if not background and activation != "softmax":  # softmax's Jacobian couples the channels
        assert bool((grad[:, 0] == 0).all())
    if ignore_index is not None:
        assert bool((grad.movedim(1, -1)[target == ignore_index] == 0).all())


# ----------------------------------------------------------------------------------------------
# end to end through scc_loss, SPEC §4 against the float64 reference

# (regime, spatial, options): random logits, near-converged predictions (losses ~1e-5 at
# confidence 8), bands of a few bins (some only Hermitian mirror pairs: r = 1), huge magnitudes
# without activation (the right value, or NaN where a float32 sum overflows)
END_TO_END_CASES = [
    ("random", (47,), dict(spectrum="amplitude", softmax=True, bands=5)),
    ("random", (33, 31), dict(spectrum="complex", softmax=True, bands=3, ignore_index=255, include_background=False)),
    ("random", (24, 17), dict(spectrum="amplitude", sigmoid=True, bands=4, batch=True)),
    ("random", (9, 10, 11), dict(spectrum="amplitude", softmax=True, bands=2, ignore_index=0, batch=True)),
    pytest.param("random", (19, 17), dict(spectrum="amplitude", softmax=True, bands=24), marks=pytest.mark.slow),
    pytest.param("random", (6, 7, 5), dict(spectrum="complex", softmax=True, bands=64), marks=pytest.mark.slow),
    pytest.param("converged", (63, 65), dict(spectrum="amplitude", softmax=True), marks=pytest.mark.slow),
    pytest.param(
        "converged", (45, 47), dict(spectrum="complex", softmax=True, bands=4, ignore_index=255), marks=pytest.mark.slow
    ),
    pytest.param("converged", (20, 18, 22), dict(spectrum="amplitude", softmax=True, bands=3), marks=pytest.mark.slow),
    ("converged", (11, 9), dict(spectrum="complex", softmax=True, bands=12)),
    pytest.param(
        "converged", (301,), dict(spectrum="amplitude", softmax=True, bands=64, batch=True), marks=pytest.mark.slow
    ),
    ("huge 1e15", (17, 19), dict(spectrum="amplitude")),
    ("huge 1e30", (17, 19), dict(spectrum="complex", bands=3)),
    ("huge 1e18", (6, 5, 7), dict(spectrum="amplitude", bands=2)),
]


@pytest.mark.usefixtures("fft_path")
@pytest.mark.parametrize(
    "regime, spatial, options", END_TO_END_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None
)
def test_end_to_end_matches_reference(regime, spatial, options, device):
    seed = math.prod(spatial) % 1000
    generator = _generator(seed)
    kind, _, value = regime.partition(" ")
    if kind == "converged":
        logits, target = converged_problem(
            2, 3, spatial, confidence=8, ignore_index=options.get("ignore_index"), device=device, generator=generator
        )
    elif kind == "huge":
        logits, target = huge_problem(2, 2, spatial, magnitude=float(value), device=device, generator=generator)
    else:
        logits, target = random_problem(
            2,
            3,
            spatial,
            ignore_index=options.get("ignore_index"),
            label_map="sigmoid" not in options,
            device=device,
            generator=generator,
        )
    assert_matches_reference("triton", logits, target, seed=seed, **options)


@pytest.mark.usefixtures("fft_path")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(
    "spatial, options, label_map",
    [
        ((21, 23), dict(spectrum="amplitude", softmax=True, bands=3, ignore_index=255), True),
        ((7, 6, 9), dict(spectrum="complex", sigmoid=True, bands=2, include_background=False), False),
    ],
    ids=["2d", "3d"],
)
def test_half_precision_inputs(spatial, options, label_map, dtype, device):
    """Computed in float32: the loss is float32, the gradient the input's dtype (compare_with_reference)."""
    logits, target = random_problem(
        2,
        3,
        spatial,
        label_map=label_map,
        ignore_index=options.get("ignore_index"),
        dtype=dtype,
        device=device,
        generator=_generator(7),
    )
    assert_matches_reference("triton", logits, target, seed=7, **options)


# ----------------------------------------------------------------------------------------------
# SPEC §5, torch.compile, the custom op's registration, the path choice


@pytest.mark.usefixtures("fft_path")
@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
def test_nan_at_an_ignored_pixel_propagates(spectrum, device):
    """The ignore mask is a product in the prologue: NaN·0 is NaN, as in the reference (SPEC §5)."""
    logits, labels = random_problem(3, 3, (8, 9), ignore_index=255, device=device, generator=_generator(5))
    logits[1, 2, 4, 5] = math.nan
    labels[1, 4, 5] = 255
    options = dict(spectrum=spectrum, bands=3, softmax=True, ignore_index=255, reduction="none")
    loss = scc_loss(logits, labels, backend="triton", **options).cpu()
    expected = scc_loss(logits.double().cpu(), labels.cpu(), backend="reference", **options)
    assert torch.equal(loss.isnan(), expected.isnan())
    assert loss[1].isnan().all() and not loss[[0, 2]].isnan().any()


@pytest.mark.usefixtures("fft_path")
@pytest.mark.slow
def test_compiles_to_one_graph(device):
    """band_stats_fake must describe what the kernels return, or torch.compile breaks."""
    logits, labels = random_problem(2, 3, (9, 7), ignore_index=255, device=device, generator=_generator(9))
    options = dict(spectrum="amplitude", bands=3, softmax=True, ignore_index=255, include_background=False)
    compiled = torch.compile(
        lambda x, t: scc_loss(x, t, backend="triton", **options), backend="aot_eager", fullgraph=True
    )
    x = logits.clone().requires_grad_(True)
    compiled(x, labels).backward()
    ref_logits = logits.double().cpu().requires_grad_(True)
    ref = scc_loss(ref_logits, labels.cpu(), backend="reference", **options)
    ref.backward()
    torch.testing.assert_close(x.grad.double().cpu(), ref_logits.grad, rtol=1e-3, atol=1e-7)


@pytest.mark.usefixtures("fft_path")
@pytest.mark.slow
def test_opcheck_band_stats(device):
    opts = make_options(spectrum="amplitude", bands=3, softmax=True, ignore_index=255)
    logits, labels = random_problem(2, 3, (7, 6), ignore_index=255, device=device, generator=_generator(3))
    args = (logits.requires_grad_(True), labels, *op_static("triton", logits, opts))
    _stats, *saved = torch.ops.scc_kernels.spectral_stats(*args)
    assert args[3] == "fft" and len(saved) == 2  # the FFT path and its saved tensors
    torch.library.opcheck(torch.ops.scc_kernels.spectral_stats.default, args)


def test_transform_path_rule(monkeypatch):
    opts = make_options(bands=3, softmax=True)

    def path(spatial):
        return planning._triton_path(torch.empty(2, 3, *spatial, device="meta"), opts)

    # the interpreter: the DFT wherever its kernels reach (2D up to 512, 3D up to 128)
    assert [path(s) for s in [(31,), (64, 64), (513, 8), (8, 8, 8), (129, 8, 8)]] == ["fft", "dft", "fft", "dft", "fft"]
    monkeypatch.setattr(planning, "profile_name", lambda device: "H200")  # as on a GPU
    torch.use_deterministic_algorithms(True)
    try:
        cpu = torch.device("cpu")
        assert planning.triton_path((2, 3, 64, 64), "amplitude", 3, torch.float32, True, cpu) == "fft"  # no atomics
    finally:
        torch.use_deterministic_algorithms(False)


def test_transform_path_on_a_gpu_follows_the_plan(monkeypatch):
    calls = []
    monkeypatch.setattr(planning, "triton_path", lambda *args: calls.append(args) or "fft")
    on_cuda = types.SimpleNamespace(
        shape=(2, 3, 64, 64), is_cuda=True, dtype=torch.float32, device=torch.device("cuda")
    )
    assert planning._triton_path(on_cuda, make_options(bands=3, softmax=True)) == "fft"
    assert calls and calls[0][0] == (2, 3, 64, 64)
