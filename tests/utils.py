"""Shared test helpers; they live in the package (scc_kernels.verify) so the CLI uses the same checks."""

import torch

from scc_kernels import planning
from scc_kernels.verify import compare_with_reference, converged_problem, random_problem

__all__ = [
    "assert_matches_reference",
    "compare_with_reference",
    "converged_problem",
    "device_for",
    "kernel_case_id",
    "random_problem",
    "typed_problem",
]


def device_for(backend: str) -> torch.device:
    """Where a test puts the tensors it gives `backend`: a GPU backend's on CUDA where there is a
    GPU (triton then runs compiled: tests/conftest.py turns its interpreter on only without one),
    else on the CPU (triton in its interpreter; cuda and cupy report themselves unavailable)."""
    on_gpu = backend in ("triton", "cuda", "cupy") and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def assert_matches_reference(backend, logits, target, seed=None, **options):
    """SPEC §4 against the float64 reference (errors as fractions of the tolerance); the seed
    that made the inputs, if given, goes into the failure message."""
    errors = compare_with_reference(backend, logits, target, **options)
    where = "" if seed is None else f" seed {seed}"
    assert errors.ok, f"{backend}{where}: {errors} ({options})"


def typed_problem(spatial, options, target_kind, dtype, device, batch=2, channels=3):
    """random_problem with the target as a kernel may receive it: "dense" soft targets, or a label
    map of dtype `target_kind` ("uint8", "int32" or "int64"), options' ignore_index on about a tenth."""
    logits, target = random_problem(
        batch,
        channels,
        spatial,
        label_map=target_kind != "dense",
        ignore_index=options.get("ignore_index"),
        dtype=dtype,
        device=device,
    )
    if target_kind in ("uint8", "int32"):
        target = target.to(getattr(torch, target_kind))
    return logits, target


def kernel_case_id(case):
    """The test id of a (spatial, channels, spectrum, bands, activation, target dtype, ignore_index,
    include_background) case of the Triton kernel tests."""
    spatial, channels, spectrum, bands, activation, target_dtype, ignore_index, background = case
    return (
        f"{'x'.join(map(str, spatial))}-C{channels}-{spectrum}-K{bands}-{activation}-"
        f"{str(target_dtype).removeprefix('torch.')}-ign{ignore_index}-bg{background}"
    )


def op_static(backend, input, opts) -> tuple:
    """The custom op's static arguments as scc_loss passes them: planning.resolve's backend and
    path for `input`, then the options."""
    route = planning.resolve(backend, input, opts)
    return (*route, opts.spectrum, opts.num_bands, opts.activation, opts.ignore_index, opts.include_background)
