"""`python -m scc_kernels nnunet-install [--uninstall]`: let nnU-Net v2 find nnUNetTrainerSCC by name.

Writes a one-line module re-exporting this package's trainers into nnU-Net's own trainer folder,
where nnU-Net looks up `-tr NAME`; nnunetv2 is never imported (docs/internals.md).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

MODULE_NAME = "nnUNetTrainerSCC_scc_kernels"
MODULE_TEXT = (
    "# written by `python -m scc_kernels nnunet-install`;"
    " `python -m scc_kernels nnunet-install --uninstall` removes it\n"
    "from scc_kernels.integrations.nnunet import *  # noqa: F401,F403\n"
)


def trainer_folder() -> pathlib.Path | None:
    """nnunetv2/training/nnUNetTrainer of the installed nnunetv2, or None if there is none."""
    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "training" / "nnUNetTrainer"


def unusable_reason() -> str | None:
    """Why nnunet-install cannot run here (one line), or None."""
    folder = trainer_folder()
    if folder is None:
        return "nnunet-install needs nnunetv2: pip install nnunetv2 -c FILE (FILE pins your torch, e.g. torch==2.13.0)"
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return f"nnunet-install: cannot write to nnU-Net's trainer folder {folder}"
    return None


def _usable_folder() -> pathlib.Path:
    """trainer_folder(), which the command line has checked (`unusable_reason`) before it installs."""
    folder = trainer_folder()
    if folder is None:
        raise RuntimeError(unusable_reason())
    return folder


def install() -> int:
    module = _usable_folder() / f"{MODULE_NAME}.py"
    action = "updated" if module.exists() else "wrote"
    module.write_text(MODULE_TEXT)
    print(f"{action} {module}: nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerSCC now finds the trainer")
    return 0


def uninstall() -> int:
    folder = _usable_folder()
    module = folder / f"{MODULE_NAME}.py"
    if not module.exists():
        print(f"nothing to remove: {module} is not there")
        return 0
    module.unlink()
    for compiled in (folder / "__pycache__").glob(f"{MODULE_NAME}.*.pyc"):  # what importing it left
        compiled.unlink()
    print(f"removed {module}")
    return 0
