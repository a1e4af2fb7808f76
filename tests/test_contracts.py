"""Contracts outside the happy path (issue 8): torch.compile with changing shapes, every autograd
mode, the custom ops' registrations (opcheck), no gradient to the target, `other_act` modules,
option checks, warnings that point at the caller, Triton launch limits and determinism, the CLI."""

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from utils import op_static, random_problem

import scc_kernels
import scc_kernels.__main__ as cli
from scc_kernels import SCCLoss, scc_loss
from scc_kernels.backends import triton_utils

FAST = ["torch", "triton"]  # fast backends that run on every test machine (triton: interpreted without a GPU)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SETTINGS = [  # (options, label map target?): Parseval and transform paths, both target kinds
    (dict(spectrum="complex", softmax=True), True),
    (dict(spectrum="amplitude", bands=3, softmax=True, ignore_index=255), True),
    (dict(spectrum="complex", bands=2, sigmoid=True), False),
]
# the opchecks' rows: the Parseval setting in the fast tier, the transform paths (1-3 s each interpreted) slow
OPCHECK_SETTINGS = [SETTINGS[0], *(pytest.param(*setting, marks=pytest.mark.slow) for setting in SETTINGS[1:])]


def _random(batch, channels, spatial, seed, **options):
    return random_problem(
        batch, channels, spatial, generator=torch.Generator().manual_seed(seed), device=DEVICE, **options
    )


def _inputs(shape, label_map, seed, options):
    """Logits and a label map (a tenth ignored if options say so) or soft targets, of one seed."""
    return _random(shape[0], shape[1], shape[2:], seed, label_map=label_map, ignore_index=options.get("ignore_index"))


def _value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = fn(x, target)
    value.backward()
    return value.detach(), x.grad


# --- 1. torch.compile with changing shapes ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [None, True], ids=["automatic-dynamic", "dynamic"])
@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_compile_with_changing_shapes_matches_eager(backend, dynamic):
    torch._dynamo.reset()
    shapes = [(2, 3, 16, 17), (3, 3, 20, 23), (2, 3, 9, 31)]  # patch-based training changes sizes
    (parseval, parseval_target), (banded, banded_target) = SETTINGS[:2]
    module = SCCLoss(backend=backend, **parseval)

    def function(x, t):
        return scc_loss(x, t, backend=backend, **banded)

    for loss, options, label_map in ((module, parseval, parseval_target), (function, banded, banded_target)):
        compiled = torch.compile(loss, fullgraph=True, dynamic=dynamic)
        for seed, shape in enumerate(shapes):
            logits, target = _inputs(shape, label_map, seed, options)
            eager = _value_and_grad(loss, logits, target)
            traced = _value_and_grad(compiled, logits, target)
            where = f"seed {seed}, shape {shape}, {options}"
            torch.testing.assert_close(traced[0], eager[0], rtol=1e-5, atol=1e-6, msg=where)
            torch.testing.assert_close(traced[1], eager[1], rtol=1e-4, atol=1e-7, msg=where)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options, label_map", OPCHECK_SETTINGS)
@pytest.mark.parametrize("requires_grad", [pytest.param(False, marks=pytest.mark.slow), True])
def test_opcheck_band_stats(backend, options, label_map, requires_grad):
    opts = scc_kernels._options.make_options(**options)
    logits, target = _inputs((2, 3, 7, 6), label_map, 3, options)
    logits.requires_grad_(requires_grad)
    args = (logits, target, *op_static(backend, logits, opts))
    torch.library.opcheck(torch.ops.scc_kernels.spectral_stats.default, args)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options, label_map", OPCHECK_SETTINGS)
def test_opcheck_band_stats_backward(backend, options, label_map):
    opts = scc_kernels._options.make_options(**options)
    logits, target = _inputs((2, 3, 7, 6), label_map, 4, options)
    static = op_static(backend, logits, opts)
    stats, *saved = torch.ops.scc_kernels.spectral_stats(logits, target, *static)
    grad_stats = torch.randn(stats.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    args = (grad_stats, stats, logits, target, saved, *static)
    # its autograd rule only raises (no double backward), so the gradient checks are left out
    torch.library.opcheck(
        torch.ops.scc_kernels.spectral_stats_backward.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


# --- 2. autograd modes: the reference computes what the custom op cannot, with one warning -----


def _float64_problem():
    logits, labels = _random(2, 3, (8, 9), 11)
    tangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    return logits.double(), labels, tangent.to(DEVICE)


def _loss_of(backend):
    _logits, labels, _ = _float64_problem()
    return lambda x: scc_loss(x, labels, softmax=True, bands=2, backend=backend)


def _jvp(fn, x, tangent):
    return torch.func.jvp(fn, (x,), (tangent,))[1]


def _forward_ad(fn, x, tangent):
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(fn(forward_ad.make_dual(x, tangent))).tangent


def _func_grad(fn, x, tangent):
    return torch.func.grad(fn)(x)


def _vmap(fn, x, tangent):  # each batch item on its own
    return torch.func.vmap(lambda item: fn(item.unsqueeze(0)), randomness="error")(x)


@pytest.mark.parametrize("mode", [_jvp, _forward_ad, _func_grad, _vmap], ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", FAST)
def test_autograd_modes_give_the_reference_values(backend, mode):
    logits, labels, tangent = _float64_problem()
    if backend == "triton":  # float32 only; compared with the reference in float32 too
        logits, tangent = logits.float(), tangent.float()
    if mode is _vmap:
        labels = labels[:1]

    def loss(x, backend):
        return scc_loss(x, labels, softmax=True, bands=2, backend=backend)

    expected = mode(lambda x: loss(x, "reference"), logits, tangent)
    scc_kernels._options._warned.clear()
    with pytest.warns(
        UserWarning, match=rf"backend '{backend}' does not support .*reference backend computes"
    ) as record:
        got = mode(lambda x: loss(x, backend), logits, tangent)
    assert got is not None and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per backend and mode
        mode(lambda x: loss(x, backend), logits, tangent)


@pytest.mark.parametrize("backend", FAST)
def test_double_backward_raises_a_clear_error(backend):
    logits, labels = _random(2, 3, (8, 9), 13)
    x = logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(scc_loss(x, labels, softmax=True, bands=2, backend=backend), x, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"backend '{backend}' has no double backward.*backend='reference'"):
        torch.autograd.grad(grad.square().sum(), x)


@pytest.mark.slow  # a second-order gradcheck: ~50 s on 2 cores
def test_reference_double_backward_matches_finite_differences():
    logits, labels, _ = _float64_problem()
    x = logits.requires_grad_(True)

    def grad_norm(x):
        (grad,) = torch.autograd.grad(
            scc_loss(x, labels, softmax=True, bands=2, backend="reference"), x, create_graph=True
        )
        return grad.square().sum()

    assert torch.autograd.gradcheck(grad_norm, (x,))


# --- 3. no gradient to the target; 4. other_act modules -----------------------------------------


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("spectrum", ["complex", "amplitude"])
def test_no_gradient_flows_to_the_target(backend, spectrum):
    logits, _ = _random(2, 3, (8, 9), 14)
    soft_target = torch.rand(logits.shape, generator=torch.Generator().manual_seed(14)).to(DEVICE).requires_grad_(True)
    x = logits.requires_grad_(True)
    scc_loss(x, soft_target, softmax=True, spectrum=spectrum, backend=backend).backward()
    assert soft_target.grad is None and x.grad is not None


def test_other_act_module_is_a_submodule():
    activation = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Softmax(dim=1))
    loss = SCCLoss(other_act=activation, backend="torch")
    assert set(loss.parameters()) == set(activation.parameters())
    assert "other_act" in dict(loss.named_modules())
    loss.double()
    assert activation[0].weight.dtype == torch.float64  # moved with the loss module
    logits, labels = _random(2, 3, (8, 9), 15)
    loss.to(DEVICE)(logits.double(), labels).backward()
    assert activation[0].weight.grad is not None and activation[0].weight.grad.abs().sum() > 0
    assert "other_act" in loss.state_dict().__str__()


# --- 7. options (SPEC §5) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    ["12", {1: 2, 3: 4}, {1.0, 2.0}, b"12", torch.ones(2, 1), ["1", "2"], (True, False)],
    ids=["str", "dict", "set", "bytes", "2-D tensor", "strings", "bools"],
)
def test_band_weights_of_the_wrong_type(weights):
    with pytest.raises(TypeError, match="band_weights"):
        SCCLoss(bands=2, band_weights=weights)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_huge_band_weights_and_eps_give_the_right_loss(backend):
    logits, labels = _random(2, 3, (8, 9), 16)
    plain = scc_loss(logits, labels, softmax=True, bands=2, backend=backend)
    huge = scc_loss(logits, labels, softmax=True, bands=2, band_weights=[1e308, 1e308], backend=backend)
    torch.testing.assert_close(huge, plain)
    # eps large beside every statistic: r → 1, the loss → 0 (no product of two eps to overflow)
    assert 0 <= scc_loss(logits, labels, softmax=True, eps=1e30, backend=backend) < 1e-6


def test_eps_beyond_float32_and_no_channels():
    with pytest.raises(ValueError, match="eps"):
        SCCLoss(eps=1e300)
    with pytest.raises(ValueError, match="C == 0"):
        scc_loss(torch.randn(2, 0, 8, 9), torch.rand(2, 0, 8, 9))


# --- 8. warnings point at the caller --------------------------------------------------------------


def test_single_channel_warnings_point_at_the_caller():
    logits, target = torch.randn(2, 1, 8, 9), torch.rand(2, 1, 8, 9)
    with pytest.warns(UserWarning, match="softmax") as function_record:
        scc_loss(logits, target, softmax=True)
    with pytest.warns(UserWarning, match="softmax") as module_record:
        SCCLoss(softmax=True)(logits, target)
    assert function_record[0].filename == module_record[0].filename == __file__


@pytest.mark.slow
def test_warnings_inside_a_compiled_graph():
    """A warning is issued once, while dynamo traces, without breaking a fullgraph compile."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: scc_loss(x, t, softmax=True, backend="torch"), fullgraph=True)
    logits, target = torch.randn(2, 1, 8, 9, device=DEVICE), torch.rand(2, 1, 8, 9, device=DEVICE)
    with pytest.warns(UserWarning, match="single channel prediction") as record:
        compiled(logits, target)
    assert record[0].filename == __file__


# --- 5. Triton launch limits and determinism -------------------------------------------------------


def test_one_pass_grid_takes_any_batch():
    assert triton_utils.grid(100_000, 3) == (300_000,)  # one axis: no 65535 limit on the batch
    with pytest.raises(ValueError, match="grid limit"):
        triton_utils.grid(2**20, 2**11)


def test_deterministic_mode_avoids_the_atomic_backward(monkeypatch):
    from scc_kernels import planning

    # as on a GPU (the interpreter runs the DFT's atomics in order): the H200 model picks the DFT
    monkeypatch.setattr(planning, "profile_name", lambda device: "H200")

    def as_on_a_gpu(input, opts):
        shape = tuple(input.shape)
        return planning.triton_path(shape, opts.spectrum, opts.num_bands, input.dtype, True, input.device)

    monkeypatch.setattr(planning, "_triton_path", as_on_a_gpu)
    logits, labels = _random(2, 3, (10, 9), 17)
    options = dict(softmax=True, bands=2, backend="triton")
    assert planning.resolve("triton", logits, scc_kernels._options.make_options(softmax=True, bands=2)).path == "dft"
    before = _value_and_grad(lambda x, t: scc_loss(x, t, **options), logits, labels)
    torch.use_deterministic_algorithms(True)
    try:
        route = planning.resolve("triton", logits, scc_kernels._options.make_options(softmax=True, bands=2))
        assert route.path == "fft"  # the FFT path (no atomics), not the DFT's
        after = _value_and_grad(lambda x, t: scc_loss(x, t, **options), logits, labels)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-7)


# --- 6. import and CLI ---------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter importing torch
def test_importing_the_cli_module_does_not_restart_the_process():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", "import scc_kernels.__main__; print('imported once')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout == "imported once\n", result.stderr


def test_backend_modules_import_by_name():
    import scc_kernels.backends.torch_backend as torch_backend

    assert callable(torch_backend.band_stats) and callable(scc_kernels.available_backends)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--backend", "nope"], "invalid choice: 'nope'"),
        (["bench", "--repeats", "0"], "not a positive integer"),
        (["bench", "--shapes", "abc"], "not a shape"),
        (["bench", "--shapes", "8x4"], "not a shape"),
        (["bench", "--csv", "/nonexistent-folder/table.csv"], "cannot write there"),
    ],
)
def test_bad_cli_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error


def test_unavailable_backend_is_a_usage_error(capsys):
    unavailable = [name for name, entry in scc_kernels.available_backends().items() if not entry["available"]]
    if not unavailable:
        pytest.skip("every backend can run on this machine")
    with pytest.raises(SystemExit) as exit:
        cli.main(["verify", "--backend", unavailable[0]])
    assert exit.value.code == 2 and f"backend {unavailable[0]!r} cannot run here" in capsys.readouterr().err


def test_install_without_nnunetv2_or_a_writable_folder_is_a_usage_error(monkeypatch, tmp_path, capsys):
    """Runs where nnunetv2 is absent too (test_nnunet.py skips as a whole there)."""
    from scc_kernels.integrations import nnunet_install

    monkeypatch.setattr(nnunet_install, "trainer_folder", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nnunet-install"])
    assert exit_info.value.code == 2 and "needs nnunetv2: pip install" in capsys.readouterr().err
    monkeypatch.setattr(nnunet_install, "trainer_folder", lambda: tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nnunet-install", "--uninstall"])
    assert exit_info.value.code == 2 and "cannot write to nnU-Net's trainer folder" in capsys.readouterr().err


def test_png_without_matplotlib_is_a_usage_error(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--png", "chart.png"])
    assert exit.value.code == 2 and "matplotlib" in capsys.readouterr().err
