import os
import zlib

import pytest
import torch

try:  # in the test extra; the GPU check runs without it
    from hypothesis import settings
except ImportError:
    settings = None
if settings is not None:
    # CI runs the same hypothesis examples every time (a red CI must be reproducible);
    # `pytest --hypothesis-profile=explore` draws new ones, more of them, to look for trouble.
    settings.register_profile("ci", derandomize=True)
    settings.register_profile("explore", max_examples=2000)
    settings.load_profile("ci")

# The triton backend runs on CPU tensors in Triton's interpreter; it must be set before triton
# is imported, and only where there is no GPU to run the real kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_from_test_id(request):
    """Each test starts torch's global generator from a seed made of its own id, so a draw without
    an explicit generator repeats from run to run (and alone under -k); a failure reports the seed."""
    request.node.torch_seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(request.node.torch_seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed and hasattr(item, "torch_seed"):
        report.sections.append(("torch seed", f"torch.manual_seed({item.torch_seed}) before the test"))


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels(tmp_path_factory):
    """The torch backend's CPU kernels, built for the session in a folder of its own (never the
    user's cache, so the tests see the same state on every machine): where a C compiler is, the
    torch backend takes its "fused" path for float32 amplitude spectra on a CPU, as after
    `python -m scc_kernels build-cpu`; `torch_path` runs a test on either path. Yields whether
    they were built."""
    from scc_kernels.backends import _cpu_kernels

    saved = os.environ.get("SCC_KERNELS_CPU_BUILD_DIR")
    os.environ["SCC_KERNELS_CPU_BUILD_DIR"] = str(tmp_path_factory.mktemp("cpu-kernels"))
    built = _cpu_kernels.compiler() is not None
    if built:
        _cpu_kernels.build()
    yield built
    if saved is None:
        os.environ.pop("SCC_KERNELS_CPU_BUILD_DIR")
    else:
        os.environ["SCC_KERNELS_CPU_BUILD_DIR"] = saved


@pytest.fixture
def kernels(cpu_kernels):
    """The test needs the CPU kernels: skipped where they are not built or switched off."""
    if not cpu_kernels or os.environ.get("SCC_KERNELS_CPU_KERNELS") == "0":
        pytest.skip("the CPU kernels are not built here (no C compiler, or SCC_KERNELS_CPU_KERNELS=0)")


@pytest.fixture
def torch_path(request, monkeypatch):
    """Parametrized indirectly with "fft" or "fused": the torch backend's path for the float32
    amplitude spectrum on a CPU in this test (SCC_KERNELS_CPU_KERNELS switches the kernels off)."""
    if request.param == "fft":
        monkeypatch.setenv("SCC_KERNELS_CPU_KERNELS", "0")
    else:
        request.getfixturevalue("kernels")
    return request.param


@pytest.fixture(scope="session")
def compilations(tmp_path_factory):
    """The csrc compilations of tests/cuda_utils.py, started together the first time a test_cuda_* file
    asks (name -> running compiler process, or why it cannot run here); each test waits for its own."""
    from cuda_utils import start_compilations  # only the CUDA tests pay for its imports

    processes = start_compilations(tmp_path_factory.mktemp("csrc"))
    yield processes
    for process in processes.values():
        if not isinstance(process, str) and process.poll() is None:
            process.kill()
