"""`python -m scc_kernels compile-check` (scc_kernels/compile_check.py): every kernel compiled for
sm_90 here, without a GPU, through Triton's own launch path and nvcc/ptxas.

The second test is SLOW (the whole headline set: ~120 Triton variants, the DFT's tf32x3 kernels
taking most of it, plus csrc; ~15 minutes on 2 busy cores, about 1 on 16): it is what CI runs to
keep the kernels within sm_90's resources.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the triton extra is not installed")
pytestmark = pytest.mark.slow  # compiles with Triton's GPU compiler and ptxas

TRITON_KERNELS = {
    "_parseval_forward_kernel",
    "_parseval_backward_kernel",
    "_forward_kernel",
    "_backward_kernel",
    "_finish_kernel",
    "_signals_kernel",
    "_stats_kernel",
    "_grad_kernel",
}


def compile_check(*args: str, timeout: int) -> tuple[int, str, dict[str, list[list[str]]]]:
    """(exit status, output, table rows by kernel: the cells after the kernel's name)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "scc_kernels", "compile-check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rows: dict[str, list[list[str]]] = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 9 and cells[0] not in ("kernel", ""):
            rows.setdefault(cells[0], []).append(cells[1:])
    return result.returncode, result.stdout + result.stderr[-3000:], rows


def test_statistics_compile_to_correctly_rounded_sqrt_and_division():
    """The interpreter rounds sqrt and division correctly; compiled `tl.sqrt` and `/` would be
    sqrt.approx and div.full (2 ulp). The FFT path's statistics kernels hold nothing else."""
    status, output, rows = compile_check(
        "--shapes", "2x3x33x31", "--kernels", "_stats_kernel", "_grad_kernel", "--no-csrc", "--jobs", "2", timeout=900
    )
    assert status == 0, output
    assert set(rows) == {"_stats_kernel", "_grad_kernel"}, output
    for kernel, variants in rows.items():
        for variant in variants:
            ptx = variant[6]
            assert "sqrt.approx" not in ptx and "div.full" not in ptx, (kernel, variant)


def test_every_kernel_fits_sm90_on_the_headline_problems():
    """SLOW. Every variant the host code launches compiles; no spills in Triton kernels, the
    Parseval kernels leave room for several blocks per SM, the DFT's atomics are relaxed."""
    status, output, rows = compile_check("--arch", "sm_90", timeout=3600)
    assert status == 0, output
    assert set(rows) >= TRITON_KERNELS, output
    assert any(kernel.startswith("activate_kernel<") for kernel in rows), output  # csrc, through ptxas
    for kernel in TRITON_KERNELS:
        for variant in rows[kernel]:
            stack, blocks, ptx, error = variant[4:]
            assert not error, (kernel, variant)
            # no spills: at most the 8-16 B of stack frame the 3D float32 (tf32x3) DFT kernels keep (was ~500)
            assert int(stack.split("/")[0]) <= 16 and stack.endswith("/0"), (kernel, variant)
            assert "acq_rel" not in ptx, (kernel, variant)
            if kernel.startswith("_parseval"):
                assert int(blocks.split()[0]) >= 4, (kernel, variant)
    for kernel, variants in rows.items():
        if kernel.startswith("activate_kernel<"):
            assert all(variant[4].endswith("/0") for variant in variants), (kernel, variants)  # no spill stores
