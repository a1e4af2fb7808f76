"""Every available backend against the float64 reference: the checks behind `python -m scc_kernels verify`."""

from __future__ import annotations

import dataclasses

import torch

from .backends import info, unavailable_reason
from .functional import scc_loss

# SPEC §4 tolerances against the float64 reference, by input dtype
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_RTOL = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def random_problem(batch, channels, spatial, *, label_map=True, ignore_index=None, dtype=torch.float32,
                   device="cpu", generator=None):  # fmt: skip
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


def compare_with_reference(backend, logits, target, **options):
    """(loss error, gradient error) of `backend` relative to the float64 reference.

    reduction="none" weighted by random cotangents, so every (b, c) value and its gradient count:
    loss error = max |l - l_ref| / |l_ref|, gradient error = ‖g − g_ref‖ / ‖g_ref‖.
    """
    ref_logits = logits.detach().to(torch.float64).cpu().requires_grad_(True)
    ref_target = target.cpu().to(torch.float64) if target.is_floating_point() else target.cpu()
    ref = scc_loss(ref_logits, ref_target, reduction="none", backend="reference", **options)
    cotangent = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    (ref_grad,) = torch.autograd.grad((ref * cotangent).sum(), ref_logits)

    x = logits.detach().clone().requires_grad_(True)
    out = scc_loss(x, target, reduction="none", backend=backend, **options)
    (grad,) = torch.autograd.grad((out * cotangent.to(out)).sum(), x)
    expected_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    if out.dtype != expected_dtype or grad.dtype != logits.dtype:
        raise AssertionError(f"{backend}: loss {out.dtype} / grad {grad.dtype} for {logits.dtype} input")
    loss_error = ((out.double().cpu() - ref).abs() / ref.abs().clamp(min=1e-6)).max().item()
    grad_error = ((grad.double().cpu() - ref_grad).norm() / ref_grad.norm().clamp(min=1e-30)).item()
    return loss_error, grad_error


@dataclasses.dataclass
class Check:
    backend: str
    case: str
    loss_error: float
    grad_error: float
    ok: bool


# (batch, channels, spatial, options) — odd sizes, 1D to 3D, every option family
CASES = [
    (2, 3, (47,), dict(spectrum="complex", softmax=True)),
    (2, 4, (33, 31), dict(spectrum="complex", softmax=True, ignore_index=255, include_background=False)),
    (2, 3, (9, 10, 11), dict(spectrum="complex", sigmoid=True, batch=True)),
    (2, 3, (33, 31), dict(spectrum="amplitude", softmax=True)),
    (2, 4, (24, 17), dict(spectrum="amplitude", softmax=True, bands=4, ignore_index=255, batch=True)),
    (2, 3, (9, 10, 11), dict(spectrum="amplitude", softmax=True, bands=2, include_background=False)),
    (2, 3, (20, 21), dict(spectrum="complex", sigmoid=True, bands=3, band_weights=[1, 2, 0.5])),
]


def run(device: torch.device, names: list[str] | None = None, dtypes=(torch.float32,)) -> list[Check]:
    """Every case on every backend that can run on `device` (or `names`)."""
    names = names or [n for n in info() if n != "reference" and unavailable_reason(n, device) is None]
    checks = []
    for name in names:
        for dtype in dtypes:
            for batch, channels, spatial, options in CASES:
                logits, target = random_problem(batch, channels, spatial, dtype=dtype, device=device,
                                                ignore_index=options.get("ignore_index"))  # fmt: skip
                loss_error, grad_error = compare_with_reference(name, logits, target, **options)
                ok = loss_error <= LOSS_RTOL[dtype] and grad_error <= GRAD_RTOL[dtype]
                case = f"{dtype.__repr__()[6:]} {batch}x{channels}x{'x'.join(map(str, spatial))} " + " ".join(
                    f"{k}={v}" for k, v in options.items())  # fmt: skip
                checks.append(Check(name, case, loss_error, grad_error, ok))
    return checks
