"""Shared test helpers; they live in the package (scc_kernels.verify) so the CLI uses the same checks."""

from scc_kernels.verify import compare_with_reference, converged_problem, random_problem

__all__ = ["assert_matches_reference", "compare_with_reference", "converged_problem", "random_problem"]


def assert_matches_reference(backend, logits, target, seed=None, **options):
    """SPEC v2 §4 against the float64 reference (errors as fractions of the tolerance); the seed
    that made the inputs, if given, goes into the failure message."""
    errors = compare_with_reference(backend, logits, target, **options)
    where = "" if seed is None else f" seed {seed}"
    assert errors.ok, f"{backend}{where}: {errors} ({options})"
