"""SPEC §1, §4 and §5 at their edges: label maps of every integer dtype against ignore_index
values in and out of their range, the ignore_index range, one-channel binary label maps, NaN/Inf
in inputs and dense targets (loss and gradient), SCCLoss.other_act reassigned, vmap over label
maps, the same error types compiled and eager, and verify's half-type floor."""

import math
import warnings

import numpy
import pytest
import torch
from utils import random_problem

from scc_kernels import SCCLoss, scc_loss, verify
from scc_kernels import __main__ as cli
from scc_kernels.verify import rounding_floor

BACKENDS = ["reference", "torch", "triton"]
SLOW_TRITON = ["reference", "torch", pytest.param("triton", marks=pytest.mark.slow)]  # 2-10 s a row interpreted
PATHS = [dict(spectrum="complex"), dict(spectrum="amplitude", bands=2), dict(spectrum="complex", bands=3)]
LABEL_DTYPES = [
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
]
IGNORE_VALUES = [-1, -100, 255, 40000, 2**32 - 1, 2**40, 2**63 - 1, -(2**63)]


def _fits(dtype, value):
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def _in_dtype(labels, dtype, where, value):
    """`labels` (int64, in [0, C)) as `dtype`, with `value` wrapped into the dtype at `where`
    (uint8's −1 is 255, int8's 255 is −1): what a user's label map of that dtype holds."""
    # the select in int64, then one conversion (torch 2.11 has no CPU where() for uint16/32/64)
    return torch.where(where, torch.tensor(value, dtype=torch.int64), labels.long()).to(dtype)


def _loss(x, target, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the C == 1 option warnings and the transform fallbacks
        return scc_loss(x, target, reduction="none", **options)


# --- 1. labels and ignore_index compared as integers (SPEC §5) ------------------------------------


@pytest.mark.parametrize("backend", SLOW_TRITON)
@pytest.mark.parametrize(
    "dtype",
    [d if d in (torch.uint8, torch.uint64) else pytest.param(d, marks=pytest.mark.slow) for d in LABEL_DTYPES],
    ids=str,
)
def test_ignore_index_compared_as_integers_in_every_label_dtype(dtype, backend):
    logits, labels = random_problem(2, 3, (5, 6))
    ignored = torch.rand(labels.shape) < 0.2
    for index, ignore_index in enumerate(IGNORE_VALUES):
        path = PATHS[index % len(PATHS)]
        target = _in_dtype(labels, dtype, ignored, ignore_index)
        if _fits(dtype, ignore_index):  # the ignored pixels are ignored: as an int64 map says
            expected = _loss(logits, labels.masked_fill(ignored, ignore_index), ignore_index=ignore_index, **path)
            got = _loss(logits, target, ignore_index=ignore_index, backend=backend, **path)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{ignore_index} {path}")
        else:  # no value of the dtype is ignore_index: the wrapped value is just a label
            wrapped = torch.tensor(ignore_index).to(dtype).long().item()
            if 0 <= wrapped < 3:  # 2**40 wraps to 0 in int32, say: a valid label
                expected = _loss(logits, labels.masked_fill(ignored, wrapped), **path)
                got = _loss(logits, target, ignore_index=ignore_index, backend=backend, **path)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{ignore_index} {path}")
            else:
                with pytest.raises(ValueError, match=r"\[0, 3\)"):
                    _loss(logits, target, ignore_index=ignore_index, backend=backend, **path)
            expected = _loss(logits, labels, **path)
            got = _loss(logits, labels.to(dtype), ignore_index=ignore_index, backend=backend, **path)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{ignore_index} {path}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_floating_label_map_ignore_index_beyond_its_integers(backend):
    # float32 holds integers exactly up to 2**24: 2**24 + 1 is no float32 value, so it ignores nothing
    logits, labels = random_problem(2, 3, (5, 6))
    labels = labels.unsqueeze(1).float()
    expected = _loss(logits, labels, to_onehot_y=True)
    got = _loss(logits, labels, to_onehot_y=True, ignore_index=2**24 + 1, backend=backend)
    torch.testing.assert_close(got, expected)
    labels[0, 0, 1, 1] = 2.0**24  # what 2**24 + 1 rounds to in float32: a label, not ignore_index
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        _loss(logits, labels, to_onehot_y=True, ignore_index=2**24 + 1, backend=backend)


# --- 2. ignore_index must be an integer that fits int64 -----------------------------------------


@pytest.mark.parametrize("ignore_index", [2**63, -(2**63) - 1, 10**30, 1.0, 255.0, "255", True])
def test_ignore_index_not_an_int64_is_a_value_error(ignore_index):
    logits, labels = random_problem(2, 3, (5, 6))
    with pytest.raises(ValueError, match="ignore_index"):
        scc_loss(logits, labels, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="ignore_index"):
        SCCLoss(ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [numpy.int64(-100), numpy.uint8(255), 2**63 - 1, -(2**63)])
def test_ignore_index_any_integer_within_int64(ignore_index):
    logits, labels = random_problem(2, 3, (5, 6))
    torch.testing.assert_close(scc_loss(logits, labels, ignore_index=ignore_index), scc_loss(logits, labels))
    assert SCCLoss(ignore_index=ignore_index).options.ignore_index == int(ignore_index)


# --- 3. one channel, an integer target and ignore_index: a binary label map (SPEC §1) -------------


BINARY_CASES = [  # (spatial, label dtype, ignore_index, layout (B, 1, *S) or (B, *S), options)
    ((7, 6), torch.int64, 255, "B1S", dict(sigmoid=True)),
    ((7, 6), torch.uint8, 255, "BS", dict(sigmoid=True, spectrum="complex")),
    ((11,), torch.int32, -1, "B1S", dict(spectrum="amplitude", bands=2)),
    ((4, 5, 3), torch.int8, -100, "BS", dict(sigmoid=True, spectrum="complex", bands=2, batch=True)),
    ((7, 6), torch.uint8, -1, "B1S", dict(sigmoid=True)),  # -1 is no uint8: nothing ignored
    ((7, 6), torch.int64, 2, "BS", dict(softmax=True, include_background=False, to_onehot_y=True)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BINARY_CASES, ids=lambda c: f"{c[0]}-{c[1]}-ign{c[2]}-{c[3]}")
def test_single_channel_binary_label_map(case, backend):
    spatial, dtype, ignore_index, layout, options = case
    logits = torch.randn(2, 1, *spatial, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, *spatial))
    ignored = (torch.rand(labels.shape) < 0.2) & _fits(dtype, ignore_index)
    target = _in_dtype(labels, dtype, ignored, ignore_index)
    target = target.unsqueeze(1) if layout == "B1S" else target
    x = logits.clone().requires_grad_(True)
    got = _loss(
        x.float() if backend != "reference" else x, target, ignore_index=ignore_index, backend=backend, **options
    )
    (got_grad,) = torch.autograd.grad(got.sum(), x)

    # SPEC §1: target = (label == 1); ignored positions zeroed in prediction and target
    keep = ~ignored.unsqueeze(1)
    x_ref = logits.clone().requires_grad_(True)
    prediction = torch.sigmoid(x_ref) if options.get("sigmoid") else x_ref
    dense = {k: v for k, v in options.items() if k in ("spectrum", "bands", "batch")}
    expected = _loss(prediction * keep, (labels.unsqueeze(1) == 1) * keep, backend="reference", **dense)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x_ref)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [2, -1, 7])
def test_single_channel_binary_label_map_other_values(backend, bad):
    logits = torch.randn(2, 1, 5, 6)
    labels = torch.randint(0, 2, (2, 1, 5, 6))
    labels[0, 0, 1, 2] = bad
    with pytest.raises(ValueError, match=r"\[0, 2\) or ignore_index=255"):
        scc_loss(logits, labels, ignore_index=255, backend=backend)


def test_single_channel_integer_target_without_ignore_index_stays_a_mask():
    logits = torch.randn(2, 1, 5, 6)
    mask = torch.randint(0, 2, (2, 1, 5, 6))
    torch.testing.assert_close(scc_loss(logits, mask), scc_loss(logits, mask.float()))
    with pytest.raises(ValueError, match="ignore_index"):  # a floating mask is no label map
        scc_loss(logits, mask.float(), ignore_index=255)


# --- 4. SCCLoss.other_act is read at every call -------------------------------------------------


def test_reassigned_other_act_is_used():
    logits, labels = random_problem(2, 3, (5, 6))
    loss = SCCLoss(other_act=torch.tanh, backend="torch")
    loss.other_act = torch.sigmoid  # a function
    assert "sigmoid" in repr(loss)
    torch.testing.assert_close(loss(logits, labels), scc_loss(logits, labels, sigmoid=True))
    loss.other_act = torch.nn.Softmax(dim=1)  # a module: registered, and used
    assert "(other_act): Softmax" in repr(loss)
    torch.testing.assert_close(loss(logits, labels), scc_loss(logits, labels, softmax=True))
    loss.other_act = None
    torch.testing.assert_close(loss(logits, labels), scc_loss(logits, labels))
    assert loss.extra_repr() == "backend='torch'"
    named = SCCLoss(other_act=torch.tanh)  # a plain attribute (nn.Module refuses a str for a submodule's name)
    named.other_act = "tanh"
    with pytest.raises(TypeError, match="callable"):
        named(logits, labels)
    both = SCCLoss(softmax=True)
    both.other_act = torch.tanh
    with pytest.raises(ValueError, match="at most one"):
        both(logits, labels)


@pytest.mark.slow
def test_other_act_module_reassigned_before_compile():
    logits, labels = random_problem(2, 3, (5, 6))
    loss = SCCLoss(other_act=torch.nn.Tanh(), backend="torch")
    loss.other_act = torch.nn.Sigmoid()
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    torch.testing.assert_close(compiled(logits, labels), scc_loss(logits, labels, sigmoid=True))


# --- 5. NaN / Inf: NaN loss and NaN gradient (SPEC §5) -------------------------------------------


def _nan_problem(where, bad):
    """Logits (2, 3, 6, 7) and a target with `bad` at item 0, channel 1 of the input or target."""
    logits = torch.randn(2, 3, 6, 7)
    target = torch.rand(2, 3, 6, 7)
    options = {}
    if where == "dense target":
        target[0, 1, 2, 3] = bad
    elif where == "input":
        logits[0, 1, 2, 3] = bad
    else:  # an ignored position of a label map
        target = torch.randint(0, 3, (2, 6, 7))
        target[0, 2, 3] = 255
        logits[0, 1, 2, 3] = bad
        options = dict(ignore_index=255)
    return logits, target, options


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "path",
    [*PATHS[:2], *(pytest.param(p, marks=pytest.mark.slow) for p in (PATHS[2], dict(spectrum="amplitude")))],
    ids=str,
)
@pytest.mark.parametrize("where", ["dense target", "input", "ignored input"])
@pytest.mark.parametrize(
    "bad", [math.nan, pytest.param(math.inf, marks=pytest.mark.slow), pytest.param(-math.inf, marks=pytest.mark.slow)]
)
def test_nan_or_inf_gives_nan_loss_and_gradient(backend, path, where, bad):
    """No activation: NaN, or Inf (SPEC §5), in a dense target or anywhere in the input (an
    ignored position too) makes its slice's loss NaN and its gradient NaN at every position."""
    logits, target, options = _nan_problem(where, bad)
    x = logits.requires_grad_(True)
    loss = _loss(x, target, backend=backend, **path, **options)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    poisoned = torch.zeros(2, 3, dtype=torch.bool)
    poisoned[0, 1] = True
    assert torch.equal(loss.isnan(), poisoned), loss
    # NaN at every position that counts (an ignored position's may be 0: it is no part of the loss)
    counted = torch.ones(6, 7, dtype=torch.bool) if target.dim() == 4 else target[0] != 255
    assert grad[0, 1][counted].isnan().all(), "the poisoned slice's gradient must be NaN"
    assert grad[~poisoned].isfinite().all()


@pytest.mark.parametrize("backend", SLOW_TRITON)
@pytest.mark.parametrize("path", PATHS, ids=str)
def test_infinite_logits(backend, path):
    """SPEC §5: −Inf under softmax and ±Inf under sigmoid saturate to finite probabilities (the
    loss is that of a huge finite logit, its gradient too); +Inf under softmax, or any Inf with no
    activation, gives NaN for the slices it reaches."""
    logits, labels = random_problem(2, 3, (6, 7))
    for activation, value, finite in [
        ("softmax", -math.inf, True),
        ("sigmoid", math.inf, True),
        ("sigmoid", -math.inf, True),
        ("softmax", math.inf, False),
        (None, math.inf, False),
        (None, -math.inf, False),
    ]:
        options = {activation: True} if activation else {}
        x = logits.clone()
        x[0, 1, 2, 3] = value
        x.requires_grad_(True)
        loss = _loss(x, labels, backend=backend, **path, **options)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        if finite:
            stand_in = logits.clone()
            stand_in[0, 1, 2, 3] = math.copysign(1e4, value)  # exp/sigmoid saturate exactly in float32
            stand_in.requires_grad_(True)
            expected = _loss(stand_in, labels, backend=backend, **path, **options)
            (expected_grad,) = torch.autograd.grad(expected.sum(), stand_in)
            torch.testing.assert_close(loss, expected, msg=f"{activation} {value}")
            torch.testing.assert_close(grad, expected_grad, msg=f"{activation} {value}")
        else:
            reached = [(0, c) for c in range(3)] if activation == "softmax" else [(0, 1)]
            for b, c in reached:
                assert loss[b, c].isnan() and grad[b, c].isnan().all(), (activation, value, b, c)
            assert loss[1].isfinite().all() and grad[1].isfinite().all()


# --- 6. verify's half-type floor (SPEC §4) ---------------------------------------------------------


def test_rounding_floor_is_the_rounding_of_the_exact_gradient():
    exact = torch.tensor([1e-9, 3e-8, 1.0 + 2**-12, 0.5], dtype=torch.float64)
    # float16: 1e-9 flushes to 0, 3e-8 rounds to its smallest subnormal 2**-24, 1 + 2**-12 to 1
    expected = math.sqrt(1e-9**2 + (2**-24 - 3e-8) ** 2 + 2**-24)
    assert rounding_floor(exact, torch.float16) == pytest.approx(expected, rel=1e-12)
    assert rounding_floor(exact, torch.bfloat16) == pytest.approx((exact.bfloat16().double() - exact).norm().item())
    assert rounding_floor(exact, torch.float32) == 0.0


# the built-in case whose exact gradient float16 cannot hold: 3.2x the tolerance without the floor
BELOW_FLOAT16 = ("converged 8", 1, 2, (20, 18, 22), dict(spectrum="complex", softmax=True, batch=True))


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.slow), "triton"])  # torch: every case
def test_verify_float16_passes(backend, capsys, monkeypatch):
    assert BELOW_FLOAT16 in verify.CASES
    if backend == "triton":  # the interpreter takes ~90 s for every case: the one that needs the floor
        monkeypatch.setattr(verify, "CASES", [BELOW_FLOAT16])
    assert cli.main(["verify", "--dtype", "float16", "--backend", backend]) == 0
    assert " 0 failed" in capsys.readouterr().out
    monkeypatch.setattr(verify, "rounding_floor", lambda exact, dtype: 0.0)  # SPEC v2's bound: fails
    monkeypatch.setattr(verify, "CASES", [BELOW_FLOAT16])
    assert cli.main(["verify", "--dtype", "float16", "--backend", backend]) == 1


# --- 7. vmap over label maps; 8. the same errors compiled and eager ------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_label_maps(backend):
    logits = torch.randn(3, 2, 3, 5, 7)
    labels = torch.randint(0, 3, (3, 2, 5, 7), dtype=torch.uint8)
    labels[0, 1, 2, 3] = 255

    def loss(x, y):
        return _loss(x, y, softmax=True, ignore_index=255, bands=2, backend=backend)

    expected = torch.stack([loss(x, y) for x, y in zip(logits, labels)])
    torch.testing.assert_close(torch.func.vmap(loss)(logits, labels), expected)
    grads = torch.func.vmap(torch.func.grad(lambda x, y: loss(x, y).sum()))(logits, labels)
    for x, y, grad in zip(logits, labels, grads):
        torch.testing.assert_close(grad, torch.func.grad(lambda x, y: loss(x, y).sum())(x, y))
    labels[2, 0, 1, 1] = 3
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        torch.func.vmap(loss)(logits, labels)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fullgraph", [True, False])
def test_bad_label_is_a_value_error_compiled_too(backend, fullgraph):
    logits, labels = random_problem(2, 3, (5, 6))
    labels = labels.to(torch.uint8)
    labels[1, 2, 3] = 255  # -1 is no uint8: 255 is a label, outside [0, 3)

    def loss(x, y):
        return scc_loss(x, y, softmax=True, ignore_index=-1, backend=backend)

    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(logits, labels)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=fullgraph)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        compiled(logits, labels)
    labels[1, 2, 3] = 2
    torch.testing.assert_close(compiled(logits, labels), loss(logits, labels))


# --- odd layouts and dtypes of the same problem: the same loss and gradient --------------------------


def _layouts():
    """(name, input, target, the same problem contiguous in the canonical dtypes, options)."""
    generator = torch.Generator().manual_seed(16)
    x = torch.randn(2, 3, 5, 6, generator=generator)
    labels = torch.randint(0, 3, (2, 5, 6), generator=generator)
    dense = torch.rand(2, 3, 5, 6, generator=generator)
    wide = torch.randint(0, 3, (2, 5, 12), generator=generator)
    label_options = dict(softmax=True, ignore_index=0)
    dense_options = dict(sigmoid=True, spectrum="complex")
    return [
        ("labels expanded", x, labels[:1].expand(2, 5, 6), labels[:1].repeat(2, 1, 1), label_options),
        ("labels transposed", x, labels.mT.contiguous().mT, labels, label_options),
        ("labels strided", x, wide[..., ::2], wide[..., ::2].contiguous(), label_options),
        ("labels (B, 1, *S) uint8", x, labels.unsqueeze(1).to(torch.uint8), labels, label_options),
        ("input channels_last", x.contiguous(memory_format=torch.channels_last), labels, labels, label_options),
        ("input transposed", x.mT.contiguous().mT, labels, labels, label_options),
        ("input expanded", x[:1].expand(2, 3, 5, 6), labels, labels, label_options),
        ("dense expanded", x, dense[:1].expand(2, 3, 5, 6), dense[:1].repeat(2, 1, 1, 1), dense_options),
        ("dense zero-stride", x, torch.tensor(0.3).expand(2, 3, 5, 6), torch.full((2, 3, 5, 6), 0.3), dense_options),
        ("dense channels_last", x, dense.contiguous(memory_format=torch.channels_last), dense, dense_options),
        ("dense bool", x, dense > 0.5, (dense > 0.5).float(), dense_options),
        ("dense uint8", x, (dense > 0.5).to(torch.uint8), (dense > 0.5).float(), dense_options),
        ("dense float64", x, dense.double(), dense, dense_options),
        ("dense float16", x, dense.half(), dense.half().float(), dense_options),
    ]


@pytest.mark.parametrize("backend", SLOW_TRITON)
def test_odd_layouts_and_dtypes_give_the_same_loss(backend):
    for name, x, target, canonical, options in _layouts():
        results = []
        for prediction, y in ((x, target), (x.contiguous(), canonical)):
            prediction = prediction.detach().requires_grad_(True)
            loss = _loss(prediction, y, backend=backend, **options)
            results.append((loss, *torch.autograd.grad(loss.sum(), prediction)))
        torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-6, msg=name)
