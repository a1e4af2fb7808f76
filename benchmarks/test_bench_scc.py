"""pytest-benchmark suites: every available backend next to the reference, grouped by mode and shape.

    python -m pytest benchmarks --benchmark-only --benchmark-group-by=group
    python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/run.json

Forward+backward of softmax logits against an integer label map. On a CPU-only machine the
triton backend runs interpreted, which says nothing about its speed, so it is left out there.
"""

import pytest
import torch

from scc_kernels import scc_loss
from scc_kernels.bench import MODES, QUICK_SHAPES, SHAPES, make_inputs, timed_backends

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference", *timed_backends(DEVICE)]
CASES = SHAPES[DEVICE.type] if DEVICE.type == "cuda" else QUICK_SHAPES["cpu"]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "forward_backward"])
def test_scc(benchmark, direction, backend, mode, shape):
    logits, labels = make_inputs(shape, torch.float32, DEVICE)
    x = logits.requires_grad_(direction == "forward_backward")

    def step():
        loss = scc_loss(x, labels, backend=backend, **MODES[mode])
        if x.requires_grad:
            loss.backward()
            x.grad = None
        _sync()

    step()  # first call: compilation and caches, never timed
    benchmark.group = f"{direction} {mode} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        torch=torch.__version__,
        backend=backend,
        mode=mode,
    )
    benchmark.pedantic(step, rounds=5 if DEVICE.type == "cpu" else 50, warmup_rounds=1)
