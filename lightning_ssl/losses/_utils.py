from __future__ import annotations

import functools

import torch


def full_precision(fn):
    """Run a loss in float32 even inside a bf16/fp16 autocast region: logits divided by a small temperature
    and softmax-centering lose too much in half precision."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
