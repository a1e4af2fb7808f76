import os
import zlib

import pytest
import torch

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
