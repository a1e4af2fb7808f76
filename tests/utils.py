"""Shared test helpers; they live in the package (scc_kernels.verify) so the CLI uses the same checks."""

from scc_kernels.verify import GRAD_RTOL, LOSS_RTOL, compare_with_reference, random_problem

__all__ = ["GRAD_RTOL", "LOSS_RTOL", "assert_matches_reference", "compare_with_reference", "random_problem"]


def assert_matches_reference(backend, logits, target, **options):
    loss_error, grad_error = compare_with_reference(backend, logits, target, **options)
    assert loss_error <= LOSS_RTOL[logits.dtype], f"loss rel. error {loss_error:.2e} ({options})"
    assert grad_error <= GRAD_RTOL[logits.dtype], f"grad rel. error {grad_error:.2e} ({options})"
