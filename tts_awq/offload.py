"""Keep a lookup table in host memory and move only the looked-up rows to the compute device.

The talker's text embedding (151936 x 2048, 0.62 GB in BF16) is read a few rows per generated frame, so on a small
GPU it belongs in host RAM: a lookup costs one small host-to-device copy of the rows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HostEmbedding(nn.Module):
    """An ``nn.Embedding`` stand-in whose table is a plain attribute, so ``Module.to(device)`` never moves it."""

    def __init__(self, weight: torch.Tensor, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.host_weight = weight.detach().to(device)
        if self.host_weight.device.type == "cpu" and torch.cuda.is_available():
            self.host_weight = self.host_weight.pin_memory()  # asynchronous row copies to the GPU
        self.num_embeddings, self.embedding_dim = weight.shape

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, device: torch.device | str = "cpu") -> HostEmbedding:
        return cls(embedding.weight.data, device)

    @property
    def weight(self) -> torch.Tensor:
        return self.host_weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids.to(self.host_weight.device), self.host_weight)
        return rows.to(ids.device, non_blocking=True)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, host={self.host_weight.device}"
