"""`sync_batch=True` under torch.distributed (SPEC §2): DDP on W ranks × B/W samples gives every
rank the loss of one process over all B samples, and the same parameter gradients (gloo, 2 CPU
processes). Also MONAI's DeepSupervisionLoss around SCCLoss."""

import os
import socket

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
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
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
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRITON_ON_CPU = pytest.mark.skipif(
    scc_kernels.available_backends()["triton"]["available"] is False or torch.cuda.is_available(),
    reason="gloo ranks hold CPU tensors: triton runs them only in its interpreter (machines without a GPU)",
)


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
    mp.spawn(_rank_main, args=(_free_port(), backend, options, dtype, 21), nprocs=WORLD, join=True)


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
