"""Compile every Triton kernel for sm_90 and sm_80 without a GPU (run by test_triton_compile.py).

The interpreter runs the kernels' logic on the CPU but never lowers them; this lowers them to
PTX and cubin with Triton's own ptxas, which catches layout, type and resource errors that only
a GPU compile would show. Run without TRITON_INTERPRET (the interpreter replaces the kernels).
"""

import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from scc_kernels.backends import triton_dft, triton_fft, triton_kernels


def compile_kernel(kernel, types, constexprs, capability, num_warps=4):
    """Shared memory (bytes) of `kernel` compiled for sm_<capability>; `types` names the type of each
    pointer and of each scalar that is not i32."""
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in kernel.arg_names}
    indices = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    source = ASTSource(kernel, signature, constexprs=indices)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
    return compiled.metadata.shared


def parseval_cases():
    for capability, dtype, label_map in itertools.product((90, 80), ("fp32", "bf16"), (True, False)):
        types = dict(
            logits_ptr=f"*{dtype}",
            target_ptr="*u8" if label_map else "*fp32",
            partial_ptr="*fp32",
            coefficients_ptr="*fp32",
            grad_ptr=f"*{dtype}",
            root_n="fp32",
        )
        constexprs = dict(BLOCK_C=4, BLOCK_N=2048, OFFSET=1, ACTIVATION=1, LABEL_MAP=label_map, HAS_IGNORE=label_map)
        for kernel in (triton_kernels._parseval_forward_kernel, triton_kernels._parseval_backward_kernel):
            yield kernel, types, constexprs, capability, 8


def dft_cases():
    for (spatial, dtype), capability in itertools.product(
        [((512, 512), "fp32"), ((128, 128, 128), "fp32"), ((511, 509), "bf16")], (90, 80)
    ):
        plan = triton_dft._plan(spatial)
        constexprs = dict(
            ACTIVATION=1,
            LABEL_MAP=True,
            HAS_IGNORE=True,
            AMPLITUDE=True,
            THREE_D=plan.three_d,
            PRECISION="tf32x3" if dtype == "fp32" else "tf32",
            **plan.blocks._asdict(),
        )
        types = dict(
            x_ptr=f"*{dtype}",
            t_ptr="*i64",
            tw_d="*fp32",
            tw_h="*fp32",
            tw_w="*fp32",
            band_ptr="*i32",
            herm_ptr="*fp32",
            base_ptr="*i1",
            out_ptr="*fp32",
            coefficients_ptr="*fp32",
            acc_ptr="*fp32",
            ignore_index="i64" if dtype == "bf16" else "i32",
        )
        for kernel in (triton_dft._forward_kernel, triton_dft._backward_kernel):
            yield kernel, types, constexprs, capability, 4
    finish = dict(x_ptr="*bf16", t_ptr="*i64", acc_ptr="*fp32", out_ptr="*bf16", ignore_index="i64")
    yield triton_dft._finish_kernel, finish, dict(ACTIVATION=1, HAS_IGNORE=True, BLOCK=1024), 90, 4


def fft_cases():
    block = dict(BLOCK=triton_fft.BLOCK)
    for capability in (90, 80):
        # softmax of float32 logits against a label map with ignore_index; sigmoid of bf16 against a dense target
        for dtype, target, constexprs in [
            ("fp32", "*i64", dict(ACTIVATION=1, LABEL_MAP=True, HAS_IGNORE=True)),
            ("bf16", "*fp32", dict(ACTIVATION=2, LABEL_MAP=False, HAS_IGNORE=False)),
        ]:
            types = dict(
                x_ptr=f"*{dtype}",
                t_ptr=target,
                base_ptr="*i1",
                base_out_ptr="*fp32",
                difference_out_ptr="*fp32",
                ignore_index="i64",
            )
            yield triton_fft._signals_kernel, types, {**constexprs, **block}, capability, 4
        types = dict(
            s_ptr="*fp32",
            d_ptr="*fp32",
            base_ptr="*i1",
            band_ptr="*i32",
            herm_ptr="*fp32",
            out_ptr="*fp32",
            coefficients_ptr="*fp32",
            grad_ptr="*fp32",
        )
        for kernel, amplitude in itertools.product((triton_fft._stats_kernel, triton_fft._grad_kernel), (True, False)):
            yield kernel, types, dict(AMPLITUDE=amplitude, **block), capability, 4


if __name__ == "__main__":
    for kernel, types, constexprs, capability, warps in [*parseval_cases(), *dft_cases(), *fft_cases()]:
        shared = compile_kernel(kernel, types, constexprs, capability, warps)
        print(
            f"sm_{capability} {kernel.fn.__name__:<28} {next(iter(types.values()))} shared memory {shared} B",
            flush=True,
        )
