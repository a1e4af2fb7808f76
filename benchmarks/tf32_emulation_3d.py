"""3D version of tf32_emulation.py (read its docstring): the same CPU emulation of the Triton DFT
dots against SPEC §4, for (n, n, n) volumes of 3 classes. The W and H stages run in the mode
under test, the D stage elementwise in float32 as in the kernels. CPU emulation, not a GPU
measurement.

    python benchmarks/tf32_emulation_3d.py [--sizes 64 128] [--seeds 2] [--modes tf32 tf32x3]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tf32_emulation import main


def axis_modes(mode, dims):  # (D, H, W): the D stage is elementwise float32 on the CUDA cores
    return ("ieee", mode, mode)


if __name__ == "__main__":
    main(3, [64, 128], channels=3, axis_modes=axis_modes)
