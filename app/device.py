"""Choosing the torch device from a setting."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an explicit CUDA device without CUDA is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return device
