"""The torch backend against the float64 reference, and its hand-written backward under gradcheck."""

import pytest
import torch
from utils import assert_matches_reference, random_problem

from scc_kernels import scc_loss

SHAPES = [  # 1D to 4D; the fast tier (-m "not slow") runs 2D and 3D
    pytest.param(2, 3, (47,), marks=pytest.mark.slow),
    (2, 3, (9, 10)),
    pytest.param(3, 2, (7, 6), marks=pytest.mark.slow),
    (2, 4, (5, 6, 7)),
    pytest.param(2, 2, (4, 5, 3, 6), marks=pytest.mark.slow),
]
OPTIONS = [
    dict(spectrum="complex", softmax=True),
    dict(spectrum="complex", softmax=True, ignore_index=255, include_background=False),
    dict(spectrum="complex", sigmoid=True, batch=True),
    dict(spectrum="complex", bands=3, softmax=True, band_weights=[1.0, 0.0, 2.5]),
    dict(spectrum="amplitude", softmax=True),
    dict(spectrum="amplitude", softmax=True, ignore_index=-100, batch=True),
    dict(spectrum="amplitude", bands=4, sigmoid=True, include_background=False),
    dict(spectrum="amplitude", bands=2, other_act=torch.tanh, eps=0.0, batch=True),
]


# ignore_index needs a label map (with a dense target it is a ValueError, tested in test_api)
CASES = [
    pytest.param(
        options,
        label_map,
        id=f"{'labels' if label_map else 'dense'}-" + "-".join(f"{k}={v}" for k, v in options.items()),
    )
    for options in OPTIONS
    for label_map in (True, False)
    if label_map or "ignore_index" not in options
]


# float64, and float32 on each path of the torch backend for the spectrum (fused: the amplitude's)
CASES_BY_PATH = [
    pytest.param(*case.values, dtype, path, id=f"{case.id}-{str(dtype)[6:]}-{path}")
    for case in CASES
    for dtype, path in [(torch.float64, "fft"), (torch.float32, "fft"), (torch.float32, "fused")]
    if path == "fft" or case.values[0]["spectrum"] == "amplitude"
]


@pytest.mark.parametrize("batch,channels,spatial", SHAPES)
@pytest.mark.parametrize("options,label_map,dtype,torch_path", CASES_BY_PATH, indirect=["torch_path"])
def test_matches_reference(batch, channels, spatial, options, label_map, dtype, torch_path):
    logits, target = random_problem(
        batch, channels, spatial, label_map=label_map, ignore_index=options.get("ignore_index"), dtype=dtype
    )
    assert_matches_reference("torch", logits, target, **options)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
def test_half_precision_inputs(dtype, spectrum):
    logits, target = random_problem(2, 3, (12, 11), dtype=dtype)
    assert_matches_reference("torch", logits, target, spectrum=spectrum, softmax=True)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_label_dtypes_and_layouts(label_dtype):
    logits, labels = random_problem(2, 3, (8, 9))
    labels = labels.to(label_dtype)
    for target in (labels, labels.unsqueeze(1)):
        assert_matches_reference("torch", logits, target, spectrum="complex", softmax=True)
        assert_matches_reference("torch", logits, target, spectrum="amplitude", softmax=True)
    floating = labels.unsqueeze(1).float()
    assert_matches_reference("torch", logits, floating, softmax=True, to_onehot_y=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    logits, target = random_problem(3, 2, (6, 7), dtype=torch.float64)
    ref = scc_loss(logits, target, softmax=True, reduction=reduction, backend="reference")
    got = scc_loss(logits, target, softmax=True, reduction=reduction, backend="torch")
    assert got.shape == ref.shape == ({"none": (3, 2)}.get(reduction, ()))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


GRADCHECK_CASES = [
    dict(spectrum="complex", softmax=True),
    dict(spectrum="complex", softmax=True, batch=True, ignore_index=7, include_background=False),
    dict(spectrum="complex", bands=3, sigmoid=True),
    dict(spectrum="amplitude", softmax=True),
    dict(spectrum="amplitude", bands=3, softmax=True, batch=True),
    dict(spectrum="amplitude", bands=2, sigmoid=True, ignore_index=7, include_background=False),
    # no activation: inputs larger than the one-hot target, so the target is the transform's base
    dict(spectrum="amplitude", bands=2),
    dict(spectrum="complex", bands=3, ignore_index=7, batch=True),
]


@pytest.mark.slow  # 5-30 s a case on 2 cores; test_gradcheck_dense_soft_target[complex] is the fast tier's gradcheck
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("options", GRADCHECK_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradcheck(spatial, options):
    logits, target = random_problem(2, 3, spatial, dtype=torch.float64, ignore_index=options.get("ignore_index"))
    logits.requires_grad_(True)

    def f(x):
        return scc_loss(x, target, reduction="none", backend="torch", **options)

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_transform_base_is_the_signal_of_smaller_energy():
    """_spectra.base_is_prediction: x unless it is the larger by largest magnitude, or holds more
    than 4x the energy Σ·² of y."""
    from scc_kernels.backends._spectra import base_is_prediction
    from scc_kernels.backends.registry import Problem

    softmax = Problem("amplitude", 1, "softmax", None, True, "fft")
    logits = torch.zeros(1, 3, 4, 5, dtype=torch.float64)
    logits[:, 1] = -30  # class 1 confidently left out: x ≈ 0 where y has 5 pixels
    labels = torch.zeros(1, 4, 5, dtype=torch.int64)
    labels[0, 0] = 1
    labels[0, 1, 0] = 2  # class 2 on one pixel, under a prediction of 1/2 on all 20
    # class 0: Σx² = 20·(1/2)² = 5 <= 4·14 pixels; class 1: Σx² ≈ 0; class 2: 5 > 4·1
    assert base_is_prediction(logits, labels, softmax).tolist() == [[True, True, False]]
    huge = 1e15 * torch.randn(1, 3, 4, 5, dtype=torch.float64)
    assert not base_is_prediction(huge, labels, Problem("amplitude", 1, "none", None, True, "fft")).any()


@pytest.mark.parametrize("spectrum", [pytest.param("amplitude", marks=pytest.mark.slow), "complex"])
def test_gradcheck_dense_soft_target(spectrum):
    logits, target = random_problem(2, 2, (4, 5), label_map=False, dtype=torch.float64)
    logits.requires_grad_(True)

    def loss(x):
        return scc_loss(x, target, spectrum=spectrum, sigmoid=True, reduction="none", backend="torch")

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)
