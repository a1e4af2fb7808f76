"""scc_kernels.plan (module scc_kernels.planning): the cost model's arithmetic, its picks on the
spec-sheet profiles, autotuning's cache, and `auto` on CUDA following the plan (all without a GPU:
the profiles are data)."""

import dataclasses
import json
import types
import warnings

import pytest
import torch

import scc_kernels
from scc_kernels import autotune, cost_model, planning
from scc_kernels._options import make_options
from scc_kernels.backends import _cpu_kernels


def test_profiles_are_spec_sheet_data():
    assert set(cost_model.PROFILES) >= {"H100", "H200", "A100"}
    h100, h200, a100 = (cost_model.PROFILES[name] for name in ("H100", "H200", "A100"))
    assert h200.dram_gbps / h100.dram_gbps == pytest.approx(4800 / 3350)  # same chip, faster memory
    assert h200.tf32_tflops == h100.tf32_tflops > a100.tf32_tflops


def test_terms_are_bytes_over_bandwidth_flops_over_rate_launches_times_cost():
    profile = cost_model.Profile("test", dram_gbps=1000, fp32_tflops=10, tf32_tflops=100, torch_op_us=8)
    candidate = cost_model.Candidate(
        "torch", "fft", bytes=2e9, fp32_flops=3e9, tensor_flops=4e10, launches=5, launch_us=8
    )
    timed = cost_model._timed(candidate, profile)
    assert timed.memory_ms == pytest.approx(2.0)  # 2 GB at 1000 GB/s
    assert timed.compute_ms == pytest.approx(0.3 + 0.4)  # 3 GFLOP at 10 TFLOP/s + 40 GFLOP at 100
    assert timed.launch_ms == pytest.approx(0.04)
    assert timed.modeled_ms == pytest.approx(2.74)


def test_io_bytes_by_hand():
    # 2×3×4×5 float32 logits (480 B) read twice and the gradient written once, int64 labels read twice
    problem = cost_model.Workload((2, 3, 4, 5))
    assert cost_model._io_bytes(problem) == 3 * 480 + 2 * 20 * 8


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
    monkeypatch.setattr(autotune, "_measured", {})
    calls = []

    def fake_time(problem, candidate, device, repeats=5):
        calls.append(candidate.path)
        return {"fft": 2.0, "dft": 1.0}[candidate.path]

    monkeypatch.setattr(autotune, "_time_candidate", fake_time)
    problem = cost_model.Workload((2, 3, 16, 16))
    candidates = [c for c in cost_model.candidates(problem, cost_model.PROFILES["H200"]) if c.backend == "triton"]
    cpu = torch.device("cpu")
    first = autotune.measure(problem, candidates, cpu)
    assert first == {"triton/fft": 2.0, "triton/dft": 1.0} and len(calls) == 2
    assert autotune.measure(problem, candidates, cpu) == first and len(calls) == 2  # the process cache
    monkeypatch.setattr(autotune, "_measured", {})
    assert autotune.measure(problem, candidates, cpu) == first and len(calls) == 2  # the disk cache
    assert list(json.loads(cache.read_text()).values()) == [first]


def test_timing_a_candidate_runs_forward_and_backward():
    problem = cost_model.Workload((2, 3, 16, 15))
    candidate = cost_model.Candidate("torch", "fft", 0, 0, 0, 0, 0)
    assert autotune._time_candidate(problem, candidate, torch.device("cpu"), repeats=2) > 0


def test_auto_on_cuda_follows_the_plan(monkeypatch):
    picked = dataclasses.make_dataclass("Picked", ["backend", "path"])("cuda", "fft")
    seen = {}

    def fake_plan(shape, **options):
        seen.update(shape=shape, **options)
        return picked

    monkeypatch.setattr(planning, "cached_plan", fake_plan)
    monkeypatch.delenv("SCC_KERNELS_BACKEND", raising=False)
    opts = make_options(bands=4)
    on_cuda = types.SimpleNamespace(
        shape=(2, 4, 64, 64), is_cuda=True, dtype=torch.float32, device=torch.device("cuda")
    )
    on_cuda.numel = lambda: 2 * 4 * 64 * 64
    monkeypatch.setattr(planning, "_mode_only_the_reference_supports", lambda input: None)
    assert planning.resolve("auto", on_cuda, opts) == ("cuda", "fft")
    assert seen["shape"] == (2, 4, 64, 64) and seen["bands"] == 4 and seen["dtype"] == torch.float32
    cpu_path = "fused" if _cpu_kernels.available() else "fft"  # the CPU kernels, where built
    assert planning.resolve("auto", torch.empty(2, 4, 64, 64), opts) == ("torch", cpu_path)
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
    monkeypatch.setattr(planning, "profile_name", lambda device: "H100")
    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env)
    symbolic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * len(shape))
    sizes = mode.from_tensor(torch.empty(shape), symbolic_context=symbolic).shape
    assert all(isinstance(size, torch.SymInt) for size in sizes)
    with mode:
        logits = torch.empty(sizes, device="cuda")
        labels = torch.empty((sizes[0], *sizes[2:]), dtype=torch.long, device="cuda")
        route = planning.resolve("triton", logits, make_options(spectrum=spectrum, bands=bands, softmax=True))
        outputs = torch.ops.scc_kernels.spectral_stats(
            logits, labels, "triton", route.path, spectrum, bands, "softmax", None, True
        )
    concrete = planning.triton_path(shape, spectrum, bands, torch.float32, True, torch.device("cuda"))
    saved_by_path = {"dft": 1, "fft": 2}  # the forward's saved tensors on each path
    assert route.path == concrete and len(outputs) - 1 == saved_by_path[concrete]
    assert tuple(outputs[0].shape[:3]) == (*shape[:2], bands)
    decided_on = [shape_env.replace(size.node.expr) for size in sizes]  # each size guarded to its value
    assert decided_on == list(shape)


# ----------------------------------------------------------------------------------------------
# the autotune cache: keyed by the candidate set, robust to any content or location


FAKE_MS = {"triton/fft": 2.0, "triton/dft": 1.0, "cuda/fft": 3.0, "torch/fft": 4.0}


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    """Autotuning on CPU: a fresh process cache, a cache file in tmp_path, timings from FAKE_MS."""
    monkeypatch.setattr(autotune, "_measured", {})
    monkeypatch.setenv("SCC_KERNELS_CACHE", str(tmp_path / "autotune.json"))
    calls = []

    def fake_time(problem, candidate, device, repeats=5):
        calls.append(autotune.candidate_key(candidate))
        return FAKE_MS[autotune.candidate_key(candidate)]

    monkeypatch.setattr(autotune, "_time_candidate", fake_time)
    return calls


def _triton_candidates(problem, deterministic=False):
    costs = cost_model.candidates(problem, cost_model.PROFILES["H200"])
    return [c for c in costs if c.backend == "triton" and planning.allowed(c, deterministic)]


def test_a_deterministic_entry_does_not_serve_a_non_deterministic_call(fake_timing, monkeypatch):
    monkeypatch.setattr(planning, "profile_name", lambda device: "H200")  # a CPU device, the H200 model
    cpu = torch.device("cpu")
    problem = ((2, 3, 16, 13), "amplitude", 2, torch.float32, True, cpu)
    assert planning._triton_path_of(*problem, True, True) == "fft"  # deterministic: the DFT's atomics left out
    assert planning._triton_path_of(*problem, False, True) == "dft"  # was KeyError('triton/dft')
    assert sorted(fake_timing) == ["triton/dft", "triton/fft", "triton/fft"]
    # the disk holds both entries: a new process measures neither again
    monkeypatch.setattr(autotune, "_measured", {})
    p = cost_model.Workload((2, 3, 16, 13), bands=2)
    assert autotune.measure(p, _triton_candidates(p, True), cpu) == {"triton/fft": 2.0}
    assert autotune.measure(p, _triton_candidates(p), cpu) == {"triton/fft": 2.0, "triton/dft": 1.0}
    assert len(fake_timing) == 3


def test_plan_autotuned_picks_only_among_allowed_candidates(fake_timing, monkeypatch):
    """plan(deterministic=True, autotune=True) after a non-deterministic autotune of the same problem
    picked the atomic DFT path from the shared cache entry."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200 (faked)")
    monkeypatch.setattr(planning, "profile_of", lambda device=None: cost_model.PROFILES["H200"])
    monkeypatch.setattr(planning, "_runs_here", lambda backend, dtype: backend in ("triton", "torch"))
    shape = (8, 4, 32, 31)
    assert planning.plan(shape, bands=4, autotune=True).path == "dft"
    deterministic = planning.plan(shape, bands=4, autotune=True, deterministic=True)
    assert (deterministic.backend, deterministic.path) == ("triton", "fft")
    float64 = planning.plan(shape, bands=4, dtype=torch.float64, autotune=True)
    assert float64.backend == "torch"  # the only fast backend that runs float64


def _cpu_problem():
    problem = cost_model.Workload((2, 3, 16, 11), bands=2)
    return problem, _triton_candidates(problem), torch.device("cpu")


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", '"text"', "3", "null", "{not json", "\x00\xff"],
    ids=["list", "string", "number", "null", "invalid-json", "binary"],
)
def test_a_cache_file_of_the_wrong_type_warns_once_and_is_left_alone(fake_timing, tmp_path, content):
    cache = tmp_path / "autotune.json"
    cache.write_text(content)
    problem, candidates, cpu = _cpu_problem()
    with pytest.warns(UserWarning, match="autotune cache .* autotuning goes on without it"):
        assert autotune.measure(problem, candidates, cpu) == {"triton/fft": 2.0, "triton/dft": 1.0}
    assert cache.read_text() == content  # not the loss's file to overwrite
    other = cost_model.Workload((2, 3, 16, 12), bands=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next problem says nothing
        autotune.measure(other, _triton_candidates(other), cpu)


@pytest.mark.parametrize(
    "entry",
    ["fast", [1.0, 2.0], {"triton/fft": "2"}, {"triton/fft": 2.0}, {"triton/fft": 2.0, "triton/dft": -1},
     {"triton/fft": 2.0, "triton/dft": True}, {"triton/fft": 2.0, "triton/dft": 1.0, "cuda/fft": 0.1}, None],
    ids=["string", "list", "string-ms", "missing", "negative", "bool", "extra", "null"],
)  # fmt: skip
def test_a_bad_cache_entry_is_measured_again_and_replaced(fake_timing, tmp_path, entry):
    problem, candidates, cpu = _cpu_problem()
    key = autotune._signature(problem, cpu, candidates)
    cache = tmp_path / "autotune.json"
    cache.write_text(json.dumps({key: entry, "someone else's": [1]}))
    assert autotune.measure(problem, candidates, cpu) == {"triton/fft": 2.0, "triton/dft": 1.0}
    assert json.loads(cache.read_text()) == {key: {"triton/fft": 2.0, "triton/dft": 1.0}, "someone else's": [1]}


def test_a_bare_file_name_is_in_the_working_directory(fake_timing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCC_KERNELS_CACHE", "cache.json")  # os.path.dirname is ""
    problem, candidates, cpu = _cpu_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = autotune.measure(problem, candidates, cpu)
    assert list(json.loads((tmp_path / "cache.json").read_text()).values()) == [measured]
    assert [path.name for path in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left


@pytest.mark.parametrize("where", ["folder-in-its-place", "under-a-file", "unwritable-folder"])
def test_a_cache_that_cannot_be_written_warns_and_carries_on(fake_timing, tmp_path, monkeypatch, where):
    if where == "folder-in-its-place":
        path = tmp_path / "autotune.json"
        path.mkdir()
    elif where == "under-a-file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "autotune.json"
    else:  # /proc takes no new files, whoever runs the test (root included)
        path = "/proc/scc_kernels_autotune.json"
    monkeypatch.setenv("SCC_KERNELS_CACHE", str(path))
    problem, candidates, cpu = _cpu_problem()
    with pytest.warns(UserWarning, match="autotune cache"):
        assert autotune.measure(problem, candidates, cpu) == {"triton/fft": 2.0, "triton/dft": 1.0}
    assert autotune.measure(problem, candidates, cpu) == {"triton/fft": 2.0, "triton/dft": 1.0}  # the process cache
    assert len(fake_timing) == 2


# ----------------------------------------------------------------------------------------------
# plan's argument checks: scc_loss's, plus the shape and the dtype


@pytest.mark.parametrize("gpu", sorted(cost_model.PROFILES))
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (8, 4, 64, 64), (1, 2, 33), (2, 4, 24, 24, 24)])
@pytest.mark.parametrize("spectrum, bands", [("amplitude", 4), ("complex", None), ("complex", 2)])
def test_float64_plans_pick_a_backend_that_runs_float64(gpu, shape, spectrum, bands):
    chosen = planning.plan(shape, spectrum=spectrum, bands=bands, dtype=torch.float64, gpu=gpu)
    assert chosen.backend == "torch"  # of the fast backends, only torch runs float64


@pytest.mark.parametrize("bands", [2.5, True, False, 0, -1, "2"])
def test_plan_checks_bands_as_scc_loss_does(bands):
    logits, labels = torch.randn(1, 2, 8, 8), torch.randint(0, 2, (1, 8, 8))
    with pytest.raises(ValueError, match="bands") as loss_error:
        scc_kernels.scc_loss(logits, labels, bands=bands)
    with pytest.raises(ValueError, match="bands") as plan_error:
        planning.plan((1, 2, 8, 8), bands=bands, gpu="H200")
    assert str(plan_error.value) == str(loss_error.value)


def test_plan_checks_spectrum_as_scc_loss_does():
    with pytest.raises(ValueError, match="spectrum"):
        planning.plan((1, 2, 8, 8), spectrum="phase", gpu="H200")


@pytest.mark.parametrize(
    "shape, error",
    [
        ((2, 3), ValueError),
        ((2, 3, 8, 8, 8, 8), ValueError),
        ((2, -3, 8), ValueError),
        ((2, 3, 0), ValueError),
        ((2, 3, 8.0), TypeError),
        ((2, 3, "8"), TypeError),
        ((2, 3, None), TypeError),
        ((True, 3, 8), ValueError),
        (5, TypeError),
        ("2x3x8", TypeError),
        ((2, 3, 2**62, 2**62), ValueError),
    ],
)
def test_plan_checks_the_shape(shape, error):
    with pytest.raises(error, match="input_shape"):
        planning.plan(shape, gpu="H200")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, "float32", None, float])
def test_plan_checks_the_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        planning.plan((2, 3, 8, 8), dtype=dtype, gpu="H200")


def test_plan_accepts_numpy_sizes_and_a_torch_size():
    numpy = pytest.importorskip("numpy")
    sizes = planning.plan(tuple(numpy.array([2, 3, 16, 16])), gpu="H200")
    assert sizes.workload.shape == (2, 3, 16, 16) and all(type(n) is int for n in sizes.workload.shape)
    assert planning.plan(torch.Size([2, 3, 16, 16]), gpu="H200").workload == sizes.workload


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "4x0x8", "--gpu", "H200"],
        ["plan", "abc", "--gpu", "H200"],
        ["plan", "2x3", "--gpu", "H200"],
        ["plan", "2x3x8x8x8x8", "--gpu", "H200"],
        ["plan", "2x3x8", "--gpu", "H200", "--bands", "2.5"],
        ["plan", "2x3x8", "--gpu", "H200", "--bands", "0"],
        ["plan", "2x3x8", "--gpu", "H200", "--bands", "x"],
        ["plan", "2x3x8", "--gpu", "V100"],
        ["plan", "2x3x8", "--gpu", "H200", "--dtype", "int32"],
        ["plan", "2x3x8", "--gpu", "H200", "--spectrum", "phase"],
        ["plan", "--gpu", "H200"],
        ["plan", "2x3x4611686018427387904x4", "--gpu", "H200"],
    ],
)
def test_plan_command_bad_arguments_are_usage_errors(argv, capsys):
    import scc_kernels.__main__ as cli

    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "error:" in err and "Traceback" not in err


def test_plan_command_runs_float64(capsys):
    import scc_kernels.__main__ as cli

    assert cli.main(["plan", "2x4x32x32", "--gpu", "H100", "--dtype", "float64"]) == 0
    assert "pick: torch / fft" in capsys.readouterr().out


def test_the_autotune_variable_does_not_apply_to_a_named_profile(monkeypatch, capsys):
    """SCC_KERNELS_AUTOTUNE=1 made plan(gpu="H200") and `plan --gpu H200` raise (a traceback)."""
    import scc_kernels.__main__ as cli

    monkeypatch.setenv("SCC_KERNELS_AUTOTUNE", "1")
    assert planning.plan((2, 3, 16, 16), gpu="H200").candidates[0].measured_ms is None
    assert cli.main(["plan", "2x3x16x16", "--gpu", "H200"]) == 0 and "pick:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="use gpu=None"):
        planning.plan((2, 3, 16, 16), gpu="H200", autotune=True)  # asked for explicitly: still an error


def test_a_single_channel_keeps_its_background_as_in_scc_loss():
    """scc_loss ignores include_background=False for C == 1; plan modelled zero slices."""
    kept = planning.plan((4, 1, 64, 64), gpu="H200")
    dropped = planning.plan((4, 1, 64, 64), include_background=False, gpu="H200")
    assert dropped.candidates == kept.candidates and dropped.workload.slices == 4


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64), str(-(2**63) - 1), "1.5", "x"])
def test_verify_command_seed_out_of_range_is_a_usage_error(seed, capsys):
    """A seed torch's generator cannot take ended in a traceback from inside verify."""
    import scc_kernels.__main__ as cli

    with pytest.raises(SystemExit) as exit:
        cli.parse(["verify", "--seed", seed])
    assert exit.value.code == 2 and "--seed" in capsys.readouterr().err
    assert cli.parse(["verify", "--seed", str(2**64 - 1)]).seed == 2**64 - 1
    assert cli.parse(["verify", "--seed", "-5"]).seed == -5
