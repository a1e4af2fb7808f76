"""nnU-Net v2 integration: the SCC term under nnU-Net's deep-supervision weights, the install
command, and a short real `nnUNetv2_train ... -tr nnUNetTrainerSCC_smoke` on a tiny 2D dataset."""

import json
import os
import pathlib
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnU-Net v2 is the nnunet extra: pip install -e '.[nnunet]' -c <torch pin>")

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from scc_kernels import SCCLoss
from scc_kernels.integrations import nnunet_install
from scc_kernels.integrations.nnunet import nnUNetTrainerSCC, nnUNetTrainerSCC_smoke

LABELS = {"background": 0, "disc": 1, "square": 2}
POOLING = [[1, 1], [2, 2], [2, 2], [2, 2]]  # a 4-stage U-Net: 3 deep-supervision outputs


def trainer_for_loss(cls, labels=LABELS, regions_class_order=None):
    """A trainer holding only what `_build_loss` reads: nnU-Net's __init__ needs a preprocessed dataset."""
    trainer = object.__new__(cls)
    trainer.label_manager = LabelManager(labels, regions_class_order)
    trainer.configuration_manager = SimpleNamespace(batch_dice=False, pool_op_kernel_sizes=POOLING)
    trainer.enable_deep_supervision = True
    trainer.is_ddp = False
    trainer.device = torch.device("cpu")
    return trainer


def deep_supervision_batch(num_classes, labels_up_to, seed=0):
    """Logits and (B, 1, ...) float label maps at every output scale, as nnU-Net's train_step gets them."""
    generator = torch.Generator().manual_seed(seed)
    outputs, targets = [], []
    for size in (32, 16, 8):
        outputs.append(torch.randn(2, num_classes, size, size, generator=generator, requires_grad=True))
        targets.append(torch.randint(0, labels_up_to + 1, (2, 1, size, size), generator=generator).float())
    return outputs, targets


def test_scc_term_gets_nnunets_deep_supervision_weights():
    plain = trainer_for_loss(nnUNetTrainer)._build_loss()
    with_scc = trainer_for_loss(nnUNetTrainerSCC)._build_loss()
    assert with_scc.weight_factors == plain.weight_factors == pytest.approx((1 / 1.5, 0.5 / 1.5, 0))

    outputs, targets = deep_supervision_batch(num_classes=3, labels_up_to=2)
    scc = SCCLoss(softmax=True, to_onehot_y=True, include_background=False)
    expected_scc_term = sum(w * scc(o, t) for w, o, t in zip(plain.weight_factors, outputs, targets, strict=True))
    scc_term = with_scc(outputs, targets) - plain(outputs, targets)
    torch.testing.assert_close(scc_term, nnUNetTrainerSCC.scc_weight * expected_scc_term)


def test_subclass_attributes_reach_the_loss():
    class Banded(nnUNetTrainerSCC):
        scc_weight, scc_spectrum, scc_bands = 2.0, "complex", 4

    loss = trainer_for_loss(Banded)._build_loss().loss
    assert loss.scc_weight == 2.0
    assert (loss.scc.options.spectrum, loss.scc.options.bands) == ("complex", 4)


@pytest.mark.parametrize("scc_batch", [False, True])
@pytest.mark.parametrize("is_ddp", [False, True])
def test_batch_scc_under_ddp_is_over_every_ranks_batch(scc_batch, is_ddp):
    """As nnU-Net's batch Dice under DDP: with scc_batch, r is over the global batch (sync_batch)."""

    class Batched(nnUNetTrainerSCC):
        pass

    Batched.scc_batch = scc_batch
    trainer = trainer_for_loss(Batched)
    trainer.is_ddp = is_ddp
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "sync_batch needs batch" warning either
        options = trainer._build_loss().loss.scc.options
    assert (options.batch, options.sync_batch) == (scc_batch, scc_batch and is_ddp)


def test_ignore_label_positions_get_no_gradient():
    labels = {**LABELS, "ignore": 3}
    loss = trainer_for_loss(nnUNetTrainerSCC, labels)._build_loss()
    outputs, targets = deep_supervision_batch(num_classes=3, labels_up_to=3)
    loss(outputs, targets).backward()
    ignored = (targets[0] == 3).expand_as(outputs[0])
    assert ignored.any() and torch.all(outputs[0].grad[ignored] == 0)
    assert outputs[0].grad[~ignored].abs().sum() > 0


def test_regions_are_refused():
    regions = {"background": 0, "whole": (1, 2), "core": 2}
    with pytest.raises(NotImplementedError, match="region"):
        trainer_for_loss(nnUNetTrainerSCC, regions, regions_class_order=[1, 2])._build_loss()


@pytest.mark.slow  # a fresh interpreter importing torch
def test_importing_scc_kernels_does_not_import_nnunetv2():
    code = "import sys, scc_kernels, scc_kernels.__main__; print('nnunetv2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout == "False\n"


# --- a real nnU-Net run ------------------------------------------------------------------------

DATASET_ID = 987
DATASET = f"Dataset{DATASET_ID}_Tiny"


def write_tiny_dataset(raw: pathlib.Path, cases=6, size=48) -> None:
    """nnU-Net's raw format, 2D PNG: a disc (1) and a square (2) on noise, a border strip to ignore (3)."""
    from PIL import Image

    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for case in range(cases):
        label = np.zeros((size, size), np.uint8)
        cy, cx, radius = *rng.integers(12, size - 12, 2), rng.integers(5, 9)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1
        top, left = rng.integers(2, size - 14, 2)
        label[top : top + 10, left : left + 10] = 2
        label[:, :2] = 3
        image = rng.normal(60, 15, (size, size)) + 70.0 * (label == 1) + 140.0 * (label == 2)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "imagesTr" / f"tiny_{case:03d}_0000.png")
        Image.fromarray(label).save(folder / "labelsTr" / f"tiny_{case:03d}.png")
    dataset = {
        "channel_names": {"0": "gray"},
        "labels": {**LABELS, "ignore": 3},
        "numTraining": cases,
        "file_ending": ".png",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


@pytest.fixture
def installed_trainer():
    """`python -m scc_kernels nnunet-install`, undone afterwards unless it was there before."""
    module = nnunet_install.trainer_folder() / f"{nnunet_install.MODULE_NAME}.py"
    was_installed = module.exists()
    run_cli = [sys.executable, "-m", "scc_kernels", "nnunet-install"]
    result = subprocess.run(run_cli, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and str(module) in result.stdout, result.stderr
    yield
    if not was_installed:
        result = subprocess.run([*run_cli, "--uninstall"], capture_output=True, text=True, timeout=120)
        assert result.stdout == f"removed {module}\n", result.stderr
        assert not module.exists()


@pytest.mark.slow  # a real nnUNetv2_train run
def test_nnunetv2_train_runs_the_scc_trainer(tmp_path, installed_trainer):
    write_tiny_dataset(tmp_path / "raw")
    env = {
        **os.environ,
        "nnUNet_raw": str(tmp_path / "raw"),
        "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
        "nnUNet_results": str(tmp_path / "results"),
        "nnUNet_def_n_proc": "1",
    }
    scripts = pathlib.Path(sys.executable).parent

    def run(*command, **extra_env):
        result = subprocess.run(
            [str(scripts / command[0]), *command[1:]],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    # one process each (fingerprint, preprocessing; augmentation in the training process itself): the
    # default worker pools take longer to start on 2 cores than the work takes; planning needs n_proc_DA >= 1
    run(
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(DATASET_ID),
        "-c",
        "2d",
        "-npfp",
        "1",
        "-np",
        "1",
        "--verify_dataset_integrity",
    )
    run(
        "nnUNetv2_train",
        str(DATASET_ID),
        "2d",
        "0",
        "-tr",
        nnUNetTrainerSCC_smoke.__name__,
        "-device",
        "cpu",
        nnUNet_n_proc_DA="0",
    )

    fold = tmp_path / "results" / DATASET / f"{nnUNetTrainerSCC_smoke.__name__}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert "SCCLoss" in json.loads((fold / "debug.json").read_text())["loss"]
    assert "mean" in json.loads((fold / "validation" / "summary.json").read_text())
