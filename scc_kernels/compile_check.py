"""`python -m scc_kernels compile-check`: every kernel compiled for a GPU target, without a GPU.

Triton: the variants the host functions launch on the headline problems (recorded on meta
tensors), compiled through Triton's own launch path for sm_90/sm_80; registers and spills from
cuobjdump, shared memory from the metadata, approximate arithmetic and atomics from the PTX.
csrc: ptxas' report. Exit status 1 on a compile error or too much shared memory. Run without
TRITON_INTERPRET. How and why: docs/compile-check.md.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HEADLINE_SHAPES = ((16, 4, 512, 512), (16, 4, 256, 256), (2, 4, 128, 128, 128))
# (compute capability, shared memory per block, per SM, registers per SM, warps per SM)
TARGETS = {
    "sm_90": (90, 227 * 1024, 228 * 1024, 65536, 64),
    "sm_80": (80, 163 * 1024, 164 * 1024, 65536, 64),
}
IGNORE_INDEX = 255
# PTX instructions that the interpreter does not reproduce, and the atomics' ordering
PTX_PATTERNS = {
    "sqrt.approx": r"\bsqrt\.approx",
    "div.full": r"\bdiv\.(full|approx)",
    "ex2.approx": r"\bex2\.approx",
    "atomic acq_rel": r"\b(atom|red)\.[\w.]*acq_rel",
    "atomic relaxed": r"\b(atom|red)\.[\w.]*relaxed",
}


# ----------------------------------------------------------------------------------------------
# what the triton host code launches


@dataclasses.dataclass(frozen=True)
class Variant:
    """One Triton specialization: kernel, its arguments (tensors as dtypes), the launch options."""

    module: str
    kernel: str
    args: tuple  # (name, value) in parameter order: torch dtypes for tensors
    options: tuple  # (name, value): num_warps, num_stages

    def describe(self) -> str:
        shown = [f"{k}={v}" for k, v in self.args if isinstance(v, (str, bool)) or k.isupper()]
        dtypes = [str(v).replace("torch.", "") for k, v in self.args[:2] if not isinstance(v, int)]
        return " ".join(dtypes + shown)


def _specialization(value):
    """What Triton specializes an argument on (ints: the value 1, divisibility by 16, range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return ("one" if value == 1 else "d16" if value % 16 == 0 else "int", -(2**31) <= value < 2**31)


def record_launches(shapes=HEADLINE_SHAPES, device="meta") -> dict[tuple, Variant]:
    """Every distinct Triton launch of the triton host functions on `shapes` (docs/compile-check.md)."""
    import torch
    from triton.runtime.jit import JITFunction

    from .backends import dft_tiles, triton_dft, triton_fft, triton_parseval
    from .backends.registry import Problem

    launches: dict[tuple, Variant] = {}

    def record(kernel, *args, grid, warmup, **kwargs):
        names = kernel.arg_names
        bound = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
        options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in names))
        values = []
        for name in names:
            value = bound[name]
            if isinstance(value, torch.Tensor):
                value = value.dtype
            values.append((name, value))
        variant = Variant(kernel.fn.__module__, kernel.fn.__name__, tuple(values), options)
        key = (variant.kernel, tuple((k, _specialization(v)) for k, v in values), options)
        launches.setdefault(key, variant)

    original = JITFunction.run
    JITFunction.run = record
    try:
        for shape in shapes:
            batch, channels, *spatial = shape
            for dtype, activation, label_map in _product(
                (torch.float32, torch.bfloat16), ("softmax", "sigmoid"), (True, False)
            ):
                input = torch.zeros(shape, dtype=dtype, device=device)
                if label_map:
                    target = torch.zeros((batch, *spatial), dtype=torch.int64, device=device)
                else:
                    target = torch.zeros(shape, dtype=torch.float32, device=device)
                for spectrum, bands in (("complex", 1), ("amplitude", 1), ("amplitude", 4)):
                    ignore_index = IGNORE_INDEX if label_map else None
                    if spectrum == "complex" and bands == 1:
                        problem = Problem(spectrum, bands, activation, ignore_index, False, "parseval")
                        stats = triton_parseval.parseval_band_stats(input, target, problem)
                        coefficients = torch.zeros((batch, channels - 1, 7), device=device)
                        triton_parseval.parseval_backward(coefficients, input, target, problem)
                        continue
                    for path in (triton_dft, triton_fft):
                        if path is triton_dft and not dft_tiles.supported(tuple(spatial)):
                            continue
                        name = "dft" if path is triton_dft else "fft"
                        problem = Problem(spectrum, bands, activation, ignore_index, False, name)
                        stats, *saved = path.band_stats(input, target, problem)
                        grad_stats = torch.ones_like(stats)
                        path.band_stats_backward(grad_stats, stats, input, target, saved, problem)
    finally:
        JITFunction.run = original
    return launches


def _product(*choices):
    import itertools

    return itertools.product(*choices)


# ----------------------------------------------------------------------------------------------
# compiling one Triton variant (in a worker process)


class _TargetDriver:
    """What JITFunction.run asks the active driver for when it only compiles (warmup)."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _cuobjdump() -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


def _resource_usage(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the one kernel in `cubin` (cuobjdump -res-usage)."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", report)}


def compile_variant(variant: Variant, arch: str) -> dict:
    """Compile `variant` for `arch` through JITFunction.warmup; its resources, or its error."""
    from triton.runtime import driver

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # triton 3.9's notice, once per process
    row: dict[str, Any] = dict(kernel=variant.kernel, variant=variant.describe(), options=dict(variant.options))
    try:
        kernel = getattr(importlib.import_module(variant.module), variant.kernel)
        driver.set_active(_TargetDriver(TARGETS[arch][0]))
        start = time.perf_counter()
        compiled = kernel.warmup(*[v for _, v in variant.args], grid=(1,), **dict(variant.options))
        row["seconds"] = time.perf_counter() - start
        usage = _resource_usage(compiled.asm["cubin"])
        ptx = compiled.asm["ptx"]
        row.update(
            warps=compiled.metadata.num_warps,
            shared=compiled.metadata.shared,
            registers=usage.get("REG"),
            stack=usage.get("STACK"),
            local=usage.get("LOCAL"),
            ptx={name: len(re.findall(pattern, ptx)) for name, pattern in PTX_PATTERNS.items()},
        )
    except Exception as error:  # reported in the table; the exit status says it failed
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"[:300]
    return row


# ----------------------------------------------------------------------------------------------
# csrc


def csrc_report(arch: str) -> list[dict]:
    """ptxas' registers, spills, stack and shared memory per kernel of csrc/launchers.cu."""
    from .backends._sources import csrc_dir

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return [dict(kernel="csrc (all)", error="no nvcc on PATH: csrc not checked")]
    with tempfile.TemporaryDirectory() as folder:
        command = [nvcc, "-std=c++17", "-O3", "-Xptxas", "-v", f"-arch={arch}", "-c"]
        command += [str(csrc_dir() / "launchers.cu"), "-o", str(Path(folder) / "launchers.o")]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return [dict(kernel="csrc/launchers.cu", error=result.stderr.strip()[-300:])]
    rows, row = [], None
    for line in result.stderr.splitlines():
        if match := re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line):
            row = dict(kernel=_demangle(match.group(1)), warps=None, registers=None, stack=0, spills=0, shared=0)
            rows.append(row)
        elif row is not None and (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)):
            row["stack"], row["spills"] = int(match.group(1)), int(match.group(2))
        elif row is not None and (match := re.search(r"Used (\d+) registers", line)):
            row["registers"] = int(match.group(1))
            if smem := re.search(r"(\d+) bytes smem", line):
                row["shared"] = int(smem.group(1))
    return rows


def _demangle(name: str) -> str:
    tool = shutil.which("c++filt")
    if tool is None:
        return name
    text = subprocess.run([tool, name], capture_output=True, text=True).stdout.strip() or name
    # void scc::activate_kernel<float, long long>(const float*, ...) → activate_kernel<float, long long>
    return re.sub(r"^(void )?scc::", "", text.split("(")[0])


# ----------------------------------------------------------------------------------------------
# the table


def _blocks_per_sm(arch: str, warps: int | None, registers: int | None, shared: int | None) -> int | None:
    """Resident blocks per SM from registers (allocated per warp in units of 256), warps and shared memory."""
    if not warps or registers is None:
        return None
    _, _, shared_per_sm, registers_per_sm, warps_per_sm = TARGETS[arch]
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    limits = [registers_per_sm // (per_warp * warps), warps_per_sm // warps, 32]
    if shared:
        limits.append(shared_per_sm // (shared + 1024))  # 1 KiB reserved per block
    return min(limits)


def format_table(arch: str, rows: list[dict]) -> str:
    limit = TARGETS[arch][1]
    header = (
        "| kernel | variant | warps | shared B | regs | stack/local B | blocks/SM (occupancy) "
        "| PTX approx/atomics | error |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        blocks = _blocks_per_sm(arch, row.get("warps"), row.get("registers"), row.get("shared"))
        occupancy = f"{blocks} ({100 * blocks * row['warps'] / TARGETS[arch][4]:.0f} %)" if blocks else ""
        ptx = ", ".join(f"{k} {v}" for k, v in row.get("ptx", {}).items() if v)
        spills = row.get("local") if "local" in row else row.get("spills")
        stack = f"{row.get('stack', '')}/{spills if spills is not None else ''}"
        error = row.get("error", "")
        if (row.get("shared") or 0) > limit:
            error = (error + f" shared memory over {arch}'s {limit} B per block").strip()
        cells = [
            row["kernel"],
            row.get("variant", ""),
            row.get("warps") or "",
            row.get("shared", ""),
            row.get("registers", ""),
            stack,
            occupancy,
            ptx,
            error,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def failed(arch: str, rows: list[dict]) -> bool:
    return any("error" in row or (row.get("shared") or 0) > TARGETS[arch][1] for row in rows)


def run(archs=("sm_90",), shapes=HEADLINE_SHAPES, jobs: int | None = None, csrc: bool = True, kernels=None) -> int:
    """Record, compile and print (only the Triton `kernels` named, if given); 1 on a compile error or
    shared memory over the limit."""
    start = time.perf_counter()
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # a clean process for everything that imports triton: the interpreter must be off before triton loads
    context = multiprocessing.get_context("spawn")
    jobs = jobs or os.cpu_count() or 1
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            launches = pool.submit(record_launches, tuple(shapes)).result()
            variants = sorted(launches.values(), key=lambda v: (v.kernel, v.describe()))
            variants = [v for v in variants if kernels is None or v.kernel in kernels]
            print(
                f"compile-check: {len(variants)} Triton variants launched by the host code on "
                f"{', '.join('x'.join(map(str, s)) for s in shapes)} "
                f"(recorded in {time.perf_counter() - start:.0f} s); compiling in {jobs} processes",
                flush=True,
            )
            futures = {arch: [pool.submit(compile_variant, v, arch) for v in variants] for arch in archs}
            status = 0
            for arch in archs:
                rows = [future.result() for future in futures[arch]]
                if csrc:
                    rows += csrc_report(arch)
                print(f"\n## {arch}\n\n{format_table(arch, rows)}\n", flush=True)
                status |= failed(arch, rows)
                _summary(arch, rows)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"compile-check: {'FAILED' if status else 'ok'} in {time.perf_counter() - start:.0f} s", flush=True)
    return int(status)


def _summary(arch: str, rows: list[dict]) -> None:
    worst: collections.defaultdict[str, tuple[int, int]] = collections.defaultdict(lambda: (0, 0))
    for row in rows:
        if row.get("registers") is not None:
            regs, stack = worst[row["kernel"]]
            worst[row["kernel"]] = (max(regs, row["registers"]), max(stack, row.get("stack") or 0))
    print(
        f"{arch}: max registers / stack bytes per kernel: " + ", ".join(f"{k} {r}/{s}" for k, (r, s) in worst.items())
    )


if __name__ == "__main__":
    sys.exit(run())
