"""Pure-Python install by default; SCC_KERNELS_BUILD_CUDA=1 also builds the CUDA extension.

A plain `pip install .` never imports torch in the build environment.
"""

import os

from setuptools import setup

setup()
