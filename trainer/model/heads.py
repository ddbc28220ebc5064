"""Classification heads: LayerNorm + Linear on a pooled representation (the official `mlp_head*`)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .init import init_head


class ClassifierHead(nn.Module):
    """Pooled features [B, in_dim] -> logits [B, num_classes]."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc = nn.Linear(in_dim, num_classes)
        init_head(self)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled))

    def reset(self, num_classes: int) -> None:
        """A fresh classifier for `num_classes` outputs (e.g. fine-tuning on another label set)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes).to(self.fc.weight.device)
        init_head(self.fc)
