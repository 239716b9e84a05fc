"""Kernel tests run Triton's interpreter on the CPU: it must be switched on before triton is imported.

On a machine with CUDA the variable is left alone, so the same tests exercise the compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
