"""Which two signals the transform backends transform, and how they get u, v and d back.

Forward: per slice D = F(x − y) and S = F(base), never x and y apart; the base is the prediction x
unless x has the larger largest magnitude or over 4× the target's energy, then the target y
(`base_is_prediction`). X, Y = (S, S − D) or (S + D, S) share S's rounding, so d = u − v comes
from D, exact to its own size; `make_hermitian` makes self-mirrored rfftn columns exact mirror pairs.
Backward (in the backends): irfftn, the same Hermitian projection. Why, and the rule's history:
docs/numerics.md.
"""

from __future__ import annotations

import torch

from .._options import compute_dtype, is_label_map
from ..bands import mirror
from .registry import Problem


def activate(input: torch.Tensor, problem: Problem) -> torch.Tensor:
    """p = act(input) (SPEC §3 step 1) in the compute dtype, all C channels."""
    x = input.to(compute_dtype(input.dtype))
    if problem.activation == "softmax":
        return torch.softmax(x, dim=1)
    if problem.activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def base_is_prediction(
    input: torch.Tensor, target: torch.Tensor, problem: Problem, x: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, C') bool: per slice, whether the base is the prediction x (else the target y).

    The FFT rounds every bin of S by about ε·‖base‖, and the other spectrum, formed as S ± D,
    carries that error. Two rules, both measured over the precision sweep:
    - by largest magnitude, x unless it is the larger (an activation bounds x by 1; a label map's
      y is 1 where its class occurs): a class the prediction confidently leaves out keeps base x,
      inputs of 1e15 with no activation get base y, near convergence x with an activation;
    - but y wherever x holds more than 4x the energy ‖·‖₂² of y: a one-voxel class has a flat |Y|
      (S_vv = 0, r rests on eps) that a prediction spread over the image would blur with its own
      rounding (the loss was 3x off SPEC §4 at 12x10x9 without this rule). Near convergence,
      where the energies agree, neither base is better in general (narrow bands: either can be
      the worse by 10x, seed to seed), so the first rule, which the sweep was tuned on, decides.
    `x`: the activated prediction (B, C', *S), ignored positions zeroed, when the caller has it.
    """
    batch, classes = input.shape[:2]
    kept = None
    if is_label_map(input, target):  # y's energy: how many samples hold each class (exact integers)
        labels = target.reshape(batch, -1).long()
        kept = labels.new_ones(()).expand(labels.shape)
        if problem.ignore_index is not None:
            kept = (labels != problem.ignore_index).long()
            labels = labels.masked_fill(labels == problem.ignore_index, 0)
        y_energy, y_max = label_energy(labels.new_zeros((batch, classes)).scatter_add_(1, labels, kept))
    else:
        y_energy = _energy(target)
        y_max = target.detach().flatten(2).abs().amax(-1).double()
    if x is None:
        with torch.no_grad():
            x = activate(input.detach(), problem)[:, problem.offset :]
            if kept is not None and problem.ignore_index is not None:
                x = x * kept.view(batch, 1, *input.shape[2:]).to(x.dtype)
    if problem.activation == "none":
        x_max = input.detach().flatten(2).abs().amax(-1).double()
    else:
        x_max = torch.ones_like(y_max)
    bounded = problem.activation != "none"  # x in [0, 1]: its energy cannot overflow the compute dtype
    return choose_base(x_max, y_max, _energy(x.detach(), bounded), y_energy, problem.offset)


def label_energy(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy ‖y‖₂², largest value) (B, C) float64 of a label map's class masks from their counts."""
    energy = counts.double()
    return energy, energy.clamp(max=1)


def choose_base(
    x_max: torch.Tensor, y_max: torch.Tensor, x_energy: torch.Tensor, y_energy: torch.Tensor, offset: int
) -> torch.Tensor:
    """`base_is_prediction`'s rule from its sums: x_max, y_max, y_energy (B, C), x_energy (B, C')."""
    return (x_max <= y_max)[:, offset:] & (x_energy <= 4 * y_energy[:, offset:])


def _energy(z: torch.Tensor, bounded: bool = False) -> torch.Tensor:
    """Σ z² per (b, c) as float64: accumulated in float64 (no overflow for any float32 input), or,
    for values in [-1, 1] (`bounded`), in z's own dtype (float32 or wider: an activation's
    output), a cascade sum 9x faster than the float64 norm on a CPU."""
    flat = z.flatten(2)
    if bounded and flat.dtype in (torch.float32, torch.float64):
        energy: torch.Tensor = torch.linalg.vecdot(flat, flat).double()
        return energy
    norm: torch.Tensor = torch.linalg.vector_norm(flat, dim=-1, dtype=torch.float64)
    return norm.square()


def make_hermitian(Z: torch.Tensor, last: int) -> torch.Tensor:
    """In place on an rfftn half spectrum Z (B, C', *half): the last-axis columns that are their
    own mirror image (k = 0, and k = n/2 for even n) hold spectra of real signals along the other
    axes, so Z[k] = conj(Z[−k]) there. Float32 FFTs miss that by an ulp, and a band made only of
    such mirror pairs must see exactly equal amplitudes (r = 1, SPEC §4): a spread of an ulp of
    a huge amplitude is not below eps. Averaging each bin with its mirror's conjugate restores it
    (and halves those bins' rounding). irfftn applies the same projection in the backward.
    `last` is the length of the last spatial axis (its half grid has last // 2 + 1 columns)."""
    other = tuple(range(2, Z.dim() - 1))
    for column in (0, last // 2) if last % 2 == 0 else (0,):
        plane = Z[..., column]
        # conj_physical: a lazy conj() was lost here when the op ran under torch.compile (AOT)
        Z[..., column] = (plane + mirror(plane, other).conj_physical()) / 2
    return Z
