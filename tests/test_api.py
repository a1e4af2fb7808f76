"""Public API: every bad-input row of SPEC §5, SCCLoss, available_backends(), dispatch, torch.compile, autocast."""

import inspect
import re

import pytest
import torch
from utils import device_for, random_problem

import scc_kernels
from scc_kernels import SCCLoss, scc_loss, spectral_correlation

_GENERATOR = torch.Generator().manual_seed(2026)
LOGITS = torch.randn(2, 3, 6, 5, generator=_GENERATOR)
LABELS = torch.randint(0, 3, (2, 6, 5), generator=_GENERATOR)


# --- SPEC §5, row by row -----------------------------------------------------------------------


def test_input_not_floating():
    with pytest.raises(TypeError, match="floating"):
        scc_loss(LABELS.unsqueeze(1).expand(2, 3, 6, 5), LABELS)


def test_too_few_dims():
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        scc_loss(torch.randn(2, 3), torch.randint(0, 3, (2,)))


@pytest.mark.parametrize(
    "target", [torch.randint(0, 3, (2, 5, 6)), torch.rand(2, 2, 6, 5), torch.randint(0, 3, (3, 6, 5))]
)
def test_target_shape_fits_no_layout(target):
    with pytest.raises(ValueError, match=r"\(2, 3, 6, 5\)") as error:
        scc_loss(LOGITS, target)
    assert str(tuple(target.shape)) in str(error.value)


def test_floating_label_map_needs_to_onehot_y():
    with pytest.raises(ValueError, match="to_onehot_y"):
        scc_loss(LOGITS, LABELS.unsqueeze(1).float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA) to put target elsewhere")
def test_different_devices():
    with pytest.raises(ValueError, match="cuda"):
        scc_loss(LOGITS, LABELS.cuda())


def test_different_devices_meta():
    # the same check without a GPU: a meta tensor is on another device
    with pytest.raises(ValueError, match="meta"):
        scc_loss(LOGITS, LABELS.to("meta"))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("bad", [3, -1, 254])
def test_label_out_of_range(backend, bad):
    labels = LABELS.clone()
    labels[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        scc_loss(LOGITS, labels, softmax=True, backend=backend, ignore_index=255)


def test_non_integral_floating_label_map():
    labels = LABELS.unsqueeze(1).float()
    labels[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="integers"):
        scc_loss(LOGITS, labels, to_onehot_y=True)


def test_two_activations():
    with pytest.raises(ValueError, match="at most one"):
        scc_loss(LOGITS, LABELS, softmax=True, sigmoid=True)
    with pytest.raises(ValueError, match="at most one"):
        SCCLoss(sigmoid=True, other_act=torch.tanh)


def test_other_act_not_callable():
    with pytest.raises(TypeError, match="callable"):
        scc_loss(LOGITS, LABELS, other_act="tanh")


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(bands=0), "bands"),
        (dict(bands=2.5), "bands"),
        (dict(bands=2, band_weights=[1.0]), "band_weights"),
        (dict(bands=2, band_weights=[1.0, -1.0]), "band_weights"),
        (dict(bands=2, band_weights=[0.0, 0.0]), "band_weights"),
        (dict(bands=2, band_weights=[1.0, float("nan")]), "band_weights"),
        (dict(eps=-1e-5), "eps"),
        (dict(spectrum="phase"), "spectrum"),
        (dict(reduction="max"), "reduction"),
        (dict(backend="jax"), "backend"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        scc_loss(LOGITS, LABELS, **options)
    with pytest.raises(ValueError, match=message):
        SCCLoss(**options)


def test_unavailable_backend_is_a_runtime_error():
    for name, info in scc_kernels.available_backends().items():
        if info["available"]:
            continue
        device = device_for(name)  # both tensors there: a device mismatch would raise first
        with pytest.raises(RuntimeError, match=name):
            scc_loss(LOGITS.to(device), LABELS.to(device), backend=name)


def test_float64_on_kernel_backend_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="float64"):
        scc_loss(LOGITS.double(), LABELS, backend="cuda")


def test_ignore_index_with_dense_target():
    with pytest.raises(ValueError, match="ignore_index"):
        scc_loss(LOGITS, torch.rand(2, 3, 6, 5), ignore_index=0)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
@pytest.mark.parametrize("spectrum,bands", [("complex", None), ("amplitude", None), ("complex", 3)])
@pytest.mark.parametrize("bad", [float("nan"), pytest.param(float("inf"), marks=pytest.mark.slow)])
def test_nan_or_inf_input_gives_nan(backend, spectrum, bands, bad):
    logits, labels = LOGITS.to(device_for(backend), copy=True), LABELS.to(device_for(backend))
    logits[0, 1, 2, 2] = bad
    for act in (dict(softmax=True), dict(sigmoid=True), dict()):
        loss = scc_loss(logits, labels, spectrum=spectrum, bands=bands, backend=backend, **act)
        if bad != bad or not act:  # inf saturates softmax/sigmoid to a finite value, but not the identity
            assert torch.isnan(loss), (act, loss)
        else:
            assert loss.dim() == 0  # no crash


@pytest.mark.parametrize(
    "options,warning",
    [
        (dict(softmax=True), "softmax=True"),
        (dict(include_background=False), "include_background=False"),
        (dict(to_onehot_y=True), "to_onehot_y=True"),
    ],
)
def test_single_channel_warns_and_ignores(options, warning):
    logits, mask = torch.randn(2, 1, 6, 5), (torch.rand(2, 1, 6, 5) > 0.5).float()
    with pytest.warns(UserWarning, match=warning):
        loss = scc_loss(logits, mask, **options)
    torch.testing.assert_close(loss, scc_loss(logits, mask))


# --- targets ------------------------------------------------------------------------------------


def test_label_map_equals_one_hot():
    one_hot = torch.nn.functional.one_hot(LABELS, 3).movedim(-1, 1)
    for spectrum in ("amplitude", "complex"):
        a = scc_loss(LOGITS, LABELS, softmax=True, spectrum=spectrum)
        b = scc_loss(LOGITS, one_hot, softmax=True, spectrum=spectrum)
        c = scc_loss(LOGITS, LABELS.unsqueeze(1), softmax=True, spectrum=spectrum)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_ignore_index_zeroes_both():
    labels = LABELS.clone()
    labels[:, :2] = 255
    logits = LOGITS.double()  # two backends compared: float64 so that only the definition differs
    masked = torch.softmax(logits, 1)
    masked[:, :, :2] = 0
    one_hot = torch.nn.functional.one_hot(labels.clamp(max=2), 3).movedim(-1, 1).double()
    one_hot[:, :, :2] = 0
    expected = scc_loss(masked, one_hot, backend="reference")
    torch.testing.assert_close(scc_loss(logits, labels, softmax=True, ignore_index=255), expected)


def test_include_background_drops_channel_zero():
    full = spectral_correlation(LOGITS, LABELS, softmax=True)
    dropped = spectral_correlation(LOGITS, LABELS, softmax=True, include_background=False)
    torch.testing.assert_close(dropped, full[:, 1:])


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("spectrum,bands", [("complex", None), ("amplitude", None), ("complex", 2)])
def test_empty_batch(backend, spectrum, bands):
    logits = torch.randn(0, 3, 5, 6, requires_grad=True)
    loss = scc_loss(
        logits,
        torch.randint(0, 3, (0, 5, 6)),
        softmax=True,
        spectrum=spectrum,
        bands=bands,
        backend=backend,
        reduction="none",
    )
    assert loss.shape == (0, 3)
    loss.sum().backward()
    assert logits.grad.shape == logits.shape


def test_empty_spatial_axis_gives_r_one():
    # no bins at all: every band is empty, r = 1 (SPEC §3 step 6), also per class with batch=True
    logits = torch.randn(2, 3, 0, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 0, 4))
    assert torch.equal(spectral_correlation(logits, labels, softmax=True), torch.ones(2, 3))
    assert torch.equal(spectral_correlation(logits, labels, batch=True, include_background=False), torch.ones(2))
    scc_loss(logits, labels).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_batch_shape():
    assert spectral_correlation(LOGITS, LABELS, batch=True).shape == (3,)
    assert scc_loss(LOGITS, LABELS, batch=True, reduction="none").shape == (3,)


# --- module, backends, dispatch -----------------------------------------------------------------


def test_module_matches_functional():
    module = SCCLoss(softmax=True, to_onehot_y=True, include_background=False, spectrum="complex", bands=2)
    labels = LABELS.unsqueeze(1).float()
    expected = scc_loss(
        LOGITS, labels, softmax=True, to_onehot_y=True, include_background=False, spectrum="complex", bands=2
    )
    torch.testing.assert_close(module(LOGITS, labels), expected)
    assert "complex" in repr(module)


@pytest.mark.parametrize(
    "entry_point", [scc_loss, spectral_correlation, SCCLoss.__init__], ids=lambda f: f.__qualname__
)
def test_every_option_in_the_signature_and_the_docstring(entry_point):
    """Each public entry point spells out every option (help() and editors show them) with
    make_options' default, and its docstring documents each one."""
    expected = inspect.signature(scc_kernels._options.make_options).parameters
    parameters = inspect.signature(entry_point).parameters
    names = [name for name in parameters if name not in ("self", "input", "target")]
    wanted = [name for name in expected if entry_point is not spectral_correlation or name != "reduction"]
    assert sorted(names) == sorted(wanted)
    for name in names:
        assert parameters[name].default == expected[name].default, name
        assert re.search(rf"^\s+{name}: \S", entry_point.__doc__, re.MULTILINE), name
    assert "{" not in entry_point.__doc__


class _Passed(Exception):
    """Raised by a stand-in make_options with the keywords an entry point passed to it."""


@pytest.mark.parametrize(
    "entry_point", [scc_loss, spectral_correlation, SCCLoss], ids=lambda f: getattr(f, "__qualname__", f.__name__)
)
def test_every_option_is_passed_through(entry_point, monkeypatch):
    """The entry points spell the options out keyword by keyword (dynamo cannot trace locals()):
    each option given reaches make_options under its own name, none left out or swapped."""

    def record(**options):
        raise _Passed(options)

    for module in (scc_kernels.functional, scc_kernels.loss):
        monkeypatch.setattr(module, "make_options", record)
    names = [name for name in inspect.signature(entry_point).parameters if name not in ("self", "input", "target")]
    given = {name: f"value of {name}" for name in names}
    arguments = () if entry_point is SCCLoss else (LOGITS, LABELS)
    with pytest.raises(_Passed) as passed:
        entry_point(*arguments, **given)
    assert passed.value.args[0] == given


def test_repr_shows_every_option_that_is_not_the_default():
    assert repr(SCCLoss()) == "SCCLoss()"
    module = SCCLoss(
        softmax=True,
        include_background=False,
        bands=3,
        band_weights=[1, 2, 4],
        ignore_index=255,
        batch=True,
        eps=0.0,
        reduction="none",
        backend="torch",
    )
    assert repr(module) == (
        "SCCLoss(bands=3, band_weights=(0.25, 0.5, 1.0), activation='softmax', include_background=False, "
        "ignore_index=255, batch=True, eps=0.0, reduction='none', backend='torch')"
    )
    assert repr(SCCLoss(other_act=torch.tanh)) == "SCCLoss(other_act='tanh')"
    assert "(other_act): Tanh()" in repr(SCCLoss(other_act=torch.nn.Tanh()))


def test_backends_report():
    report = scc_kernels.available_backends()
    assert set(report) == {"reference", "torch", "triton", "cuda", "cupy"}
    assert report["reference"]["available"] and report["torch"]["available"]
    for name, info in report.items():
        assert info["available"] == (info["reason"] is None), name
    if not torch.cuda.is_available():
        assert "CUDA" in report["cuda"]["reason"] or "cuda" in report["cuda"]["reason"]


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("SCC_KERNELS_BACKEND", "reference")
    logits = LOGITS.clone().requires_grad_(True)
    loss = scc_loss(logits, LABELS, softmax=True)
    assert "band_stats" not in str(loss.grad_fn.next_functions)  # the reference has no custom op
    monkeypatch.setenv("SCC_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        scc_loss(LOGITS, LABELS)


# --- torch.compile and mixed precision ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spectrum", ["complex", "amplitude"])
def test_torch_compile_fullgraph(spectrum):
    logits, labels = random_problem(2, 3, (9, 8), ignore_index=255)

    def f(x):
        return scc_loss(x, labels, spectrum=spectrum, bands=2, softmax=True, ignore_index=255, backend="torch")

    eager_x, compiled_x = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    eager = f(eager_x)
    eager.backward()
    compiled = torch.compile(f, fullgraph=True)(compiled_x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_half_input_gives_float32_loss(dtype, backend):
    logits = LOGITS.to(dtype).requires_grad_(True)
    loss = scc_loss(logits, LABELS, softmax=True, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(loss, scc_loss(logits.detach().float(), LABELS, softmax=True), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_autocast(backend):
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 10, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = scc_loss(logits, LABELS.new_zeros(2, 10, 9) + 1, softmax=True, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
