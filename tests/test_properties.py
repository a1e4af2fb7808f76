"""Properties of the reference (hypothesis): r in [-1, 1], shift invariance, symmetry, scale
invariance; and an exploration of the torch backend against it over shapes and options."""

import pytest
import torch
from utils import assert_matches_reference, random_problem

from scc_kernels import spectral_correlation

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra; the GPU image lacks it")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies


def r_ref(x, y, **options):
    return spectral_correlation(x, y, backend="reference", **options)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(2, 7), st.integers(2, 7))
options = st.fixed_dictionaries(
    {"spectrum": st.sampled_from(["amplitude", "complex"]), "bands": st.sampled_from([None, 1, 2, 5])}
)


def _pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, opts=options, seed=st.integers(0, 2**31 - 1), eps=st.sampled_from([0.0, 1e-5, 1.0]))
def test_r_in_unit_interval(shape, opts, seed, eps):
    x, y = _pair(shape, seed)
    r = r_ref(x, y, eps=eps, **opts)
    assert torch.all(r.abs() <= 1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(
    shape=shapes,
    bands=st.sampled_from([None, 3]),
    seed=st.integers(0, 2**31 - 1),
    shift=st.tuples(st.integers(-6, 6), st.integers(-6, 6)),
)
def test_amplitude_unchanged_by_circular_shift(shape, bands, seed, shift):
    x, y = _pair(shape, seed)
    shifted = torch.roll(x, shifts=shift, dims=(2, 3))
    torch.testing.assert_close(r_ref(shifted, y, bands=bands), r_ref(x, y, bands=bands), rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, opts=options, seed=st.integers(0, 2**31 - 1), batch=st.booleans())
def test_symmetric(shape, opts, seed, batch):
    x, y = _pair(shape, seed)
    torch.testing.assert_close(
        r_ref(x, y, batch=batch, **opts), r_ref(y, x, batch=batch, **opts), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(shape=shapes, opts=options, seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0))
def test_scale_invariant_without_eps(shape, opts, seed, scale):
    x, y = _pair(shape, seed)
    torch.testing.assert_close(r_ref(scale * x, y, eps=0.0, **opts), r_ref(x, y, eps=0.0, **opts), rtol=1e-9, atol=1e-9)


# --- exploration: the torch backend against the float64 reference (SPEC §4) -------------------

# 4 or more samples a side: signals of 1-3 samples (1-2 distinct amplitudes) are pinned in test_precision.py
spatial_shapes = st.lists(st.integers(4, 9), min_size=1, max_size=3).map(tuple)
backend_options = st.fixed_dictionaries(
    {
        "spectrum": st.sampled_from(["amplitude", "complex"]),
        "bands": st.sampled_from([None, 1, 2, 5]),
        "include_background": st.booleans(),
        "batch": st.booleans(),
    }
)


@pytest.mark.slow
@settings(deadline=None)  # as many examples as the profile says (conftest: ci, explore)
@given(
    spatial=spatial_shapes,
    channels=st.integers(2, 4),
    options=backend_options,
    target=st.sampled_from(["labels", "labels+ignore", "dense"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_torch_backend_matches_the_reference(spatial, channels, options, target, seed):
    ignore_index = 255 if target == "labels+ignore" else None
    logits, labels = random_problem(
        2,
        channels,
        spatial,
        label_map=target != "dense",
        ignore_index=ignore_index,
        generator=torch.Generator().manual_seed(seed),
    )
    # a class on one pixel (a flat |Y|) included: _stats.with_flat_targets sets its moments exactly
    assert_matches_reference("torch", logits, labels, seed=seed, softmax=True, ignore_index=ignore_index, **options)
