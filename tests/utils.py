"""Shared test helpers; they live in the package (scc_kernels.verify) so the CLI uses the same checks."""

from scc_kernels.verify import compare_with_reference, converged_problem, random_problem

__all__ = ["assert_matches_reference", "compare_with_reference", "converged_problem", "random_problem"]


def assert_matches_reference(backend, logits, target, **options):
    """SPEC v2 §4 against the float64 reference (errors as fractions of the tolerance)."""
    errors = compare_with_reference(backend, logits, target, **options)
    assert errors.ok, f"{backend}: {errors} ({options})"
