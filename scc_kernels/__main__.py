"""python -m scc_kernels [info | verify | bench | plan | build-cpu | compile-check | nnunet-install]; none: the main job

`cli()` is the command line (`python -m scc_kernels`, the `scc-kernels` script); `main(argv)` runs
one command from Python and never restarts the process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time

import torch

import scc_kernels
from scc_kernels.backends import _cpu_kernels
from scc_kernels.backends._cuda_build import build_status
from scc_kernels.backends.registry import FAST_BACKENDS, NAMES, unavailable_reason
from scc_kernels.cost_model import PROFILES
from scc_kernels.integrations import nnunet_install
from scc_kernels.planning import _checked_shape


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as error:
        return f"not available ({type(error).__name__})"


def info(_args=None) -> int:
    print(f"scc_kernels {scc_kernels.__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"torch {torch.__version__}  triton {_version('triton')}  cupy {_version('cupy')}  numpy {_version('numpy')}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            memory_gib = props.total_memory / 2**30
            print(
                f"cuda:{i} {props.name}, {memory_gib:.0f} GiB, sm_{props.major}{props.minor}, CUDA {torch.version.cuda}"
            )
    else:
        print(
            f"no CUDA device; {os.cpu_count()} CPU cores"
            + (", triton runs interpreted" if os.environ.get("TRITON_INTERPRET") == "1" else "")
        )
    print("backends:")
    for name, entry in scc_kernels.available_backends().items():
        status = "available" if entry["available"] else f"unavailable: {entry['reason']}"
        if name == "cuda":
            status += f" [{build_status()}]"
        if name == "torch":
            status += f" [CPU kernels: {_cpu_kernels.status()}]"
        print(f"  {name:<10} {status}")
    return 0


def build_cpu(args) -> int:
    start = time.perf_counter()
    try:
        path = _cpu_kernels.build(verbose=args.verbose)
    except RuntimeError as error:
        print(f"build-cpu: {error}", file=sys.stderr)
        return 1
    print(
        f"CPU kernels: {path} ({time.perf_counter() - start:.1f} s). On a CPU, the torch backend now runs the "
        f"amplitude spectrum's per-bin work and a label map's complex sums in them (float32; "
        f"{_cpu_kernels.SWITCH}=0 turns them off)"
    )
    return 0


def verify(args) -> int:
    from scc_kernels import verify as checks

    device = _device()
    dtypes = [getattr(torch, name) for name in args.dtype]
    names = args.backend or None
    print(
        f"verify on {device} against the float64 reference, SPEC §4: per loss value |L - L64| <= "
        f"rtol*|L64| + {checks.LOSS_ATOL:g}, gradient of the mean loss |g - g64| <= rtol*|g64| + {checks.GRAD_ATOL:g}, "
        f"rtol = 1e-4 / 1e-3 (float32), 1e-2 (half types; the gradient's plus |half(g64) - g64|)"
    )
    print(
        "errors as fractions of that tolerance (<= 1 passes); the plain float32 reference is shown for "
        "comparison (SPEC does not require it to pass); NaN is allowed only where a float32 sum overflows"
    )
    start = time.perf_counter()
    results = checks.run(device, names, dtypes, seed=args.seed)
    comparison = checks.run(device, ["reference"], [d for d in dtypes if d == torch.float32], seed=args.seed)
    print(f"{'backend':<10} {'loss/tol':>9} {'grad/tol':>9} {'loss rel':>9} {'grad rel':>9}  result  case")
    for check in results + comparison:
        e = check.errors
        result = "nan ok" if e.overflow else "ok" if check.ok else "FAIL"
        name = check.backend
        if check in comparison:
            name, result = "ref f32", "(info)"
        print(
            f"{name:<10} {e.loss:>9.1e} {e.grad:>9.1e} {e.loss_rel:>9.1e} {e.grad_rel:>9.1e}  {result:<6}  {check.case}"
        )
    failed = sum(not c.ok for c in results)
    print(f"{len(results) - failed} passed, {failed} failed ({time.perf_counter() - start:.2f} s)")
    return 1 if failed else 0


def bench(args) -> int:
    from scc_kernels import bench
    from scc_kernels.timing import timing_method

    device = _device()
    names = args.backend or bench.timed_backends(device)
    shapes = args.shapes or (bench.QUICK_SHAPES if args.quick else bench.SHAPES)[device.type]
    gpu = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    )
    title = f"{time.strftime('%Y-%m-%d')} {gpu}, torch {torch.__version__}, triton {_version('triton')}"
    print(
        f"bench on {title}; median and 20th-80th percentiles (p20-p80) of {timing_method(device, args.repeats)} "
        "after warm-up; speed-up = reference fwd+bwd / fwd+bwd (medians)"
    )
    if device.type == "cpu" and "torch" in names:  # which of its paths the torch rows time
        paths = '"fused" and "fused-parseval"' if _cpu_kernels.available() else '"fft" and "parseval" (pure torch)'
        print(f"torch backend, paths {paths} (CPU kernels: {_cpu_kernels.status()})")
    floors = None
    if args.floors and device.type == "cuda":
        floors = bench.Floors.measure(device)
        print(f"floors: copy {floors.copy_gbps:.0f} GB/s, float32/TF32 matmul {floors.matmul_tflops:.3g} TFLOP/s")
    elif args.floors:
        print(
            f"floor: the transforms and activation each mode cannot avoid (softmax fwd+bwd, rfftn of prediction "
            f"and target, irfftn of the gradient; no transform for the complex spectrum with one band), timed "
            f"side by side with the rows on {torch.get_num_threads()} thread(s); x floor = fwd+bwd / floor"
        )
    print(bench.HEADER)
    rows = bench.run(
        names,
        device,
        shapes,
        modes=args.modes,
        repeats=args.repeats,
        memory=not args.no_memory,
        floors=floors,
        progress=lambda line: print(line, flush=True),
        measured_floor=args.floors and device.type != "cuda",
    )
    if args.csv:
        bench.write_csv(rows, args.csv)
    if args.png:
        bench.write_png(rows, args.png, title)
    return 0


def plan(args) -> int:
    for shape in args.shapes:
        print(
            scc_kernels.plan(
                shape,
                spectrum=args.spectrum,
                bands=args.bands,
                dtype=getattr(torch, args.dtype),
                gpu=args.gpu,
                deterministic=args.deterministic,
                autotune=args.autotune or None,
            )
        )
        print()
    return 0


# ----------------------------------------------------------------------------------------------
# arguments: every one checked before any work starts (a usage error, exit 2, one line)


def _shape(text: str) -> tuple[int, ...]:
    """'8x4x256x256' → (8, 4, 256, 256): batch, channels and 1 to 3 spatial sizes, all >= 1
    (scc_kernels.plan's check)."""
    try:
        return _checked_shape(tuple(int(size) for size in text.lower().split("x")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape BxCxS1[xS2[xS3]] of positive sizes, e.g. 8x4x256x256"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _seed(text: str) -> int:
    """A seed torch.Generator.manual_seed takes: an integer in [-2**63, 2**64)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in [-2**63, 2**64)")
    return value


def _check_backends(parser: argparse.ArgumentParser, names) -> None:
    for name in names or ():
        reason = unavailable_reason(name, _device())
        if reason is not None:
            parser.error(f"backend {name!r} cannot run here: {reason}")


def _check_output(parser: argparse.ArgumentParser, option: str, path: str | None) -> None:
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(path):
        parser.error(f"{option} {path}: cannot write there (no such writable folder, or a folder of that name)")


def _parser() -> argparse.ArgumentParser:
    from scc_kernels.bench import MODES

    parser = argparse.ArgumentParser(prog="python -m scc_kernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, devices, each backend and why it is unavailable")
    p_verify = sub.add_parser("verify", help="every available backend against the float64 reference")
    p_verify.add_argument("--backend", action="append", choices=NAMES, help="only this backend (repeatable)")
    p_verify.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    p_verify.add_argument("--seed", type=_seed, default=0, help="seed of the random inputs (default 0)")
    p_bench = sub.add_parser("bench", help="forward and forward+backward times next to the reference")
    p_bench.add_argument("--backend", action="append", choices=FAST_BACKENDS, help="only this backend (repeatable)")
    p_bench.add_argument("--quick", action="store_true", help="smaller default shapes")
    p_bench.add_argument("--shapes", nargs="+", type=_shape, help="e.g. 8x4x256x256 2x4x64x64x64")
    p_bench.add_argument(
        "--modes", nargs="+", default=["complex", "amplitude", "amplitude-4bands"], choices=list(MODES)
    )
    p_bench.add_argument("--repeats", type=_positive_int, default=10)
    p_bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p_bench.add_argument(
        "--floors",
        action="store_true",
        help="report time as a multiple of a floor: on a CPU the transforms and activation the mode cannot "
        "avoid, timed side by side; on a GPU bytes / copy bandwidth or DFT FLOPs / matmul rate",
    )
    p_bench.add_argument("--csv", help="write the table to this CSV file")
    p_bench.add_argument("--png", help="write a bar chart to this PNG file (matplotlib)")
    p_build = sub.add_parser(
        "build-cpu", help="compile the torch backend's fused CPU kernels for this machine (a C compiler, ~1 s)"
    )
    p_build.add_argument("--verbose", action="store_true", help="print the compiler command")
    p_plan = sub.add_parser("plan", help="the cost model's candidates and pick for a problem (scc_kernels.plan)")
    p_plan.add_argument("shapes", nargs="+", type=_shape, help="input shapes, e.g. 2x4x128x128x128")
    p_plan.add_argument("--spectrum", default="amplitude", choices=["amplitude", "complex"])
    p_plan.add_argument("--bands", type=_positive_int, default=None)
    p_plan.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p_plan.add_argument("--gpu", choices=sorted(PROFILES), help="a GPU profile (default: this machine's GPU)")
    p_plan.add_argument("--deterministic", action="store_true", help="leave out paths with float32 atomics")
    p_plan.add_argument("--autotune", action="store_true", help="also time every candidate on this GPU")
    p_compile = sub.add_parser(
        "compile-check",
        help="compile every Triton and csrc kernel for a GPU target without a GPU; registers, spills, shared memory",
    )
    p_compile.add_argument("--arch", nargs="+", default=["sm_90"], choices=["sm_90", "sm_80"])
    p_compile.add_argument("--shapes", nargs="+", type=_shape, help="problems (default: the headline shapes)")
    p_compile.add_argument("--jobs", type=_positive_int, help="compiling processes (default: every CPU core)")
    p_compile.add_argument("--no-csrc", action="store_true", help="leave out the csrc kernels (nvcc)")
    p_compile.add_argument("--kernels", nargs="+", help="only these Triton kernels, e.g. _stats_kernel")
    p_nnunet = sub.add_parser(
        "nnunet-install", help="let nnU-Net v2 find nnUNetTrainerSCC (nnUNetv2_train ... -tr nnUNetTrainerSCC)"
    )
    p_nnunet.add_argument("--uninstall", action="store_true", help="remove what nnunet-install wrote")
    return parser


def parse(argv=None) -> argparse.Namespace:
    """The command's arguments, all checked: a usage error (exit 2) before any work starts."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("verify", "bench"):
        _check_backends(parser, args.backend)
    if args.command == "bench":
        _check_output(parser, "--csv", args.csv)
        _check_output(parser, "--png", args.png)
        if args.png and importlib.util.find_spec("matplotlib") is None:
            parser.error("--png needs matplotlib: pip install matplotlib")
    if args.command == "plan" and args.gpu is None and not torch.cuda.is_available():
        parser.error("plan: no CUDA device here; name a GPU profile with --gpu " + "/".join(sorted(PROFILES)))
    if args.command == "plan" and args.autotune and args.gpu is not None:
        parser.error("plan --autotune times this machine's GPU: leave out --gpu")
    if args.command == "nnunet-install":
        reason = nnunet_install.unusable_reason()
        if reason is not None:
            parser.error(reason)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.command == "info":
        return info(args)
    if args.command == "verify":
        return verify(args)
    if args.command == "bench":
        return bench(args)
    if args.command == "plan":
        return plan(args)
    if args.command == "build-cpu":
        return build_cpu(args)
    if args.command == "compile-check":
        from scc_kernels import compile_check

        shapes = args.shapes or compile_check.HEADLINE_SHAPES
        return compile_check.run(args.arch, shapes, jobs=args.jobs, csrc=not args.no_csrc, kernels=args.kernels)
    if args.command == "nnunet-install":
        return nnunet_install.uninstall() if args.uninstall else nnunet_install.install()
    # the main job: the CPU kernels built where a C compiler is (and they are not switched off), info,
    # verify, and a short bench at training shapes (a CPU: bench.SHAPES, under a minute with verify on
    # 2 cores), with the speed-up over the reference and the multiple of the floor
    if _device().type == "cpu" and os.environ.get(_cpu_kernels.SWITCH) != "0" and _cpu_kernels.compiler() is not None:
        build_cpu(parse(["build-cpu"]))  # optional: where it fails, the pure-torch path runs (and info says why)
        print()
    status = info()
    print()
    status |= verify(parse(["verify"]))
    print()
    modes = ["--modes", "complex", "amplitude", "amplitude-4bands"]
    quick = ["--quick"] if _device().type == "cuda" else []
    status |= bench(parse(["bench", *quick, "--floors", "--repeats", "5", "--no-memory", *modes]))
    return status


def cli() -> None:
    """The command line. The one place that chooses Triton's mode: without a GPU the triton
    backend runs in Triton's interpreter, which triton reads when it is first imported, and
    importing scc_kernels (torch.library) already did; so the process starts again once, with
    TRITON_INTERPRET=1 (unless the caller set it either way)."""
    if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "scc_kernels", *sys.argv[1:]])
    sys.exit(main())


if __name__ == "__main__":
    cli()
