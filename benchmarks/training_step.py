"""What SCC adds to a training step: a MONAI UNet step with DiceCELoss alone and with + λ·SCCLoss.

    python benchmarks/training_step.py                        # 2D 8x4x256x256 and 3D 2x4x96^3
    python benchmarks/training_step.py --shapes 4x4x128x128 --repeats 3 --backend torch

One step = forward, loss, backward, optimizer step, on random images and label maps. The arms
run interleaved (one step of each in turn, `--repeats` rounds after a warm-up round), so that a
noisy machine slows them alike; the table gives each arm's median step time and what the SCC
term adds over DiceCE alone, as time and as a share of the DiceCE-only step. CUDA: CUDA events;
CPU: wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from scc_kernels import SCCLoss
from scc_kernels.bench import timed_backends, timer

DEFAULT_SHAPES = ["8x4x256x256", "2x4x96x96x96"]


def _shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(size) for size in text.split("x"))
    if not 4 <= len(shape) <= 5:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BxCxHxW or BxCxDxHxW")
    return shape


def _step_fn(shape, loss_fn, device, seed=0):
    """A closure running one training step of a fresh UNet (same weights and data for every arm)."""
    batch, classes, *spatial = shape
    torch.manual_seed(seed)
    model = UNet(
        spatial_dims=len(spatial),
        in_channels=1,
        out_channels=classes,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 1, *spatial, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch, 1, *spatial), generator=generator).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument(
        "--backend", action="append", help="SCC backends to time (default: reference and the fast ones that run here)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lam", type=float, default=0.5, help="weight of the SCC term")
    parser.add_argument("--spectrum", default="amplitude", choices=["amplitude", "complex"])
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backend or ["reference", *timed_backends(device)]
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"training step on {time.strftime('%Y-%m-%d')} {machine}, torch {torch.__version__}; MONAI UNet "
        f"(16-32-64-128), SGD; DiceCE vs DiceCE + {args.lam}·SCC({args.spectrum}); median of {args.repeats} "
        "interleaved rounds after one warm-up round"
    )
    print(f"{'shape':<16} {'arm':<22} {'step ms':>9} {'SCC adds ms':>12} {'share':>7}")
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    for shape in args.shapes:
        arms = {"DiceCE": dice_ce}
        for name in backends:
            scc = SCCLoss(to_onehot_y=True, softmax=True, spectrum=args.spectrum, backend=name)
            arms[f"DiceCE + SCC {name}"] = lambda out, y, scc=scc: dice_ce(out, y) + args.lam * scc(out, y)
        steps = {arm: _step_fn(shape, loss_fn, device) for arm, loss_fn in arms.items()}
        times = {arm: [] for arm in arms}
        measure = timer(device)
        for round_ in range(args.repeats + 1):
            for arm, step in steps.items():
                elapsed = measure(step)
                if round_:  # the first round warms up
                    times[arm].append(elapsed)
        base = statistics.median(times["DiceCE"])
        label = "x".join(map(str, shape))
        for arm, values in times.items():
            median = statistics.median(values)
            added = "" if arm == "DiceCE" else f"{median - base:12.1f} {100 * (median - base) / base:6.1f}%"
            print(f"{label:<16} {arm:<22} {median:9.1f} {added}", flush=True)


if __name__ == "__main__":
    main()
