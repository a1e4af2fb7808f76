"""`sync_batch=True` under torch.distributed (SPEC §2): DDP on W ranks × B/W samples gives every
rank the loss of one process over all B samples, and the same parameter gradients (gloo, 2 CPU
processes). Also ranks with an empty batch, torch.compile with sync_batch, and MONAI's
DeepSupervisionLoss around SCCLoss."""

import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scc_kernels
from scc_kernels import SCCLoss

WORLD = 2
SPLITS = [slice(0, 3), slice(3, 4)]  # uneven on purpose: ranks hold 3 and 1 of the 4 items


def _problem(seed: int, dtype):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 1, 12, 11, generator=generator, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, 3, (4, 12, 11), generator=generator)
    return images, labels


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 3, 3, padding=1).to(dtype)


def _rank_main(rank, port, backend, options, dtype, seed):
    _init(rank, port)
    images, labels = _problem(seed, dtype)
    loss_fn = SCCLoss(batch=True, softmax=True, backend=backend, **options)
    # one process over the whole batch
    single = _model(dtype)
    single_loss = loss_fn(single(images), labels)
    single_loss.backward()
    # DDP: this rank's part of the batch, statistics merged over the ranks
    model = torch.nn.parallel.DistributedDataParallel(_model(dtype))
    synced = SCCLoss(batch=True, sync_batch=True, softmax=True, backend=backend, **options)
    part = SPLITS[rank]
    ddp_loss = synced(model(images[part]), labels[part])
    ddp_loss.backward()
    where = f"rank {rank}, backend {backend}, {options}, seed {seed}"
    tolerance = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ddp_loss, single_loss, msg=where, **tolerance)
    for ddp_param, param in zip(model.module.parameters(), single.parameters()):
        torch.testing.assert_close(ddp_param.grad, param.grad, msg=where, **tolerance)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HANG_S = 60  # a collective that waits longer than this is a hang: gloo raises on that rank


def _rank_entry(rank, port, fn, *args):
    """fn(rank, port, *args) on one rank, which then leaves with os._exit, its process group alive.
    fn's DDP reducers are freed when it returns, while the default group still holds the process
    group; tearing the group down in this process instead can deadlock in torch's gloo
    (~ProcessGroupGloo joins a worker thread that waits for the GIL the freeing thread holds; seen
    intermittently in CI). A failure still reaches mp.spawn as an exception."""
    fn(rank, port, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn_ranks(fn, *args, deadline_s: float = 300):
    """Run fn(rank, port, *args) on WORLD processes; a hang fails the test instead of CI."""
    context = mp.spawn(_rank_entry, args=(_free_port(), fn, *args), nprocs=WORLD, join=False)
    end = time.monotonic() + deadline_s
    while not context.join(timeout=max(end - time.monotonic(), 0.1)):
        if time.monotonic() > end:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f"the ranks did not finish within {deadline_s} s (a hang)")


def _init(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=HANG_S))


ALL_BACKENDS = [("reference", torch.float64), ("torch", torch.float64)]
if scc_kernels.available_backends()["triton"]["available"] and not torch.cuda.is_available():
    ALL_BACKENDS.append(("triton", torch.float32))  # interpreted: gloo ranks hold CPU tensors
TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def _empty_rank_main(rank, port, options):
    _init(rank, port)
    for backend, dtype in ALL_BACKENDS:
        images, labels = _problem(23, dtype)
        loss_fn = SCCLoss(batch=True, softmax=True, backend=backend, **options)
        single = _model(dtype)
        single_loss = loss_fn(single(images), labels)
        single_loss.backward()
        model = torch.nn.parallel.DistributedDataParallel(_model(dtype))
        synced = SCCLoss(batch=True, sync_batch=True, softmax=True, backend=backend, **options)
        part = slice(0, 4) if rank == 0 else slice(4, 4)  # rank 1: B = 0
        ddp_loss = synced(model(images[part]), labels[part])
        ddp_loss.backward()
        where = f"rank {rank}, backend {backend}, {options}"
        torch.testing.assert_close(ddp_loss, single_loss, msg=where, **TOLERANCE[dtype])
        for ddp_param, param in zip(model.module.parameters(), single.parameters()):
            torch.testing.assert_close(ddp_param.grad, param.grad, msg=where, **TOLERANCE[dtype])
        # every rank empty: the global batch has no bins, loss 0 (SPEC §3 step 6), no hang
        empty = synced(model(images[:0]), labels[:0])
        empty.backward()
        assert empty.item() == 0, where


@pytest.mark.slow  # spawns the ranks
@pytest.mark.parametrize(
    "options",
    [dict(spectrum="amplitude", bands=2), dict(spectrum="complex")],
    ids=["amplitude-2bands", "complex-parseval"],
)
def test_a_rank_with_an_empty_batch_joins_the_merge(options):
    """SPEC §5: every rank gets the global loss and DDP's gradient, on every backend."""
    _spawn_ranks(_empty_rank_main, options)


def _compiled_main(rank, port, backend, dtype):
    _init(rank, port)
    images, labels = _problem(24, dtype)
    part = SPLITS[rank]
    results = []
    # the fast backends' graph holds the gather (one graph); the reference's breaks there
    compiled = torch.compile(scc_kernels.scc_loss, fullgraph=backend != "reference")
    for loss_fn in (scc_kernels.scc_loss, compiled):
        torch._dynamo.reset()
        logits = images[part].repeat(1, 3, 1, 1) * torch.tensor([1.0, -0.5, 2.0], dtype=dtype).view(3, 1, 1)
        logits.requires_grad_(True)
        value = loss_fn(logits, labels[part], softmax=True, bands=3, batch=True, sync_batch=True, backend=backend)
        value.backward()
        results.append((value.detach(), logits.grad))
    where = f"rank {rank}, backend {backend}"
    (eager, eager_grad), (compiled, compiled_grad) = results
    torch.testing.assert_close(compiled, eager, msg=where, **TOLERANCE[dtype])
    torch.testing.assert_close(compiled_grad, eager_grad, msg=where, **TOLERANCE[dtype])


@pytest.mark.slow  # spawns the ranks
@pytest.mark.parametrize("backend, dtype", ALL_BACKENDS[:2], ids=["reference", "torch"])  # triton: the torch op's graph
def test_sync_batch_under_torch_compile(backend, dtype):
    """SPEC §5: torch.compile with sync_batch and a process group works (graph breaks allowed)."""
    _spawn_ranks(_compiled_main, backend, dtype)


TRITON_ON_CPU = pytest.mark.skipif(
    scc_kernels.available_backends()["triton"]["available"] is False or torch.cuda.is_available(),
    reason="gloo ranks hold CPU tensors: triton runs them only in its interpreter (machines without a GPU)",
)


@pytest.mark.slow  # spawns the ranks
@pytest.mark.parametrize(
    "backend, dtype",
    [
        ("reference", torch.float64),
        ("torch", torch.float64),
        pytest.param("triton", torch.float32, marks=TRITON_ON_CPU),
    ],
)
@pytest.mark.parametrize(
    "options",
    [dict(spectrum="amplitude", bands=2), dict(spectrum="complex")],
    ids=["amplitude-2bands", "complex-parseval"],
)
def test_ddp_matches_one_process_over_the_whole_batch(backend, dtype, options):
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    _spawn_ranks(_rank_main, backend, options, dtype, 21)


def test_sync_batch_without_batch_warns_and_is_ignored():
    with pytest.warns(UserWarning, match="sync_batch=True` needs `batch=True"):
        loss = SCCLoss(sync_batch=True)
    assert not loss.options.sync_batch


def test_monai_deep_supervision():
    monai = pytest.importorskip("monai", reason="MONAI is in the test extra")
    generator = torch.Generator().manual_seed(22)
    outputs = [torch.randn(2, 3, 16, 16, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)]
    outputs = [output.requires_grad_(True) for output in outputs]
    # a float (B, 1, *S) label map: MONAI resizes the target to each output, which int64 cannot be
    labels = torch.randint(0, 3, (2, 1, 16, 16), generator=generator).float()
    scc = SCCLoss(softmax=True, to_onehot_y=True, bands=2)
    deep = monai.losses.DeepSupervisionLoss(scc, weight_mode="exp")
    value = deep(outputs, labels)
    value.backward()
    assert torch.isfinite(value) and all(output.grad is not None for output in outputs)
    small = torch.nn.functional.interpolate(labels, size=(8, 8), mode="nearest-exact")
    weights = deep.get_weights(2)
    expected = weights[0] * scc(outputs[0], labels) + weights[1] * scc(outputs[1], small)
    torch.testing.assert_close(value, expected)


def test_process_group_needs_sync_batch():
    with pytest.raises(ValueError, match="process_group"):
        SCCLoss(batch=True, process_group="world")
