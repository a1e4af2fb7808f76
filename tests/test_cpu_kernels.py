"""The torch backend's fused CPU kernels (csrc/cpu_kernels.c, paths "fused" and "fused-parseval"): when they run, that
they compute what the pure-torch path and the reference compute, and their build.

Values against the float64 reference are also in test_torch_backend.py and test_precision.py,
each on both paths (the `torch_path` fixture)."""

import os
import subprocess
import sys

import pytest
import torch
from utils import assert_matches_reference, random_problem

import scc_kernels
from scc_kernels import planning, scc_loss
from scc_kernels._options import make_options
from scc_kernels.backends import _cpu_kernels
from scc_kernels.backends._spectra import base_is_prediction, make_hermitian
from scc_kernels.backends.registry import Problem
from scc_kernels.bands import half_grid_tables

needs_kernels = pytest.mark.usefixtures("kernels")  # tests/conftest.py


def _route(input, **options):
    return planning.resolve("torch", input, make_options(**options))


# ----------------------------------------------------------------------------------------------
# when the fused path runs


@needs_kernels
def test_resolve_takes_the_fused_path_for_float32_amplitude_on_a_cpu():
    x = torch.randn(2, 3, 9, 10)
    assert _route(x).path == "fused"
    assert _route(x, bands=4).path == "fused"
    assert _route(x.half()).path == "fused"  # computed in float32
    assert planning.resolve("auto", x, make_options()).path == "fused"
    assert _route(x.double()).path == "fft"
    assert _route(x, spectrum="complex", bands=3).path == "fft"
    assert _route(x, spectrum="complex").path == "fused-parseval"
    assert _route(x.double(), spectrum="complex").path == "parseval"
    assert _route(torch.randn(2, 3, 4, 4)).path == "tiny"


@needs_kernels
def test_switched_off_or_not_built_it_is_the_fft_path_and_nothing_is_built(monkeypatch, tmp_path):
    x, labels = random_problem(2, 3, (9, 10))
    monkeypatch.setenv(_cpu_kernels.SWITCH, "0")
    assert _route(x).path == "fft" and "off" in _cpu_kernels.status()
    monkeypatch.delenv(_cpu_kernels.SWITCH)
    monkeypatch.setenv("SCC_KERNELS_CPU_BUILD_DIR", str(tmp_path / "empty"))
    assert _route(x).path == "fft" and "not built" in _cpu_kernels.status()
    scc_loss(x.requires_grad_(), labels, softmax=True).backward()  # "auto" never starts a build
    assert not (tmp_path / "empty").exists()


# ----------------------------------------------------------------------------------------------
# the same values as the pure-torch path and the reference

FUSED_CASES = [  # (batch, channels, spatial, options, label_map); odd sizes, 1D to 3D
    (2, 3, (61,), dict(softmax=True), True),
    (3, 4, (19, 17), dict(softmax=True), True),
    (2, 3, (20, 18), dict(softmax=True, bands=5), True),
    (2, 4, (9, 10, 11), dict(softmax=True, bands=3), True),
    (2, 3, (15, 16), dict(sigmoid=True), False),
    (2, 3, (13, 14), dict(softmax=True, ignore_index=255, include_background=False), True),
    (3, 3, (12, 13), dict(softmax=True, batch=True, bands=2), True),
    (2, 2, (11, 9), dict(include_background=False), False),  # no activation: the base by magnitude
    (1, 3, (7, 8, 9), dict(softmax=True, bands=64), True),  # many narrow bands: chunks of several bands
    # path "fused-parseval": the complex spectrum, one band
    (2, 3, (61,), dict(softmax=True, spectrum="complex"), True),
    (3, 4, (19, 17), dict(softmax=True, spectrum="complex", include_background=False), True),
    (2, 3, (5, 6, 7), dict(sigmoid=True, spectrum="complex"), True),
    (3, 2, (11, 9), dict(spectrum="complex", batch=True), True),  # no activation: nothing saved
    (2, 3, (13, 14), dict(softmax=True, spectrum="complex", ignore_index=255), True),  # torch's sums
    (2, 3, (15, 16), dict(softmax=True, spectrum="complex"), False),  # a dense target: torch's sums
]


def _kernel_path(options):
    return "fused-parseval" if options.get("spectrum") == "complex" else "fused"


@needs_kernels
@pytest.mark.parametrize("batch, channels, spatial, options, label_map", FUSED_CASES)
def test_fused_path_matches_the_reference(batch, channels, spatial, options, label_map):
    seed = 1000 + len(spatial) * 10 + channels
    logits, target = random_problem(
        batch, channels, spatial, label_map=label_map, ignore_index=options.get("ignore_index"),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert _route(logits, **options).path == _kernel_path(options)
    assert_matches_reference("torch", logits, target, seed=seed, **options)


def _loss_and_gradient(logits, target, **options):
    x = logits.clone().requires_grad_(True)
    loss = scc_loss(x, target, backend="torch", reduction="none", **options)
    loss.sum().backward()
    return loss.detach(), x.grad


@needs_kernels
@pytest.mark.parametrize("batch, channels, spatial, options, label_map", FUSED_CASES)
def test_fused_path_agrees_with_the_fft_path(batch, channels, spatial, options, label_map, monkeypatch):
    seed = 2000 + len(spatial)
    logits, target = random_problem(
        batch, channels, spatial, label_map=label_map, ignore_index=options.get("ignore_index"),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    fused = _loss_and_gradient(logits, target, **options)
    monkeypatch.setenv(_cpu_kernels.SWITCH, "0")
    fft = _loss_and_gradient(logits, target, **options)
    # both within SPEC §4 of the reference, so within twice that of each other
    torch.testing.assert_close(fused[0], fft[0], rtol=2e-4, atol=2e-6, msg=f"seed {seed}: loss")
    assert (fused[1] - fft[1]).norm() <= 2e-3 * fft[1].norm() + 2e-7, f"seed {seed}: gradient"


@needs_kernels
def test_the_kernels_results_do_not_depend_on_the_number_of_threads():
    """Bitwise: each slice is reduced in a fixed order by one thread (torch's own FFTs and
    reductions around them make no such promise)."""
    spatial, rows, bands = (33, 31), 6, 3
    generator = torch.Generator().manual_seed(7)
    S = torch.randn(rows, 33 * 16, 2, generator=generator)
    D = 0.01 * torch.randn(rows, 33 * 16, 2, generator=generator)
    flags = torch.tensor([True, False, True, True, False, True])
    coefficients = torch.randn(rows, bands, 7, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            X, planes, gradient = S.clone(), torch.empty(2, rows, S.shape[1]), torch.empty_like(S)
            stats = _cpu_kernels.amplitude_forward(X, D.clone(), flags, planes, spatial, bands)  # S becomes X
            _cpu_kernels.amplitude_backward(coefficients, X, planes, spatial, gradient)
            results.append((stats, X, planes, gradient))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


@needs_kernels
@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_statistics_are_the_centred_statistics_of_the_values_it_stores(seed):
    """The forward's one pass sums about a shift in double (docs/cpu-kernels.md): its statistics
    are those of its own float32 u = |X|, v and d, centred in float64, to float32's rounding,
    where the amplitudes sit at 1e4 and spread by 1e-2 (raw sums lose every digit there: in
    double, Σu² − (Σu)²/n keeps about 4)."""
    spatial, rows, bands = (31, 34), 4, 3
    bins = 31 * 18
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(rows, bins, generator=generator) * 6.283
    radius = 1e4 + 1e-2 * torch.randn(rows, bins, generator=generator)
    S = torch.stack([radius * phase.cos(), radius * phase.sin()], -1)
    D = 1e-2 * torch.randn(rows, bins, 2, generator=generator)
    pairs = _cpu_kernels.mirror_pairs(spatial)
    own = pairs[pairs[:, 0] == pairs[:, 1], 0]
    for Z in (S, D):  # Hermitian already, so that the forward's projection leaves them as they are
        Z[:, pairs[:, 1]] = Z[:, pairs[:, 0]] * torch.tensor([1.0, -1.0])
        Z[:, own] = torch.stack([Z[:, own].norm(dim=-1), torch.zeros(rows, len(own))], -1)
    flags = torch.tensor([True, False, True, False])
    X, planes = S.clone(), torch.empty(2, rows, bins)
    stats = _cpu_kernels.amplitude_forward(X, D, flags, planes, spatial, bands)  # S becomes X
    tables = half_grid_tables(spatial, bands, torch.device("cpu"))
    # the kernel's |X|: float32 products and sum, correctly rounded sqrt (torch's float32 sqrt
    # is not, on some CPUs; the double sqrt rounded to float32 is)
    u = (X[..., 0] * X[..., 0] + X[..., 1] * X[..., 1]).double().sqrt().float().double()
    values = torch.stack([u, planes[0].double(), planes[1].double()])  # (3, rows, M)
    weight = tables.weight.double()
    for j in range(bands):
        in_band = tables.band == j
        w, part = weight[in_band], values[..., in_band]
        count = w.sum()
        means = (part * w).sum(-1) / count
        u, v, d = part - means.unsqueeze(-1)
        m2 = [(w * a * b).sum(-1) for a, b in [(u, u), (v, v), (u, v), (d, d)]]
        expected = torch.stack([count.expand(rows), *means, *m2], -1).float()
        torch.testing.assert_close(stats[:, j], expected, rtol=3e-6, atol=0, msg=f"seed {seed}, band {j}")


@needs_kernels
@pytest.mark.parametrize("spectrum", ["amplitude", "complex"])
@pytest.mark.parametrize("where", ["input", "target"])
def test_nan_gives_nan_loss_and_gradient(where, spectrum):
    logits, target = random_problem(2, 3, (10, 11), label_map=where == "input")
    if where == "input":
        logits[1, 2, 7, 3] = float("nan")
    else:
        target = target.clone()
        target[0, 1, 4, 9] = float("nan")
    loss, gradient = _loss_and_gradient(logits, target, softmax=True, spectrum=spectrum)
    assert loss.isnan().any() and gradient.isnan().any()


@needs_kernels
@pytest.mark.parametrize("activation, scale", [("softmax", 1.0), ("none", 1e15), ("none", 0.25)])
@pytest.mark.parametrize("include_background", [True, False])
def test_the_kernels_signals_and_base_choice_are_base_is_prediction(activation, scale, include_background):
    """label_signals chooses each slice's base as _spectra.base_is_prediction does, and forms x − y
    and the base: absent classes (base y), a class on one pixel, huge inputs without activation;
    without, the rule's edges too: Σx² exactly 4x the class's count (x) and just over (y), an
    all-zero slice of an absent class (x), a NaN (y)."""
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, 9, 8, generator=generator) * 4 * scale
    labels = torch.randint(0, 2, (3, 9, 8), generator=generator)  # classes 2 and 3 absent
    labels[0, 4, 4] = 3  # a one-pixel class
    if activation == "none":
        labels[2] = 0
        labels[2, :2, :2] = 1  # class 1 on 4 samples
        labels[1, 0, 0] = 3  # class 3 on 1
        x[1:] = 0
        x[2, 1].view(-1)[:64] = 0.5  # Σx² = 16 = 4 · 4: x
        x[1, 3].view(-1)[:17] = 0.5  # 4.25 > 4 · 1: y
        x[2, 2].view(-1)[0] = 0.5  # absent class: y; x[2, 3] = 0, absent: x
        x[0, 1, 3, 3] = float("nan")
    problem = Problem("amplitude", 1, activation, None, include_background, "fused")
    p = torch.softmax(x, 1) if activation == "softmax" else x
    offset = problem.offset
    flags, base, difference = _cpu_kernels.label_signals(p, labels.reshape(3, -1), offset, activation != "none")
    expected = base_is_prediction(x, labels, problem)
    assert torch.equal(flags, expected), (flags, expected)
    if activation == "none":
        assert expected[2, 1 - offset] and expected[2, 3 - offset], expected
        assert not expected[1, 3 - offset] and not expected[2, 2 - offset] and not expected[0, 1 - offset]
    elif activation == "softmax":  # x where the class is present and not one pixel
        assert expected.any() and not expected.all()
    y = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).float()[:, offset:]
    exact = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(difference, p[:, offset:] - y, **exact)
    assert base is not None
    torch.testing.assert_close(base, torch.where(expected[..., None, None], p[:, offset:], y), **exact)
    # every slice's base x (each class on 18 of 72 samples, p = 1/4): no base written
    every_class = torch.arange(72).remainder(4).expand(3, 72).contiguous()
    flags, base, _ = _cpu_kernels.label_signals(torch.full_like(p, 0.25), every_class, 0, True)
    assert flags.all() and base is None


@needs_kernels
@pytest.mark.parametrize("spatial", [(6, 8), (7, 9), (4, 6, 8), (5, 6, 7), (10,)])
def test_the_kernels_hermitian_projection_is_make_hermitian(spatial):
    """mirror_pairs reproduces _spectra.make_hermitian bit for bit (odd and even last axes)."""
    Z = torch.fft.rfftn(torch.randn(2, *spatial), dim=tuple(range(1, len(spatial) + 1)))
    expected = make_hermitian(Z.clone().unsqueeze(0), spatial[-1]).squeeze(0).reshape(2, -1)
    flat = torch.view_as_real(Z.reshape(2, -1)).clone()
    for m, mirrored in _cpu_kernels.mirror_pairs(spatial).tolist():  # the C loop, written out
        re = (flat[:, m, 0] + flat[:, mirrored, 0]) / 2
        im = (flat[:, m, 1] - flat[:, mirrored, 1]) / 2
        flat[:, m, 0], flat[:, m, 1], flat[:, mirrored, 0], flat[:, mirrored, 1] = re, im, re, -im
    assert torch.equal(torch.view_as_complex(flat), expected)


# ----------------------------------------------------------------------------------------------
# the build


@needs_kernels
def test_a_build_in_the_process_is_used_at_once(monkeypatch, tmp_path):
    """Asked before the build (a loss call), then built: the same process takes the fused path."""
    monkeypatch.setenv("SCC_KERNELS_CPU_BUILD_DIR", str(tmp_path))
    x = torch.randn(2, 3, 9, 10)
    assert not _cpu_kernels.available() and _route(x).path == "fft"
    _cpu_kernels.build()
    assert _cpu_kernels.available() and _route(x).path == "fused"


@needs_kernels
def test_a_second_build_finds_the_library():
    first = _cpu_kernels.build()
    assert _cpu_kernels.build() == first and first.is_file()


def test_an_unwritable_build_folder_is_a_clear_error(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SCC_KERNELS_CPU_BUILD_DIR", str(tmp_path / "file" / "below"))  # below a file
    if _cpu_kernels.compiler() is None:
        pytest.skip("no C compiler here: the build stops before the folder")
    with pytest.raises(RuntimeError, match="cannot write the CPU kernels"):
        _cpu_kernels.build()


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(_cpu_kernels.SWITCH, raising=False)  # the status says "off" first
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    with pytest.raises(RuntimeError, match="no working C compiler"):
        _cpu_kernels.build()
    assert _cpu_kernels.status() == "unavailable: no C compiler"


def test_a_failed_compile_is_a_clear_error(monkeypatch, tmp_path):
    failing = tmp_path / "cc"
    failing.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && echo failing-cc 1.0 && exit 0\necho 'cc: broken' >&2\nexit 1\n"
    )
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    monkeypatch.setenv("SCC_KERNELS_CPU_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(RuntimeError, match="failed:\ncc: broken"):
        _cpu_kernels.build()
    assert not _cpu_kernels.available()


@pytest.mark.slow  # a process of its own: the CLI
@needs_kernels
def test_cli_builds_and_info_says_so(tmp_path):
    env = {**os.environ, "SCC_KERNELS_CPU_BUILD_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "scc_kernels"]
    built = subprocess.run([*command, "build-cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    assert str(tmp_path) in built.stdout
    info = subprocess.run([*command, "info"], capture_output=True, text=True, env=env, timeout=300)
    assert f"CPU kernels: built: {tmp_path}" in info.stdout
    assert scc_kernels.__name__ in info.stdout
