"""Which two signals the transform backends transform, and how they get u, v and d back.

Every transform backend (torch, cuda/cupy, triton's DFT kernels) transforms, per slice, the
difference x − y and one of x, y (the base), never x and y apart:

    D = F(x − y),   S = F(base);   X, Y = (S, S − D) if the base is x, else (S + D, S).

X and Y then share the rounding error of S, so d = u − v (what carries the information near
r = 1) comes from D and is exact to its own size, and r moves only to second order with the
shared error. The spectrum formed as a sum or difference is the one of the larger signal, so it
is never a tiny signal swamped by a huge one's rounding: a class that the prediction confidently
leaves out (base x), or inputs of 1e15 with no activation (base y).

Per bin, with the real views (..., 2) of X, Y and D: amplitude u = |X|, v = |Y| and
d = (|X|² − |Y|²)/(|X| + |Y|), where |X|² − |Y|² = 2·Re(D·conj X) − |D|² keeps every term
of the size of D (d = 0 where X = Y = 0); complex u = X, v = Y, d = D.
"""

from __future__ import annotations

import torch

from .._options import Problem, is_label_map


def base_is_prediction(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """(B, C') bool: per slice, whether the base is the prediction x (else the target y).

    x is the base unless it is larger than y by largest magnitude. An activation bounds x by 1,
    so only an input without one is read; a label map's y is 1 where its class occurs, else 0.
    """
    batch, classes = input.shape[:2]
    if problem.activation == "none":
        x_max = input.detach().flatten(2).abs().amax(-1).float()
    else:
        x_max = input.new_ones((batch, classes), dtype=torch.float32)
    if is_label_map(input, target):  # label map: which classes occur (at kept samples)
        labels = target.reshape(batch, -1).long()
        kept = torch.ones_like(labels, dtype=torch.float32)
        if problem.ignore_index is not None:
            kept = (labels != problem.ignore_index).float()
            labels = labels.masked_fill(labels == problem.ignore_index, 0)
        y_max = kept.new_zeros((batch, classes)).scatter_reduce_(1, labels, kept, "amax")
    else:
        y_max = target.detach().flatten(2).abs().amax(-1).float()
    return (x_max <= y_max)[:, problem.offset :]


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
        mirror = plane.flip(other).roll((1,) * len(other), other) if other else plane  # k → −k mod n
        # conj_physical: a lazy conj() was lost here when the op ran under torch.compile (AOT)
        Z[..., column] = (plane + mirror.conj_physical()) / 2
    return Z
