"""scc_kernels.plan (module scc_kernels.planning): the cost model's arithmetic, its picks on the
spec-sheet profiles, autotuning's cache, and `auto` on CUDA following the plan (all without a GPU:
the profiles are data)."""

import dataclasses
import json

import pytest
import torch

import scc_kernels
from scc_kernels import planning
from scc_kernels.backends import resolve


def test_profiles_are_spec_sheet_data():
    assert set(planning.PROFILES) >= {"H100", "H200", "A100"}
    h100, h200, a100 = (planning.PROFILES[name] for name in ("H100", "H200", "A100"))
    assert h200.dram_gbps / h100.dram_gbps == pytest.approx(4800 / 3350)  # same chip, faster memory
    assert h200.tf32_tflops == h100.tf32_tflops > a100.tf32_tflops


def test_terms_are_bytes_over_bandwidth_flops_over_rate_launches_times_cost():
    profile = planning.Profile("test", dram_gbps=1000, fp32_tflops=10, tf32_tflops=100, torch_op_us=8)
    candidate = planning.Candidate(
        "torch", "fft", bytes=2e9, fp32_flops=3e9, tensor_flops=4e10, launches=5, launch_us=8
    )
    timed = planning._timed(candidate, profile)
    assert timed.memory_ms == pytest.approx(2.0)  # 2 GB at 1000 GB/s
    assert timed.compute_ms == pytest.approx(0.3 + 0.4)  # 3 GFLOP at 10 TFLOP/s + 40 GFLOP at 100
    assert timed.launch_ms == pytest.approx(0.04)
    assert timed.modeled_ms == pytest.approx(2.74)


def test_io_bytes_by_hand():
    # 2×3×4×5 float32 logits (480 B) read twice and the gradient written once, int64 labels read twice
    problem = planning.Problem((2, 3, 4, 5))
    assert planning._io_bytes(problem) == 3 * 480 + 2 * 20 * 8


@pytest.mark.parametrize("gpu", ["H200", "H100", "A100"])
def test_picks_on_the_headline_shapes(gpu):
    parseval = planning.plan((16, 4, 512, 512), spectrum="complex", gpu=gpu)
    assert parseval.path == "parseval" and parseval.backend in ("cuda", "triton")
    big_3d = planning.plan((2, 4, 128, 128, 128), spectrum="amplitude", gpu=gpu)
    assert big_3d.path == "fft"  # the DFT's ~1000x FLOPs lose to cuFFT there
    dft = next(c for c in big_3d.candidates if c.path == "dft")
    assert dft.compute_ms > 10 * big_3d.candidates[0].modeled_ms
    # every candidate but the pick is listed, fastest modeled first, with its terms
    times = [c.modeled_ms for c in big_3d.candidates]
    assert times == sorted(times) and {"reference", "torch", "cuda", "triton"} <= {c.backend for c in big_3d.candidates}


def test_small_2d_problems_go_to_the_fused_dft_unless_deterministic():
    small = planning.plan((8, 4, 64, 64), spectrum="amplitude", bands=4, gpu="H200")
    assert (small.backend, small.path) == ("triton", "dft")
    deterministic = planning.plan((8, 4, 64, 64), spectrum="amplitude", bands=4, gpu="H200", deterministic=True)
    assert deterministic.path != "dft"


def test_the_table_names_every_candidate_and_the_pick():
    text = str(planning.plan((2, 4, 128, 128, 128), gpu="H200"))
    assert "NVIDIA H200" in text and "pick: cuda / fft" in text and "triton     dft" in text


def test_bad_arguments():
    with pytest.raises(ValueError, match="gpu must be one of"):
        planning.plan((2, 3, 8, 8), gpu="V100")
    with pytest.raises(ValueError, match="input_shape"):
        planning.plan((2, 3))
    with pytest.raises(ValueError, match="bands"):
        planning.plan((2, 3, 8, 8), bands=0, gpu="H200")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            planning.plan((2, 3, 8, 8))


def test_autotune_times_once_and_caches_in_the_process_and_on_disk(monkeypatch, tmp_path):
    cache = tmp_path / "autotune.json"
    monkeypatch.setenv("SCC_KERNELS_CACHE", str(cache))
    monkeypatch.setattr(planning, "_measured", {})
    calls = []

    def fake_time(problem, candidate, device, repeats=5):
        calls.append(candidate.path)
        return {"fft": 2.0, "dft": 1.0}[candidate.path]

    monkeypatch.setattr(planning, "_time_candidate", fake_time)
    problem = planning.Problem((2, 3, 16, 16))
    candidates = [c for c in planning._costs(problem, planning.PROFILES["H200"]) if c.backend == "triton"]
    cpu = torch.device("cpu")
    first = planning._autotune(problem, candidates, cpu)
    assert first == {"triton/fft": 2.0, "triton/dft": 1.0} and len(calls) == 2
    assert planning._autotune(problem, candidates, cpu) == first and len(calls) == 2  # the process cache
    monkeypatch.setattr(planning, "_measured", {})
    assert planning._autotune(problem, candidates, cpu) == first and len(calls) == 2  # the disk cache
    assert list(json.loads(cache.read_text()).values()) == [first]


def test_timing_a_candidate_runs_forward_and_backward():
    problem = planning.Problem((2, 3, 16, 15))
    candidate = planning.Candidate("torch", "fft", 0, 0, 0, 0, 0)
    assert planning._time_candidate(problem, candidate, torch.device("cpu"), repeats=2) > 0


def test_auto_on_cuda_follows_the_plan(monkeypatch):
    picked = dataclasses.make_dataclass("Picked", ["backend"])("cuda")
    seen = {}

    def fake_plan(shape, **options):
        seen.update(shape=shape, **options)
        return picked

    monkeypatch.setattr(planning, "cached_plan", fake_plan)
    monkeypatch.delenv("SCC_KERNELS_BACKEND", raising=False)
    problem = ((2, 4, 64, 64), "amplitude", 4, True)
    assert resolve("auto", torch.device("cuda"), torch.float32, problem) == "cuda"
    assert seen["shape"] == (2, 4, 64, 64) and seen["bands"] == 4 and seen["dtype"] == torch.float32
    assert resolve("auto", torch.device("cpu"), torch.float32, None) == "torch"
    assert scc_kernels.plan is planning.plan  # the function, at the top level


def test_plan_command_prints_the_table(capsys):
    import scc_kernels.__main__ as cli

    assert cli.main(["plan", "2x4x128x128x128", "16x4x512x512", "--spectrum", "amplitude", "--gpu", "H200"]) == 0
    out = capsys.readouterr().out
    assert out.count("pick: cuda / fft") == 2 and "2x4x128x128x128" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "2x4x8x8", "--gpu", "H200", "--autotune"], "leave out --gpu"),
        (["plan", "2x4", "--gpu", "H200"], "not a shape"),
    ],
)
def test_plan_command_usage_errors(argv, message, capsys):
    import scc_kernels.__main__ as cli

    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "shape, spectrum, bands",
    [((2, 3, 24, 40), "amplitude", 1), ((16, 4, 256, 256), "amplitude", 4), ((2, 2, 12, 10, 14), "complex", 3)],
)
def test_triton_path_decides_on_symbolic_sizes_on_cuda(shape, spectrum, bands, monkeypatch):
    """torch.compile(dynamic=True) and opcheck trace the triton op with fake tensors whose sizes are
    SymInts: on CUDA its path decision takes them (no `unhashable type: SymInt` from the path cache),
    decides as for the concrete shape, and guards the graph on the sizes it decided on. Imitated
    here: fake CUDA tensors with symbolic sizes, and the H100 profile for the device."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    pytest.importorskip("triton", reason="the triton backend needs triton")
    monkeypatch.setattr(planning, "_profile_name", lambda device: "H100")
    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env)
    symbolic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * len(shape))
    sizes = mode.from_tensor(torch.empty(shape), symbolic_context=symbolic).shape
    assert all(isinstance(size, torch.SymInt) for size in sizes)
    with mode:
        logits = torch.empty(sizes, device="cuda")
        labels = torch.empty((sizes[0], *sizes[2:]), dtype=torch.long, device="cuda")
        outputs = torch.ops.scc_kernels.band_stats(logits, labels, "triton", spectrum, bands, "softmax", None, True)
    concrete = planning.triton_path(shape, spectrum, bands, torch.float32, True, torch.device("cuda"))
    saved_by_path = {"dft": 1, "fft": 2}  # triton_backend.saved_path: the forward's saved tensors
    assert len(outputs) - 1 == saved_by_path[concrete]
    assert tuple(outputs[0].shape[:3]) == (*shape[:2], bands)
    decided_on = [shape_env.replace(size.node.expr) for size in sizes]  # each size guarded to its value
    assert decided_on == list(shape)
