"""Small constant tensors (temperatures) made once per (values, dtype, device).

A loss that built them from Python numbers at every call would copy host memory to the
device inside the training step: a copy the GPU waits for, and one that a CUDA graph cannot
record (the graph would keep a pointer to a temporary host buffer). Cached, they are made on
the first call and reused after, at the same address.
"""

from __future__ import annotations

import torch

_CACHE: dict = {}


def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made once and then reused;
    callers must not modify it (nor pass values they have not checked)."""
    key = (tuple((type(v), v) for v in values), dtype, str(torch.device(device)))  # True is not 1.0
    tensor = _CACHE.get(key)
    if tensor is None:
        with torch.inference_mode(False):  # also usable by calls that need gradients later
            tensor = _CACHE[key] = torch.tensor([float(v) for v in values], dtype=dtype).to(device)
    return tensor
