"""Every available backend against the float64 reference: the checks behind `python -m scc_kernels verify`.

Errors as fractions of SPEC §4's tolerance (≤ 1 passes), on random, near-converged and
huge-magnitude inputs; tolerance and regimes in docs/benchmarking.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .backends.registry import info, unavailable_reason
from .functional import scc_loss

# SPEC §4, by input dtype
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_RTOL = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LOSS_ATOL = 1e-6
GRAD_ATOL = 1e-7


def random_problem(
    batch, channels, spatial, *, label_map=True, ignore_index=None, dtype=torch.float32, device="cpu", generator=None
):
    """Random logits (B, C, *S) and a target: an int64 label map (B, *S) or soft targets (B, C, *S).

    With ignore_index, about a tenth of the labels are set to it.
    """
    logits = 2 * torch.randn(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    if label_map:
        target = torch.randint(0, channels, (batch, *spatial), generator=generator)
        if ignore_index is not None:
            target[torch.rand(target.shape, generator=generator) < 0.1] = ignore_index
    else:
        target = torch.rand(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    return logits.to(device=device, dtype=dtype), target.to(device)


def blob_labels(batch, channels, spatial, *, generator=None) -> torch.Tensor:
    """Label maps (B, *S) of smooth shapes: per item, a ball of random centre and radius for each
    class 1..C−1 on a background 0 (later classes drawn over earlier ones), like organs in a scan."""
    coords = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in spatial], indexing="ij")
    labels = torch.zeros(batch, *spatial, dtype=torch.int64)
    for item in labels:
        for label in range(1, channels):
            centre = torch.rand(len(spatial), generator=generator, dtype=torch.float64) - 0.5
            radius = 0.25 + 0.35 * torch.rand((), generator=generator, dtype=torch.float64)
            inside = sum((x - m) ** 2 for x, m in zip(coords, centre)) < radius**2
            item[inside] = label
    return labels


def converged_problem(
    batch, channels, spatial, *, confidence, ignore_index=None, dtype=torch.float32, device="cpu", generator=None
):
    """Logits `confidence·one-hot + N(0, 1)` for blob label maps: softmax nearly equals the target.

    With softmax and one band, confidence 4 gives losses of about 1e-3 to 1e-2, 6 about 1e-4 to
    1e-3, 8 about 1e-5, 10 about 1e-7 to 1e-6 (bands raise them): the regime where raw sums or
    `1 −` a rounded r lose every digit.
    """
    labels = blob_labels(batch, channels, spatial, generator=generator)
    one_hot = torch.nn.functional.one_hot(labels, channels).movedim(-1, 1).to(torch.float64)
    logits = confidence * one_hot + torch.randn(one_hot.shape, generator=generator, dtype=torch.float64)
    if ignore_index is not None:
        labels[torch.rand(labels.shape, generator=generator) < 0.1] = ignore_index
    return logits.to(device=device, dtype=dtype), labels.to(device)


def huge_problem(batch, channels, spatial, *, magnitude, dtype=torch.float32, device="cpu", generator=None):
    """Inputs of size `magnitude` (to be used without activation) and soft targets in [0, 1]."""
    logits = magnitude * torch.randn(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    target = torch.rand(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    return logits.to(device=device, dtype=dtype), target.to(device=device, dtype=dtype)


@dataclasses.dataclass
class Errors:
    """One backend on one input, against the float64 reference (SPEC §4)."""

    loss: float  # max over loss values of |L − L64| / (rtol·|L64| + atol): ≤ 1 passes
    grad: float  # ‖g − g64‖ / (rtol·‖g64‖ + atol), gradient of the mean loss
    loss_rel: float  # max |L − L64| / |L64|, for reading
    grad_rel: float  # ‖g − g64‖ / ‖g64‖
    overflow: bool = False  # NaN where a float32 statistic overflows: allowed (SPEC §4)

    @property
    def ok(self) -> bool:
        return self.overflow or (self.loss <= 1 and self.grad <= 1)


def _may_overflow(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether some slice's Σx² or Σy² (≥ every centred moment and |X_k|² of it) passes float32's range."""
    squares = [t.double().flatten(2).pow(2).sum(-1).max() for t in (logits, target) if t.dim() == logits.dim()]
    return max(s.item() for s in squares) > torch.finfo(torch.float32).max / 16


def compare_with_reference(backend, logits, target, **options) -> Errors:
    """`backend` on (logits, target) against the reference run on the same values cast to float64."""
    ref_logits = logits.detach().to(torch.float64).cpu().requires_grad_(True)
    ref_target = target.cpu().to(torch.float64) if target.is_floating_point() else target.cpu()
    ref = scc_loss(ref_logits, ref_target, reduction="none", backend="reference", **options)
    (ref_grad,) = torch.autograd.grad(ref.mean(), ref_logits)

    x = logits.detach().clone().requires_grad_(True)
    out = scc_loss(x, target, reduction="none", backend=backend, **options)
    (grad,) = torch.autograd.grad(out.mean(), x)
    expected_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    if out.dtype != expected_dtype or grad.dtype != logits.dtype:
        raise AssertionError(f"{backend}: loss {out.dtype} / grad {grad.dtype} for {logits.dtype} input")
    out, grad = out.detach().double().cpu(), grad.double().cpu()
    if not bool(((out >= 0) & (out <= 2) | out.isnan()).all()):
        raise AssertionError(f"{backend}: a loss outside [0, 2], i.e. r outside [-1, 1]: {out}")
    if (out.isnan().any() or grad.isnan().any()) and _may_overflow(logits, target):
        nan = float("nan")
        return Errors(nan, nan, nan, nan, overflow=True)
    loss_error = (out - ref).abs()
    grad_error = (grad - ref_grad).norm()
    rtol, gtol = LOSS_RTOL[logits.dtype], GRAD_RTOL[logits.dtype]
    return Errors(
        loss=_max(loss_error / (rtol * ref.abs() + LOSS_ATOL)),
        grad=(grad_error / (gtol * ref_grad.norm() + GRAD_ATOL + rounding_floor(ref_grad, logits.dtype))).item(),
        loss_rel=_max(loss_error / ref.abs()),
        grad_rel=(grad_error / ref_grad.norm()).item(),
    )


def rounding_floor(exact: torch.Tensor, dtype: torch.dtype) -> float:
    """SPEC §4's half-type gradient floor ‖half(g64) − g64‖: the error of the exact gradient
    rounded to `dtype` (float16 flushes what lies below its normal range); 0 for float32/float64."""
    if dtype not in (torch.float16, torch.bfloat16):
        return 0.0
    return (exact.to(dtype).double() - exact).norm().item()


def _max(values: torch.Tensor) -> float:
    """The largest value, NaN if any is NaN (a wrong NaN must fail, not vanish in a max)."""
    if values.numel() == 0:
        return 0.0
    return math.nan if values.isnan().any() else values.max().item()


@dataclasses.dataclass
class Check:
    backend: str
    case: str
    errors: Errors

    @property
    def ok(self) -> bool:
        return self.errors.ok


# (regime, batch, channels, spatial, options): odd sizes, 1D to 3D, every option family; then
# near-converged predictions (losses 1e-3 to 1e-6), bands of a few bins, huge magnitudes
CASES: list[tuple[str, int, int, tuple[int, ...], dict[str, Any]]] = [  # regime, B, C, spatial, options
    ("random", 2, 3, (47,), dict(spectrum="complex", softmax=True)),
    ("random", 2, 4, (33, 31), dict(spectrum="complex", softmax=True, ignore_index=255, include_background=False)),
    ("random", 2, 3, (9, 10, 11), dict(spectrum="complex", sigmoid=True, batch=True)),
    ("random", 2, 3, (33, 31), dict(spectrum="amplitude", softmax=True)),
    ("random", 2, 4, (24, 17), dict(spectrum="amplitude", softmax=True, bands=4, ignore_index=255, batch=True)),
    ("random", 2, 3, (9, 10, 11), dict(spectrum="amplitude", softmax=True, bands=2, include_background=False)),
    ("random", 2, 3, (20, 21), dict(spectrum="complex", sigmoid=True, bands=3, band_weights=[1, 2, 0.5])),
    ("converged 4", 2, 3, (63, 65), dict(spectrum="complex", softmax=True)),
    ("converged 8", 2, 3, (63, 65), dict(spectrum="complex", softmax=True)),
    ("converged 8", 2, 3, (63, 65), dict(spectrum="amplitude", softmax=True)),
    ("converged 8", 1, 2, (20, 18, 22), dict(spectrum="complex", softmax=True, batch=True)),
    ("converged 6", 1, 2, (20, 18, 22), dict(spectrum="amplitude", softmax=True, bands=4)),
    ("converged 8", 2, 3, (45, 47), dict(spectrum="amplitude", softmax=True, bands=40)),
    ("random", 2, 3, (19, 17), dict(spectrum="amplitude", softmax=True, bands=24)),
    ("random", 2, 2, (11,), dict(spectrum="amplitude", softmax=True, bands=5)),
    ("huge 1e15", 2, 2, (17, 19), dict(spectrum="amplitude")),
    ("huge 1e30", 2, 2, (17, 19), dict(spectrum="complex")),
]


def make_problem(regime: str, batch, channels, spatial, options, *, dtype, device, generator=None):
    """Inputs of a CASES row: `regime` is "random", "converged <confidence>" or "huge <magnitude>"."""
    kind, _, value = regime.partition(" ")
    ignore_index = options.get("ignore_index")
    if kind == "converged":
        return converged_problem(
            batch,
            channels,
            spatial,
            confidence=float(value),
            ignore_index=ignore_index,
            dtype=dtype,
            device=device,
            generator=generator,
        )
    if kind == "huge":
        return huge_problem(
            batch, channels, spatial, magnitude=float(value), dtype=dtype, device=device, generator=generator
        )
    return random_problem(
        batch, channels, spatial, ignore_index=ignore_index, dtype=dtype, device=device, generator=generator
    )


def run(device: torch.device, names: list[str] | None = None, dtypes=(torch.float32,), seed: int = 0) -> list[Check]:
    """Every case on every backend that can run on `device` (or `names`)."""
    names = names or [n for n in info() if n != "reference" and unavailable_reason(n, device) is None]
    checks = []
    for name in names:
        for dtype in dtypes:
            for regime, batch, channels, spatial, options in CASES:
                generator = torch.Generator().manual_seed(seed)
                logits, target = make_problem(
                    regime, batch, channels, spatial, options, dtype=dtype, device=device, generator=generator
                )
                errors = compare_with_reference(name, logits, target, **options)
                shape = f"{batch}x{channels}x{'x'.join(map(str, spatial))}"
                case = f"{str(dtype)[6:]} {regime} {shape} " + " ".join(f"{k}={v}" for k, v in options.items())
                checks.append(Check(name, case, errors))
    return checks
