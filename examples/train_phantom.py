"""Does adding SCC to DiceCE help a segmentation model generalise? A small study anyone can rerun.

A MONAI UNet learns to segment synthetic 2D cardiac-like phantoms (class 1 blood pool, 2
myocardium ring, 3 right ventricle, 0 background) with DiceCE alone and with DiceCE + λ·SCC in
three settings (amplitude, complex, amplitude with 4 radial bands). Every arm trains on the
same images with the same seeds (the seed fixes the network's initial weights and the batch
order), and is scored by per-class Dice on a test set from the training distribution and on one
from a shifted domain (another contrast, more noise, blur, a strong bias field) standing in for
another scanner. Arms are compared seed by seed against DiceCE alone (paired differences, a
paired t-test).

    python examples/train_phantom.py --out OUT           # the full study (10-15 min on one CPU core)
    python examples/train_phantom.py --quick --out OUT   # smoke run: 1 seed, a few iterations

OUT/results.json holds the configuration, every run's Dice and loss curve, the summary, the
paired comparisons, the wall time and the environment; OUT/*.png are the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import matplotlib.colors
import monai
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: no display backend, files only
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from tqdm import tqdm

import scc_kernels
from scc_kernels import SCCLoss

CLASSES = {1: "blood pool", 2: "myocardium", 3: "right ventricle"}
NUM_CLASSES = 4  # with the background
DOMAINS = ("in_domain", "shifted")
KEYS = [str(c) for c in CLASSES] + ["mean"]  # the Dice reported per domain
NAMES = {**{str(c): name for c, name in CLASSES.items()}, "mean": "mean"}

# The arms: name -> SCC settings (None: DiceCE alone, the baseline every other arm is paired with).
ARMS = {
    "dicece": None,
    "scc_amplitude": {"spectrum": "amplitude", "bands": None},
    "scc_complex": {"spectrum": "complex", "bands": None},
    "scc_amplitude_4bands": {"spectrum": "amplitude", "bands": 4},
}
BASELINE = "dicece"
COLOURS = dict(zip(ARMS, ("tab:gray", "tab:orange", "tab:green", "tab:purple"), strict=True))
LABELS = {
    "dicece": "DiceCE",
    "scc_amplitude": "+SCC amplitude",
    "scc_complex": "+SCC complex",
    "scc_amplitude_4bands": "+SCC amplitude, 4 bands",
}

# Dataset seeds are fixed and separate from the training seeds: every arm and every training
# seed sees the same images.
DATA_SEEDS = {"train": 1000, "in_domain": 2000, "shifted": 3000}

FULL = {"seeds": 10, "iterations": 400, "batch_size": 16, "size": 64, "n_train": 384, "n_test": 128}
QUICK = {"seeds": 1, "iterations": 12, "batch_size": 8, "size": 64, "n_train": 32, "n_test": 16}


# ---------------------------------------------------------------------------------------------
# Phantoms


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """n draws from U(low, high), shaped (n, 1, 1) to broadcast against (n, H, W) images."""
    return (low + (high - low) * torch.rand(n, generator=g)).view(n, 1, 1)


def _smooth_field(g: torch.Generator, n: int, size: int, cells: int) -> torch.Tensor:
    """A random low-frequency field (n, H, W) of unit-order amplitude: coarse noise, upsampled."""
    coarse = torch.randn(n, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def _ellipse(xx, yy, cx, cy, a, b, theta) -> torch.Tensor:
    """The ellipse's level function: < 1 inside, 1 on the boundary."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    return (u / a) ** 2 + (v / b) ** 2


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (n, H, W) images with a separable kernel (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(images[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


def make_phantoms(n: int, size: int, seed: int, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """n cardiac-like short-axis phantoms: images (n, 1, H, W) float32, labels (n, 1, H, W) int64.

    The anatomy is drawn the same way in both domains: a blood pool (1) inside a myocardial ring
    (2) of random thickness, a crescent-shaped right ventricle (3) against it, irregular
    boundaries, inside a body outline with other random structures (some as bright as blood).
    The domains differ in how it is imaged. In-domain (bright blood, like a cine bSSFP): strong
    blood-myocardium contrast, little noise, a mild bias field. Shifted ("another scanner"):
    lower and different contrast (the right ventricle darker than the blood pool, brighter
    myocardium and surroundings), a gamma curve, more noise, more blur and a strong smooth
    bias field. Each image is z-score normalised, as usual for MRI, so a plain change of gain or
    offset would not be a shift at all.
    """
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    # Anatomy: the blood pool's centre, radii and orientation, then the ring and the crescent.
    cx, cy = _uniform(g, n, -0.2, 0.2), _uniform(g, n, -0.2, 0.2)
    a = _uniform(g, n, 0.14, 0.24)
    b = a * _uniform(g, n, 0.8, 1.2)
    theta = _uniform(g, n, 0, math.pi)
    wall = _uniform(g, n, 0.07, 0.11)
    wobble = 0.25 * _smooth_field(g, n, size, 4)  # irregular boundaries
    blood = _ellipse(xx, yy, cx, cy, a, b, theta) + wobble < 1
    outer = _ellipse(xx, yy, cx, cy, a + wall, b + wall, theta) + wobble < 1
    myocardium = outer & ~blood
    # The right ventricle: a wider ellipse centred beside the heart on its left, minus the
    # (slightly dilated) ring, which leaves a crescent wrapped around it.
    phi = math.pi + _uniform(g, n, -0.5, 0.5)
    reach = torch.maximum(a, b) + wall + _uniform(g, n, 0.0, 0.05)
    rv_long, rv_short = reach * _uniform(g, n, 1.1, 1.5), reach * _uniform(g, n, 0.6, 0.9)
    rv_x, rv_y = cx + reach * torch.cos(phi), cy + reach * torch.sin(phi)
    rv_shape = _ellipse(xx, yy, rv_x, rv_y, rv_short, rv_long, phi) + wobble < 1
    gap = _ellipse(xx, yy, cx, cy, a + wall + 0.03, b + wall + 0.03, theta) + wobble < 1
    right_ventricle = rv_shape & ~gap

    labels = torch.zeros(n, size, size, dtype=torch.int64)
    labels[right_ventricle] = 3
    labels[myocardium] = 2
    labels[blood] = 1

    # Intensities per domain: (blood pool, right ventricle / blood pool, myocardium, tissue).
    if shifted:
        i_blood, rv_ratio = _uniform(g, n, 0.65, 0.80), _uniform(g, n, 0.75, 0.90)
        i_myo, i_tissue = _uniform(g, n, 0.25, 0.38), _uniform(g, n, 0.38, 0.50)
    else:
        i_blood, rv_ratio = _uniform(g, n, 0.75, 0.95), _uniform(g, n, 0.90, 1.00)
        i_myo, i_tissue = _uniform(g, n, 0.18, 0.32), _uniform(g, n, 0.30, 0.45)

    texture = 0.06 * _smooth_field(g, n, size, 16)
    image = i_tissue + 0.12 * _smooth_field(g, n, size, 6)
    # Other organs and vessels: random blobs anywhere, some as bright as blood, under the heart.
    for _ in range(4):
        blob = _ellipse(
            xx,
            yy,
            _uniform(g, n, -0.8, 0.8),
            _uniform(g, n, -0.8, 0.8),
            _uniform(g, n, 0.05, 0.2),
            _uniform(g, n, 0.05, 0.2),
            _uniform(g, n, 0, math.pi),
        )
        image = torch.where(blob < 1, _uniform(g, n, 0.1, 0.9).expand(n, size, size), image)
    body = _ellipse(xx, yy, 0.0, 0.0, _uniform(g, n, 0.85, 0.98), _uniform(g, n, 0.7, 0.9), torch.zeros(n, 1, 1))
    image = torch.where(body < 1, image, torch.full_like(image, 0.02))
    image = torch.where(labels == 2, i_myo, image)
    image = torch.where(labels == 1, i_blood, image)
    image = torch.where(labels == 3, i_blood * rv_ratio, image)
    image = image + texture

    if shifted:
        image = image.clamp(min=0) ** 1.3
        image = _blur(image, 1.0)
        image = image * torch.exp(0.3 * _smooth_field(g, n, size, 3))
        noise = _uniform(g, n, 0.04, 0.07)
    else:
        image = _blur(image, 0.6)  # partial volume at the edges
        image = image * torch.exp(0.1 * _smooth_field(g, n, size, 3))
        noise = _uniform(g, n, 0.02, 0.05)
    image = image + noise * torch.randn(n, size, size, generator=g)

    mean = image.mean(dim=(1, 2), keepdim=True)
    std = image.std(dim=(1, 2), keepdim=True)
    return ((image - mean) / std)[:, None].float(), labels[:, None]


# ---------------------------------------------------------------------------------------------
# Training and scoring


def make_model() -> UNet:
    """A small 2D UNet: a few minutes of CPU training per arm and seed."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_CLASSES,
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=1,
    )


def train(arm: str, seed: int, data: dict, cfg: dict, device: torch.device, lam: float):
    """Trains one model; returns it with its per-iteration losses."""
    torch.manual_seed(seed)  # the same initial weights for every arm at this seed
    model = make_model().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    dice_ce = DiceCELoss(softmax=True, to_onehot_y=True)
    settings = ARMS[arm]
    scc = None if settings is None else SCCLoss(softmax=True, **settings)

    images, labels = data["train"]
    order = torch.Generator().manual_seed(seed)  # the same batch order for every arm at this seed
    batches = torch.empty(0, dtype=torch.int64)
    curve = {"dice_ce": [], "scc": [], "total": []}
    model.train()
    bar = tqdm(range(cfg["iterations"]), desc=f"{arm} seed {seed}", leave=False, disable=not sys.stderr.isatty())
    for _ in bar:
        if len(batches) < cfg["batch_size"]:  # a new epoch: reshuffle
            batches = torch.cat([batches, torch.randperm(len(images), generator=order)])
        index, batches = batches[: cfg["batch_size"]], batches[cfg["batch_size"] :]
        x, y = images[index].to(device), labels[index].to(device)
        logits = model(x)
        loss_dice_ce = dice_ce(logits, y)
        loss = loss_dice_ce
        if scc is not None:
            loss_scc = scc(logits, y)
            loss = loss + lam * loss_scc
            curve["scc"].append(round(loss_scc.item(), 6))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        curve["dice_ce"].append(round(loss_dice_ce.item(), 6))
        curve["total"].append(round(loss.item(), 6))
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return model, curve


@torch.no_grad()
def predict(model, images: torch.Tensor, device: torch.device, chunk: int = 64) -> torch.Tensor:
    """Argmax label maps (n, H, W) for images (n, 1, H, W)."""
    model.eval()
    return torch.cat([model(images[i : i + chunk].to(device)).argmax(1).cpu() for i in range(0, len(images), chunk)])


def dice_per_class(prediction: torch.Tensor, labels: torch.Tensor) -> dict:
    """Dice of each foreground class per image, averaged over the images, and their mean.

    A class absent from both the prediction and the ground truth of an image scores 1 there
    (the phantoms always hold every class, so this only guards the definition).
    """
    truth = labels[:, 0]
    scores = {}
    for c in CLASSES:
        p, t = prediction == c, truth == c
        overlap = (p & t).sum(dim=(1, 2)).double()
        size = (p.sum(dim=(1, 2)) + t.sum(dim=(1, 2))).double()
        dice = torch.where(size > 0, 2 * overlap / size.clamp(min=1), torch.ones_like(size))
        scores[str(c)] = dice.mean().item()
    scores["mean"] = sum(scores[str(c)] for c in CLASSES) / len(CLASSES)
    return scores


# ---------------------------------------------------------------------------------------------
# Statistics


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with integer df, in closed form (Abramowitz & Stegun
    26.7.3-4), so the study needs no scipy."""
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    term, series = 1.0, 0.0
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ...))
        for j in range((df - 1) // 2):
            series += term
            term *= c2 * (2 * j + 2) / (2 * j + 3)
        inside = 2 / math.pi * (theta + s * math.cos(theta) * series)
    else:  # even: sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...)
        for j in range(df // 2):
            series += term
            term *= c2 * (2 * j + 1) / (2 * j + 2)
        inside = s * series
    return max(0.0, 1.0 - inside)


def paired(arm_scores: list[float], base_scores: list[float]) -> dict:
    """Paired comparison over seeds: mean and std of arm − baseline, wins/losses, t and p."""
    d = np.asarray(arm_scores) - np.asarray(base_scores)
    n = len(d)
    out = {
        "n": n,
        "mean_diff": float(d.mean()),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "std_diff": None,
        "t": None,
        "p": None,
    }
    if n >= 2:
        sd = float(d.std(ddof=1))
        out["std_diff"] = sd
        if sd > 0:
            out["t"] = float(d.mean() / (sd / math.sqrt(n)))
            out["p"] = t_two_sided_p(out["t"], n - 1)
    return out


def summarise(runs: dict) -> tuple[dict, dict]:
    """Mean ± std over seeds per arm, domain and class; paired comparisons with the baseline."""

    def scores(arm, domain, key):
        return [run["dice"][domain][key] for run in runs[arm]]

    summary, comparisons = {}, {}
    for arm in runs:
        summary[arm], comparisons[arm] = {}, {}
        for domain in DOMAINS:
            summary[arm][domain] = {}
            comparisons[arm][domain] = {}
            for key in KEYS:
                values = scores(arm, domain, key)
                summary[arm][domain][key] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                }
                comparisons[arm][domain][key] = paired(values, scores(BASELINE, domain, key))
    del comparisons[BASELINE]
    return summary, comparisons


# ---------------------------------------------------------------------------------------------
# Report


def environment(device: torch.device) -> dict:
    """Versions, machine and date, for the record."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    repo = pathlib.Path(scc_kernels.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "scc_kernels_commit": commit,
        "scc_kernels_tree_modified": dirty,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
    }


def to_json(results: dict) -> str:
    """Indented JSON with each list of numbers (the loss curves) on one line."""
    return re.sub(r"\n\s+(-?\d[\d.eE+-]*,?)(?=\n)", r" \1", json.dumps(results, indent=1, ensure_ascii=False))


def table(summary: dict, comparisons: dict) -> str:
    """The results as Markdown: Dice mean ± std per arm, then the paired differences."""

    def cell(s):
        return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")

    def diff(c):
        text = f"{c['mean_diff']:+.4f} ({c['wins']}/{c['n']} up"
        if c["p"] is None:
            return text + ")"
        p = f"{c['p']:.2f}" if c["p"] >= 0.01 else f"{c['p']:.0e}"
        return text + f", t = {c['t']:+.2f}, p = {p})"

    lines = [
        "| arm | " + " | ".join(f"{d} {NAMES[k]}" for d in ("in-domain", "shifted") for k in KEYS) + " |",
        "|---" * (1 + 2 * len(KEYS)) + "|",
    ]
    for arm, s in summary.items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cell(s[d][k]) for d in DOMAINS for k in KEYS) + " |")
    lines += ["", "| vs DiceCE, paired over seeds | Δ mean Dice in-domain | Δ mean Dice shifted |", "|---|---|---|"]
    for arm, c in comparisons.items():
        lines.append(f"| {LABELS[arm]} | {diff(c['in_domain']['mean'])} | {diff(c['shifted']['mean'])} |")
    return "\n".join(lines)


def _figure(rows: int, columns: int, **kwargs):
    fig = Figure(figsize=kwargs.pop("figsize"))
    return fig, fig.subplots(rows, columns, **kwargs)


def plot_dice(runs: dict, summary: dict, path: pathlib.Path) -> None:
    fig, axes = _figure(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(runs)
    for ax, domain in zip(axes, DOMAINS, strict=True):
        for i, arm in enumerate(runs):
            x = np.arange(len(KEYS)) + (i - (len(runs) - 1) / 2) * width
            means = [summary[arm][domain][k]["mean"] for k in KEYS]
            stds = [summary[arm][domain][k]["std"] or 0.0 for k in KEYS]
            ax.bar(x, means, width, yerr=stds, capsize=3, label=LABELS[arm], color=COLOURS[arm], alpha=0.85)
            for j, k in enumerate(KEYS):  # every seed as a dot
                ax.scatter(
                    np.full(len(runs[arm]), x[j]),
                    [r["dice"][domain][k] for r in runs[arm]],
                    s=8,
                    color="black",
                    zorder=3,
                )
        ax.set_xticks(np.arange(len(KEYS)), [NAMES[k] for k in KEYS])
        ax.set_title("in-domain test set" if domain == "in_domain" else "shifted-domain test set")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice (mean ± std over seeds; dots: seeds)")
    axes[0].set_ylim(0, 1)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(runs), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def plot_curves(runs: dict, path: pathlib.Path) -> None:
    """DiceCE (comparable across arms) and the SCC term (1 − r) per iteration, mean over seeds."""
    fig, axes = _figure(1, 2, figsize=(12, 4))
    for arm, arm_runs in runs.items():
        for ax, key in zip(axes, ("dice_ce", "scc"), strict=True):
            if not arm_runs[0]["curve"][key]:
                continue
            curves = np.array([r["curve"][key] for r in arm_runs])
            window = max(1, curves.shape[1] // 30)  # moving average: batch-to-batch noise hides trends
            kernel = np.ones(window) / window
            smooth = np.array([np.convolve(c, kernel, mode="valid") for c in curves])
            steps = np.arange(smooth.shape[1]) + window
            ax.plot(steps, smooth.mean(0), label=LABELS[arm], color=COLOURS[arm])
            ax.fill_between(steps, smooth.min(0), smooth.max(0), color=COLOURS[arm], alpha=0.2)
    axes[0].set_title("DiceCE loss (training batches)")
    axes[1].set_title("SCC term 1 − r (training batches, SCC arms)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mean over seeds (band: min-max), moving average")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_examples(examples: dict, path: pathlib.Path) -> None:
    """Images, ground truth and every arm's prediction (first seed), both domains."""
    colours = matplotlib.colors.ListedColormap(["black", "tab:red", "tab:green", "tab:blue"])
    rows = [(domain, i) for domain in DOMAINS for i in range(len(examples[domain]["images"]))]
    columns = ["image", "ground truth"] + [LABELS[arm] for arm in examples["predictions"]]
    fig, axes = _figure(len(rows), len(columns), figsize=(2 * len(columns), 2 * len(rows)), squeeze=False)
    for r, (domain, i) in enumerate(rows):
        panels = [examples[domain]["images"][i], examples[domain]["labels"][i]]
        panels += [examples["predictions"][arm][domain][i] for arm in examples["predictions"]]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(panel, cmap="gray")
            else:
                ax.imshow(panel, cmap=colours, vmin=0, vmax=NUM_CLASSES - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        axes[r, 0].set_ylabel("in-domain" if domain == "in_domain" else "shifted", fontsize=9)
    fig.suptitle("red: blood pool, green: myocardium, blue: right ventricle", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a small MONAI UNet on synthetic cardiac phantoms with DiceCE alone and "
        "DiceCE + λ·SCC (amplitude, complex, amplitude with 4 bands); report per-class "
        "Dice in-domain and on a shifted domain, paired over seeds.",
        epilog=f"full defaults: {FULL['seeds']} seeds, {FULL['iterations']} iterations of batch "
        f"{FULL['batch_size']}, {FULL['size']}x{FULL['size']} images ({FULL['n_train']} training, "
        f"{FULL['n_test']} per test set). --quick: {QUICK['seeds']} seed, {QUICK['iterations']} "
        "iterations, small sets (a smoke test, not a result).",
    )
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder (results.json, *.png)")
    parser.add_argument("--quick", action="store_true", help="one short run per arm (under 2 minutes on 2 CPU cores)")
    parser.add_argument("--seeds", type=int, help="training seeds per arm, 0..N-1 (default: 10; --quick: 1)")
    parser.add_argument("--iterations", type=int, help="training iterations per run (default: 400; --quick: 12)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: 16; --quick: 8)")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=list(ARMS),
        help="arms to train (default: all); DiceCE alone is always trained, as the pair of the others",
    )
    parser.add_argument("--lam", type=float, default=0.5, help="λ, the SCC term's weight (default: 0.5)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1: this small network gains little from more, "
        "and contended threads on a shared machine slow it several-fold)",
    )
    args = parser.parse_args(argv)
    for name in ("seeds", "iterations", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    cfg = dict(QUICK if args.quick else FULL)
    arms = [BASELINE] + [arm for arm in ARMS if arm in args.arms and arm != BASELINE]
    cfg.update(
        {
            k: v
            for k, v in (("seeds", args.seeds), ("iterations", args.iterations), ("batch_size", args.batch_size))
            if v is not None
        }
    )
    cfg.update(
        lam=args.lam,
        lr=args.lr,
        threads=args.threads,
        quick=args.quick,
        data_seeds=DATA_SEEDS,
        arms={arm: ARMS[arm] for arm in arms},
        model="monai UNet(2D, channels 8-16-32-64, "
        "strides 2-2-2, 1 residual unit), Adam, DiceCELoss(softmax, to_onehot_y) [+ λ·SCCLoss(softmax)]",
    )
    # cuBLAS needs this before its first use to run deterministically (ignored on a CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    # One thread by default: this network's small convolutions gain little from a second one,
    # and on a shared 2-core machine a contended OpenMP barrier made runs 4-5x slower.
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    data = {
        "train": make_phantoms(cfg["n_train"], cfg["size"], DATA_SEEDS["train"], shifted=False),
        "in_domain": make_phantoms(cfg["n_test"], cfg["size"], DATA_SEEDS["in_domain"], shifted=False),
        "shifted": make_phantoms(cfg["n_test"], cfg["size"], DATA_SEEDS["shifted"], shifted=True),
    }
    shown = 3  # example predictions per domain
    examples = {d: {"images": data[d][0][:shown, 0].numpy(), "labels": data[d][1][:shown, 0].numpy()} for d in DOMAINS}
    examples["predictions"] = {}

    runs = {arm: [] for arm in arms}
    for seed in range(cfg["seeds"]):
        for arm in arms:
            t0 = time.perf_counter()
            model, curve = train(arm, seed, data, cfg, device, args.lam)
            train_time = time.perf_counter() - t0
            dice, predictions = {}, {}
            for domain in DOMAINS:
                predictions[domain] = predict(model, data[domain][0], device)
                dice[domain] = dice_per_class(predictions[domain], data[domain][1])
            if seed == 0:
                examples["predictions"][arm] = {d: predictions[d][:shown].numpy() for d in DOMAINS}
            runs[arm].append({"seed": seed, "dice": dice, "train_time_s": round(train_time, 2), "curve": curve})
            print(
                f"seed {seed} {arm:22s} Dice in-domain {dice['in_domain']['mean']:.4f} "
                f"shifted {dice['shifted']['mean']:.4f}  ({train_time:.0f} s)",
                flush=True,
            )

    summary, comparisons = summarise(runs)
    plot_dice(runs, summary, args.out / "dice.png")
    plot_curves(runs, args.out / "training_curves.png")
    plot_examples(examples, args.out / "examples.png")
    wall = time.perf_counter() - start
    results = {
        "config": cfg,
        "environment": environment(device),
        "wall_time_s": round(wall, 1),
        "runs": runs,
        "summary": summary,
        "paired_vs_dicece": comparisons,
        "notes": "Dice: per image, averaged over the test set; classes 1 blood pool, 2 myocardium, "
        "3 right ventricle. Paired: arm − DiceCE at the same seed (same initial weights and "
        "batch order); p from a two-sided paired t-test, not corrected for multiple comparisons.",
    }
    (args.out / "results.json").write_text(to_json(results), encoding="utf-8")
    print(table(summary, comparisons))
    print(f"wall time {wall:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
