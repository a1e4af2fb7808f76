import os

import torch

# The triton backend runs on CPU tensors in Triton's interpreter; it must be set before triton
# is imported, and only where there is no GPU to run the real kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
