"""Argument checking and normalisation shared by every backend: SPEC §5 lives here, once.

`make_options` checks the keyword options, `prepare` the tensors (returning the normalised problem
every backend receives), `check_labels` the labels inside the backends' op (docs/internals.md).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeVar, cast

import torch

from .backends import registry as backend_registry

SPECTRA = ("amplitude", "complex")
REDUCTIONS = ("mean", "sum", "none")
BACKEND_NAMES = ("auto", *backend_registry.NAMES)
ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}  # what backends see (kernel constants, csrc's
# scc::Activation); `other_act` is applied before
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # every loss is computed in float32 at least


@dataclasses.dataclass(frozen=True)
class SCCOptions:
    spectrum: str = "amplitude"
    bands: int | None = None
    band_weights: tuple[float, ...] | None = None
    activation: str = "none"  # "none", "softmax" or "sigmoid"
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    to_onehot_y: bool = False
    include_background: bool = True
    ignore_index: int | None = None
    batch: bool = False
    sync_batch: bool = False
    process_group: object | None = None  # a torch.distributed ProcessGroup, or None: the world
    eps: float = 1e-5
    reduction: str = "mean"
    backend: str = "auto"
    binary_label_map: bool = False  # set by `prepare` only: SPEC §1's one-channel binary label map

    @property
    def num_bands(self) -> int:
        return 1 if self.bands is None else self.bands


def make_options(
    *,
    spectrum: str = "amplitude",
    bands: int | None = None,
    band_weights: Sequence[float] | torch.Tensor | None = None,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    to_onehot_y: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch: bool = False,
    sync_batch: bool = False,
    process_group: object | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
) -> SCCOptions:
    """Check the keyword options of SPEC §2 and return them normalised."""
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    if bands is not None and (isinstance(bands, bool) or not isinstance(bands, int) or bands < 1):
        raise ValueError(f"bands must be None or an int >= 1, got {bands!r}")
    if band_weights is not None:
        band_weights = _check_band_weights(band_weights, 1 if bands is None else bands)
    _check_activations(bool(sigmoid), bool(softmax), other_act)
    # comparisons only (no math.isinf): under torch.compile(dynamic=True) eps may be symbolic
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= _FLOAT32_MAX:
        raise ValueError(f"eps must be a number in [0, {_FLOAT32_MAX:.4g}] (finite in float32), got {eps!r}")
    if ignore_index is not None:
        ignore_index = _check_ignore_index(ignore_index)
    if process_group is not None and not (sync_batch and _is_process_group(process_group)):
        raise ValueError(
            f"process_group must be a torch.distributed ProcessGroup used with sync_batch=True, got {process_group!r}"
        )
    if sync_batch and not batch:
        warn_caller("`sync_batch=True` needs `batch=True` (one r per class over the batch); ignored.")
        sync_batch = False
    activation = "softmax" if softmax else "sigmoid" if sigmoid else "none"
    return SCCOptions(
        spectrum=spectrum,
        bands=bands,
        band_weights=band_weights,
        activation=activation,
        other_act=other_act,
        to_onehot_y=bool(to_onehot_y),
        include_background=bool(include_background),
        ignore_index=ignore_index,
        batch=bool(batch),
        sync_batch=bool(sync_batch),
        process_group=process_group,
        eps=float(eps),
        reduction=reduction,
        backend=backend,
    )


def _check_activations(sigmoid: bool, softmax: bool, other_act: object) -> None:
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be callable, got {type(other_act).__name__}")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError("at most one of sigmoid=True, softmax=True and other_act may be given")


def with_other_act(opts: SCCOptions, other_act: Callable[[torch.Tensor], torch.Tensor] | None) -> SCCOptions:
    """`opts` with another `other_act` (SCCLoss's attribute, reassigned), checked as `make_options` does."""
    _check_activations(opts.activation == "sigmoid", opts.activation == "softmax", other_act)
    return dataclasses.replace(opts, other_act=other_act)


OPTIONS_DOC = f"""\
include_background: if False, channel 0 (the background) is left out after the activation;
    the output has C' = C - 1 channels. Ignored, with a warning, for a single channel.
to_onehot_y: accept a floating label map (B, 1, *spatial) of integral class indices.
    Integer label maps (B, *spatial) or (B, 1, *spatial) are always accepted.
sigmoid: apply a sigmoid to `input` first (binary or multi-label logits).
softmax: apply a softmax over channels to `input` first (multi-class logits). Ignored,
    with a warning, for a single channel.
other_act: a callable applied to `input` instead (an `nn.Module` is registered as a
    submodule of `SCCLoss`). At most one of `sigmoid`, `softmax`, `other_act`.
spectrum: "amplitude" correlates |F p| with |F t| (shape content, blind to where it is);
    "complex" correlates the complex spectra F p and F t (shape and position).
bands: None for one band holding every frequency, or an int K >= 1 for K radial bands of
    equal width in normalised frequency (SPEC §3 step 5); r is averaged over the bands.
band_weights: K non-negative weights (not all zero) for that average; None is uniform.
ignore_index: a label value (label-map targets only; an int within int64, compared as an
    integer whatever the label dtype) whose positions are zeroed in both the prediction and
    the target, in every channel, before the transform. With one channel, an integer target
    is then a binary label map: values 0, 1 or ignore_index, target label == 1.
batch: one r per class over the whole batch instead of one per (item, class), as MONAI's
    `batch`.
sync_batch: with `batch=True` under torch.distributed, merge the band statistics of every
    rank (differentiably) before r is formed, so r is over the global batch.
process_group: the torch.distributed group `sync_batch` merges over (default: the world).
eps: smoothing added to the covariance and to each variance, eps >= 0 (SPEC §3 step 6).
backend: "auto" (the fastest that runs here: on CUDA as `scc_kernels.plan` picks,
    elsewhere torch), or one of {", ".join(map(repr, backend_registry.NAMES)).replace("'", '"')};
    `scc_kernels.available_backends()` says which run on this machine and why not."""

RAISES_DOC = """\
TypeError: `input` is not a floating tensor, `target` is complex, `other_act` is not
    callable, or `band_weights` is not a sequence of numbers / a 1-D tensor.
ValueError: an option out of range or a meaningless combination (SPEC §5), shapes that
    fit no target layout, tensors on different devices, no channels, or (CPU) a label
    outside [0, C) that is not `ignore_index` — on CUDA an asynchronous device assert.
RuntimeError: the chosen backend cannot run here (the message says why), or a double
    backward through a fast backend (use backend="reference")."""


_Function = TypeVar("_Function", bound=Callable[..., Any])


def documented(function: _Function) -> _Function:
    """Fill the `{options}` and `{raises}` lines of a public entry point's docstring, indented as
    the placeholder is: the options are documented once, here, for scc_loss, spectral_correlation
    and SCCLoss alike."""
    texts = {"{options}": OPTIONS_DOC, "{raises}": RAISES_DOC}

    def fill(match: re.Match[str]) -> str:
        return textwrap.indent(texts[match.group(2)], match.group(1))

    if function.__doc__ is not None:  # None under python -OO, which strips docstrings
        function.__doc__ = re.sub(r"^( *)(\{options\}|\{raises\})$", fill, function.__doc__, flags=re.MULTILINE)
    return function


def _check_ignore_index(ignore_index: object) -> int:
    """An integer (a NumPy integer too) that fits int64 (SPEC §5), as a Python int."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(f"ignore_index must be None or an int, got {ignore_index!r}")
    ignore_index = int(ignore_index)
    if not _INT64.min <= ignore_index <= _INT64.max:
        raise ValueError(f"ignore_index must fit int64 ([{_INT64.min}, {_INT64.max}]), got {ignore_index}")
    return ignore_index


_INT64 = torch.iinfo(torch.int64)


def _is_process_group(group: object) -> bool:
    return torch.distributed.is_available() and isinstance(group, torch.distributed.ProcessGroup)


def _check_band_weights(weights: Any, num_bands: int) -> tuple[float, ...]:
    """One weight per band, finite, >= 0, not all 0; returned divided by the largest, so that
    no sum of them can overflow (the loss uses w_j / Σ w, unchanged by the scaling).
    `weights` is the user's value, of any type: the checks below are its type check."""
    if isinstance(weights, torch.Tensor) or hasattr(weights, "ndim"):  # a tensor or a NumPy array
        if weights.ndim != 1:
            raise TypeError(f"band_weights must be 1-D, got shape {tuple(weights.shape)}")
        weights = weights.tolist()
    elif not isinstance(weights, Sequence) or isinstance(weights, (str, bytes)):
        raise TypeError(
            f"band_weights must be a sequence of real numbers or a 1-D tensor, got {type(weights).__name__}"
        )
    if not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise TypeError(f"band_weights must hold real numbers, got {list(weights)!r}")
    values = tuple(float(w) for w in weights)
    if len(values) != num_bands:
        raise ValueError(f"band_weights needs {num_bands} value(s) (one per band), got {len(values)}")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(f"band_weights must be finite and >= 0, got {values}")
    largest = max(values)
    if largest == 0:
        raise ValueError("band_weights must not all be zero")
    return tuple(w / largest for w in values)


def prepare(
    input: torch.Tensor, target: torch.Tensor, opts: SCCOptions
) -> tuple[torch.Tensor, torch.Tensor, SCCOptions]:
    """Check `input` and `target` against `opts` (SPEC §1 and §5).

    Returns `(input, target, opts)`: `target` is either a float tensor shaped like `input`
    (dense) or an integer label map `(B, *S)`; `opts` has the options that are meaningless
    for this input switched off, each with a warning, as MONAI does.
    """
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("input and target must be torch.Tensors")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating tensor, got {input.dtype}")
    if input.dim() < 3:
        raise ValueError(
            f"input must have the layout (B, C, *spatial) with at least one spatial dim, got shape {tuple(input.shape)}"
        )
    if input.device != target.device:
        raise ValueError(f"input is on {input.device} but target is on {target.device}")
    if target.is_complex():
        raise TypeError("target must be real")

    num_classes = input.shape[1]
    if num_classes == 0:
        raise ValueError(f"input has no channels (C == 0): shape {tuple(input.shape)}")
    if num_classes == 1:
        opts = _single_channel(opts)

    batch_size, spatial = input.shape[0], tuple(input.shape[2:])
    is_label_shape = target.shape == (batch_size, *spatial) or target.shape == (batch_size, 1, *spatial)
    is_integer = not target.is_floating_point() and target.dtype != torch.bool
    # SPEC §1: with ignore_index, an integer target of a one-channel input is a binary label map
    binary = num_classes == 1 and opts.ignore_index is not None and is_integer and is_label_shape
    if target.shape == input.shape and not binary:
        if opts.ignore_index is not None:
            raise ValueError(
                "ignore_index needs an integer label map target (B, *spatial) or (B, 1, *spatial); "
                f"got a dense target of shape {tuple(target.shape)}"
            )
        if not target.is_floating_point():
            target = target.to(torch.float32)
        return input, target, opts

    if is_label_shape and (is_integer or (opts.to_onehot_y and target.dim() == input.dim())):
        if target.dim() == input.dim():
            target = target.squeeze(1)
        # an ignore_index no value of the label dtype equals can match no label: compared as
        # integers (SPEC §5), it ignores nothing (in the dtype it would wrap: uint8's 255 is not −1)
        ignore_index = matchable_ignore_index(target.dtype, opts.ignore_index)
        if target.dtype in _WIDENED_LABELS:
            target = target.long()  # a uint64 label ≥ 2**63 wraps to a negative, invalid label either way
        return input, target, dataclasses.replace(opts, ignore_index=ignore_index, binary_label_map=binary)
    hint = ""
    if is_label_shape and target.is_floating_point():
        hint = " (a floating (B, 1, *spatial) label map needs to_onehot_y=True)"
    raise ValueError(
        f"target shape {tuple(target.shape)} does not fit input shape {tuple(input.shape)}: expected "
        f"{tuple(input.shape)} (dense), or an integer label map {(batch_size, *spatial)} or "
        f"{(batch_size, 1, *spatial)}{hint}"
    )


# label dtypes with too few torch ops (no aminmax, masked_fill, lt on CPU): widened to int64 once
_WIDENED_LABELS = (torch.uint16, torch.uint32, torch.uint64)


def matchable_ignore_index(dtype: torch.dtype, ignore_index: int | None) -> int | None:
    """`ignore_index` if some value of `dtype` equals it as an integer, else None (no label can).

    SPEC §5 compares labels and ignore_index as integers of unbounded range; a comparison in the
    label dtype would wrap (a uint8 map's 255 would match −1). With this, `labels == ignore_index`
    is exact in any dtype. Pure Python (no tensor), so torch.compile keeps it static.
    """
    if ignore_index is None:
        return None
    if dtype.is_floating_point:  # an integer fits if it is finite and has at most `digits` significant bits
        finfo = torch.finfo(dtype)
        digits = 1 - round(math.log2(finfo.eps))
        magnitude = abs(ignore_index)
        fits = magnitude <= finfo.max and magnitude % (1 << max(magnitude.bit_length() - digits, 0)) == 0
    else:
        iinfo = torch.iinfo(dtype)
        fits = iinfo.min <= ignore_index <= iinfo.max
    return ignore_index if fits else None


def binary_as_two_classes(input: torch.Tensor, opts: SCCOptions) -> tuple[torch.Tensor, SCCOptions]:
    """SPEC §1's one-channel binary label map (values 0, 1, ignore_index; target label == 1) as the
    two-class problem every backend runs: a constant channel 0 for label 0, left out
    (include_background=False), so that the output channel is the input's, its target is
    label == 1, and ignore_index zeroes it as for any label map. Call after `other_act`."""
    two_classes = torch.cat([torch.zeros_like(input), input], dim=1)
    return two_classes, dataclasses.replace(opts, include_background=False, binary_label_map=False)


def _single_channel(opts: SCCOptions) -> SCCOptions:
    changes: dict[str, Any] = {}  # SCCOptions fields of several types
    if opts.activation == "softmax":
        warn_caller("single channel prediction, `softmax=True` ignored.")
        changes["activation"] = "none"
    if not opts.include_background:
        warn_caller("single channel prediction, `include_background=False` ignored.")
        changes["include_background"] = True
    if opts.to_onehot_y:
        warn_caller("single channel prediction, `to_onehot_y=True` ignored.")
        changes["to_onehot_y"] = False
    return dataclasses.replace(opts, **changes) if changes else opts


_INTERNAL_DIRS = tuple(os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, torch.__file__))


def assume_constant_result(function: _Function) -> _Function:
    """torch.compiler.assume_constant_result with a type (torch's has no annotations): it marks
    `function` for dynamo and returns it."""
    marked = torch.compiler.assume_constant_result(function)  # type: ignore[no-untyped-call]  # torch: no annotations
    return cast(_Function, marked)


@assume_constant_result  # in a torch.compile graph: run once, while tracing
def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn pointing at the user's line: the first frame outside scc_kernels and torch
    (an nn.Module call, a custom op, autograd and dynamo add frames of their own)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def is_label_map(input: torch.Tensor, target: torch.Tensor) -> bool:
    """A prepared target is an integer label map (B, *S) rather than dense (B, C, *S)."""
    return target.dim() == input.dim() - 1


_warned: set[str] = set()


@assume_constant_result  # in a torch.compile graph: run once, while tracing
def warn_caller_once(message: str) -> None:
    """warn_caller, the first time this process sees `message`."""
    if message not in _warned:
        _warned.add(message)
        warn_caller(message)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and loss dtype (SPEC §4): float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """Labels must lie in [0, C) or equal ignore_index (SPEC §5); returns them as integers.

    CPU: a ValueError. CUDA: an asynchronous assert, so the hot path never syncs. Runs eagerly,
    inside an op (the fast backends' band_stats, the reference's `checked_labels`), so that a
    torch.compile graph raises what eager code does. A floating label map (`to_onehot_y=True`)
    must hold integral values and comes back as int64.
    """
    if labels.numel() == 0:  # nothing to check (a rank with B = 0 under sync_batch)
        return labels.long() if labels.is_floating_point() else labels
    ignore_index = matchable_ignore_index(labels.dtype, ignore_index)
    checked = labels if ignore_index is None else labels.masked_fill(labels == ignore_index, 0)
    low, high = torch.aminmax(checked)  # one pass over the labels
    valid = (low >= 0) & (high < num_classes)
    if labels.is_floating_point():
        valid &= (checked == checked.round()).all()
    if labels.device.type == "cpu":
        if not bool(valid):
            invalid = (checked < 0) | (checked >= num_classes)
            if labels.is_floating_point():
                invalid |= checked != checked.round()
            bad = checked[invalid][:5].tolist()
            raise ValueError(
                f"label map values must be integers in [0, {num_classes}) or ignore_index={ignore_index}; "
                f"found {bad} (a {str(labels.dtype).removeprefix('torch.')} label map)"
            )
    else:
        torch._assert_async(valid, "scc_kernels: label outside [0, C) and not ignore_index")
    return labels.long() if labels.is_floating_point() else labels


@torch.library.custom_op("scc_kernels::checked_labels", mutates_args=())
def checked_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """`check_labels` as an op, for the reference backend (which has no op of its own): opaque to
    torch.compile, so that a graph raises the eager error (a ValueError on CPU, not the
    RuntimeError of a traced assert), and with a vmap rule (a data-dependent check cannot run on
    vmap's wrapped tensors). Returns the labels as a new contiguous int64 tensor."""
    checked = check_labels(labels, num_classes, ignore_index)
    return checked.to(torch.int64, memory_format=torch.contiguous_format, copy=True)


@checked_labels.register_fake
def _(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    return labels.new_empty(labels.shape, dtype=torch.int64)


@checked_labels.register_vmap
def _(
    info: object, in_dims: tuple[int | None, ...], labels: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, int | None]:
    # every example's labels at once: one bad label anywhere is an error either way
    return checked_labels(labels, num_classes, ignore_index), in_dims[0]
