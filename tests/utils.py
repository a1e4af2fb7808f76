"""Shared test helpers: random inputs (fresh each run) and comparison against the reference."""

from __future__ import annotations

import torch

import scc_kernels

# SPEC §4 tolerances against the float64 reference
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_RTOL = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def random_problem(batch, channels, spatial, *, label_map=True, ignore_index=None, dtype=torch.float32,
                   device="cpu", generator=None):
    """Random logits (B, C, *S) and a target: an int64 label map (B, *S) or soft targets (B, C, *S).

    With ignore_index, about a tenth of the labels are set to it.
    """
    logits = 2 * torch.randn(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    if label_map:
        target = torch.randint(0, channels, (batch, *spatial), generator=generator)
        if ignore_index is not None:
            ignored = torch.rand(target.shape, generator=generator) < 0.1
            target[ignored] = ignore_index
    else:
        target = torch.rand(batch, channels, *spatial, generator=generator, dtype=torch.float64)
    return logits.to(device=device, dtype=dtype), target.to(device)


def compare_with_reference(backend, logits, target, **options):
    """Loss and input gradient of `backend` vs the float64 reference; returns the relative errors.

    Uses reduction="none" weighted by random cotangents, so every (b, c) value is checked.
    """
    ref_logits = logits.detach().to(torch.float64).cpu().requires_grad_(True)
    ref_target = target.cpu().to(torch.float64) if target.is_floating_point() else target.cpu()
    ref = scc_kernels.scc_loss(ref_logits, ref_target, reduction="none", backend="reference", **options)
    cotangent = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    (ref_grad,) = torch.autograd.grad((ref * cotangent).sum(), ref_logits)

    x = logits.detach().clone().requires_grad_(True)
    out = scc_kernels.scc_loss(x, target, reduction="none", backend=backend, **options)
    (grad,) = torch.autograd.grad((out * cotangent.to(out)).sum(), x)
    assert out.dtype == (torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype)
    assert grad.dtype == logits.dtype
    loss_error = ((out.double().cpu() - ref).abs() / ref.abs().clamp(min=1e-6)).max().item()
    grad_error = ((grad.double().cpu() - ref_grad).norm() / ref_grad.norm().clamp(min=1e-30)).item()
    return loss_error, grad_error


def assert_matches_reference(backend, logits, target, **options):
    loss_error, grad_error = compare_with_reference(backend, logits, target, **options)
    assert loss_error <= LOSS_RTOL[logits.dtype], f"loss rel. error {loss_error:.2e} ({options})"
    assert grad_error <= GRAD_RTOL[logits.dtype], f"grad rel. error {grad_error:.2e} ({options})"
