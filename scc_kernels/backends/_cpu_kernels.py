"""The torch backend's compiled CPU kernels (csrc/cpu_kernels.c): build, load, call.

Path "fused" (amplitude): forward `label_signals` (from a label map, the signals to transform
and each slice's base), `amplitude_forward` (X, v, d and the band statistics, one
pass); backward `amplitude_backward` (each bin's gradient, one pass), `softmax_backward`. Path
"fused-parseval" (complex, one band): `label_parseval_sums`, `label_parseval_backward`. Plain C
through ctypes, built only on request (`python -m scc_kernels build-cpu`, or `build()`), never by
a loss call: where it is not built, the torch backend's pure-torch paths run (planning.resolve
decides).
The build is one `cc` call of about a second into a folder keyed by the source, the compiler and
this CPU (-march=native), so a copy built on another machine is never loaded. docs/cpu-kernels.md.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .._cache import TableCache
from ..bands import half_grid_tables, mirror
from ._sources import csrc_dir

SOURCE = "cpu_kernels.c"
# -ffp-contract=off and no -ffast-math: every operation as written, on every instruction set
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-fPIC", "-shared")
OPENMP = ("-fopenmp",)
LANES = 8  # cpu_kernels.c's
SWITCH = "SCC_KERNELS_CPU_KERNELS"  # "0": never use them, even when built


def build_dir() -> Path:
    """Where builds go: $SCC_KERNELS_CPU_BUILD_DIR, else ~/.cache/scc_kernels/cpu."""
    return _build_dir(os.environ.get("SCC_KERNELS_CPU_BUILD_DIR") or None)


@functools.cache
def _build_dir(folder: str | None) -> Path:
    return Path(folder) if folder else Path.home() / ".cache" / "scc_kernels" / "cpu"


def compiler() -> str | None:
    """$CC, else cc, gcc or clang on PATH."""
    return _find_compiler(os.environ.get("CC") or None)


@functools.cache
def _find_compiler(cc: str | None) -> str | None:
    names = [cc] if cc else ["cc", "gcc", "clang"]
    return next((found for name in names if (found := shutil.which(name)) is not None), None)


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(wanted))  # one copy per distinct line, not one per core


@functools.cache
def _build_key(cc: str) -> str | None:
    """A hash of what the library depends on: the source, the flags, the compiler, this CPU (None:
    the compiler does not run)."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256()
    for part in ((csrc_dir() / SOURCE).read_text(), " ".join(FLAGS), version, _cpu_identity(), platform.machine()):
        key.update(part.encode() + b"\0")
    return key.hexdigest()[:16]


def library_path() -> Path | None:
    """Where this source, compiler and CPU build to (None: no working C compiler)."""
    return _library_path(compiler(), build_dir())


@functools.cache
def _library_path(cc: str | None, folder: Path) -> Path | None:
    key = None if cc is None else _build_key(cc)
    return None if key is None else folder / key / "libscc_cpu.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernels for this machine (once: a second call finds the library) and load them.
    Raises RuntimeError saying why when there is no C compiler or the compile fails."""
    cc, target = compiler(), library_path()
    if cc is None or target is None:
        raise RuntimeError("no working C compiler (cc, gcc or clang on PATH, or $CC) to build the CPU kernels")
    if not target.is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = f"{target.parent} ({error})"
            raise RuntimeError(f"cannot write the CPU kernels to {where}: set SCC_KERNELS_CPU_BUILD_DIR") from error
        source = str(csrc_dir() / SOURCE)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            errors = ""
            for openmp in (OPENMP, ()):  # without OpenMP if the compiler lacks it: one thread
                command = [cc, *FLAGS, *openmp, source, "-o", str(built), "-lm"]
                if verbose:
                    print("$", " ".join(command))
                result = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if result.returncode == 0:
                    break
                errors = result.stderr.strip()
            else:
                raise RuntimeError(f"building the CPU kernels with {cc} failed:\n{errors}")
            os.replace(built, target)  # atomic: a concurrent build or load sees all or nothing
    if _load(target) is None:
        raise RuntimeError(f"the CPU kernels built at {target} do not load (delete it to build again)")
    return target


_loaded: dict[Path, ctypes.CDLL] = {}  # the libraries loaded in this process, by path


def _load(path: Path) -> ctypes.CDLL | None:
    """The library at `path` with its functions' signatures, or None if it is not there (or does
    not load). Only a loaded library is remembered: a later build in the process finds its own."""
    if path in _loaded:
        return _loaded[path]
    if not path.is_file():
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return None
    i64, ptr, threads = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    functions = {  # name: (argument types, result type)
        "scc_cpu_amplitude_forward": ([i64, i64, *[ptr] * 9, i64, i64, ptr, ptr, threads], ctypes.c_int),
        "scc_cpu_amplitude_backward": ([i64, i64, *[ptr] * 5, i64, ptr, ptr, threads], None),
        "scc_cpu_label_counts": ([i64, i64, i64, ptr, ptr, threads], ctypes.c_int),
        "scc_cpu_label_signals": ([i64, i64, i64, i64, ptr, ptr, ctypes.c_int, ptr, ptr, ptr, threads], ctypes.c_int),
        "scc_cpu_softmax_backward": ([i64, i64, i64, i64, ptr, ptr, ptr, threads], None),
        "scc_cpu_label_parseval_sums": ([i64, i64, i64, i64, ptr, ptr, ptr, threads], None),
        "scc_cpu_label_parseval_gradient": ([i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_float, ptr, threads], None),
        "scc_cpu_label_parseval_softmax_backward": (
            [i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_float, ptr, threads],
            None,
        ),
    }
    for name, (argtypes, restype) in functions.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, restype
    _loaded[path] = library
    return library


def _library() -> ctypes.CDLL | None:
    if os.environ.get(SWITCH) == "0":
        return None
    path = library_path()
    return None if path is None else _load(path)


def available() -> bool:
    """Built for this machine and loadable, and not switched off (SCC_KERNELS_CPU_KERNELS=0)."""
    return _library() is not None


def status() -> str:
    """For `info`: where the kernels are, or why they are not used."""
    if os.environ.get(SWITCH) == "0":
        return f"off ({SWITCH}=0)"
    if available():
        return f"built: {library_path()}"
    if compiler() is None:
        return "unavailable: no C compiler"
    return "not built (python -m scc_kernels build-cpu)"


@TableCache
def chunk_bands(spatial: tuple[int, ...], num_bands: int) -> torch.Tensor:
    """(ceil(M / LANES),) int32: the band of the LANES consecutive half-grid bins of each chunk where
    they share one, else -1 (the last chunk too when it is partial): the kernels' vector steps."""
    band = half_grid_tables(spatial, num_bands, torch.device("cpu")).band32
    chunks = -(-band.numel() // LANES)
    padded = torch.cat([band, band.new_full((chunks * LANES - band.numel(),), -1)]).view(chunks, LANES)
    shared = (padded == padded[:, :1]).all(1)
    return torch.where(shared, padded[:, 0], -1).contiguous()


@TableCache
def mirror_pairs(spatial: tuple[int, ...]) -> torch.Tensor:
    """(P, 2) int64: the half-grid bins m <= m' of the self-mirrored last-axis columns (0, and n/2
    for an even n) with m' at frequency -m (_spectra.make_hermitian's pairs)."""
    half = (*spatial[:-1], spatial[-1] // 2 + 1)
    index = torch.arange(math.prod(half)).view(half)
    columns = (0, spatial[-1] // 2) if spatial[-1] % 2 == 0 else (0,)
    other = tuple(range(len(spatial) - 1))
    pairs = torch.cat([torch.stack([index[..., c], mirror(index[..., c], other)], -1).view(-1, 2) for c in columns])
    return pairs[pairs[:, 0] <= pairs[:, 1]].contiguous()


def _call(name: str, *args: object) -> int | None:
    """The kernel `name` with `args` and the thread count: its status (None for a void kernel);
    MemoryError where it reports that its scratch could not be allocated (a negative status)."""
    library = _library()
    assert library is not None, "the CPU kernels are not loaded"
    status: int | None = getattr(library, name)(*args, torch.get_num_threads())
    if status is not None and status < 0:
        raise MemoryError(f"{name}: the CPU kernels could not allocate their scratch")
    return status


def _pointer(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    assert tensor.is_contiguous() and tensor.device.type == "cpu", "the CPU kernels need contiguous CPU tensors"
    return tensor.data_ptr()


def amplitude_forward(
    S: torch.Tensor,
    D: torch.Tensor,
    base_is_x: torch.Tensor | None,
    planes: torch.Tensor,
    spatial: tuple[int, ...],
    num_bands: int,
) -> torch.Tensor:
    """STATS (rows, K, 8) of the amplitude spectrum from S, D (rows, M, 2) float32 (_spectra.py),
    which it makes Hermitian in place (_spectra.make_hermitian), and S becomes X in place (S + D
    where the base is y); planes (2, rows, M) out: v and d (u = |X| is not stored)."""
    rows, bins = S.shape[:2]
    tables = half_grid_tables(spatial, num_bands, torch.device("cpu"))
    flags = None if base_is_x is None else base_is_x.reshape(rows).contiguous().view(torch.uint8)  # bool: 0 or 1
    stats = S.new_empty((rows, num_bands, 8))
    pairs = mirror_pairs(spatial)
    band_tables = (tables.band32, tables.weight, chunk_bands(spatial, num_bands), pairs)
    _call(
        "scc_cpu_amplitude_forward", rows, bins, *map(_pointer, (S, D, flags, *planes, *band_tables)), len(pairs),
        num_bands, _pointer(tables.counts), _pointer(stats),
    )  # fmt: skip
    return stats


def amplitude_backward(
    coefficients: torch.Tensor, X: torch.Tensor, planes: torch.Tensor, spatial: tuple[int, ...], out: torch.Tensor
) -> None:
    """Each bin's gradient into out (rows, M, 2) from COEFFICIENTS (rows, K, 7) float32, the saved
    X (rows, M, 2) and planes (2, rows, M) of `amplitude_forward`."""
    rows, bins = X.shape[:2]
    num_bands = coefficients.shape[1]
    band = half_grid_tables(spatial, num_bands, torch.device("cpu")).band32
    pointers = map(_pointer, (X, *planes, band, chunk_bands(spatial, num_bands)))
    _call("scc_cpu_amplitude_backward", rows, bins, *pointers, num_bands, _pointer(coefficients), _pointer(out))


def label_counts(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, C) int64: how many samples of each label map (B, N) int64 (checked) hold each class."""
    counts = labels.new_empty((labels.shape[0], classes))
    _call("scc_cpu_label_counts", labels.shape[0], classes, labels.shape[1], _pointer(labels), _pointer(counts))
    return counts


def label_signals(
    p: torch.Tensor, labels: torch.Tensor, offset: int, bounded: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(base is x, base, x − y) for channels offset: of p (n, C, *S) float32, the activation's
    output (`bounded`, in [0, 1]) or the input, and a checked label map (n, N) int64: per slice
    (n, C − offset) bool, _spectra.base_is_prediction's choice; the base (n, C − offset, *S), or
    None where it is x in every slice; x − y, (n, C − offset, *S)."""
    batch, classes, *spatial = p.shape
    base_is_x = torch.empty((batch, classes - offset), dtype=torch.uint8)
    difference = p.new_empty((batch, classes - offset, *spatial))
    base = torch.empty_like(difference)  # not touched unless some slice's base is y: no pages mapped
    pointers = (_pointer(p), _pointer(labels), int(bounded), *map(_pointer, (base_is_x, base, difference)))
    written = _call("scc_cpu_label_signals", batch, classes, offset, math.prod(spatial), *pointers)
    return base_is_x.view(torch.bool), base if written else None, difference  # 0 or 1: valid bools


def softmax_backward(p: torch.Tensor, grad_p: torch.Tensor, offset: int, out: torch.Tensor) -> None:
    """The softmax's backward over dim 1 into out (B, C, *S) float32: p its output, grad_p the
    gradient of channels offset: (B, C − offset, *S) (0 below offset)."""
    batch, classes = p.shape[:2]
    _call("scc_cpu_softmax_backward", batch, classes, offset, p[0, 0].numel(), *map(_pointer, (p, grad_p, out)))


def label_parseval_sums(p: torch.Tensor, labels: torch.Tensor, offset: int) -> torch.Tensor:
    """_stats.PARSEVAL_SUMS (B, C − offset, 6) float64 of channels offset: of the activated
    prediction p (B, C, *S) float32 and a checked label map (B, N) int64."""
    batch, classes = p.shape[:2]
    sums = p.new_empty((batch, classes - offset, 6), dtype=torch.float64)
    pointers = map(_pointer, (p, labels, sums))
    _call("scc_cpu_label_parseval_sums", batch, classes, offset, p[0, 0].numel(), *pointers)
    return sums


def label_parseval_backward(
    p: torch.Tensor, labels: torch.Tensor, coefficients: torch.Tensor, softmax: bool
) -> torch.Tensor:
    """The Parseval sums' gradient from COEFFICIENTS (B, C', 7) float32, p (B, C, *S) and the label
    map (B, N) of `label_parseval_sums`: w.r.t. the logits (B, C, *S) through the softmax whose
    output p is (`softmax`, one pass), else w.r.t. p of channels C − C' onwards, (B, C', *S)."""
    batch, classes, *spatial = p.shape
    channels = coefficients.shape[1]
    n = math.prod(spatial)
    if softmax:
        name, out = "scc_cpu_label_parseval_softmax_backward", torch.empty_like(p)
    else:
        name, out = "scc_cpu_label_parseval_gradient", p.new_empty((batch, channels, *spatial))
    pointers = [_pointer(p), _pointer(labels), _pointer(coefficients)]
    _call(name, batch, classes, classes - channels, n, *pointers, math.sqrt(n), _pointer(out))
    return out
