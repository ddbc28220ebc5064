"""Running samples whose masks keep different numbers of tokens: sub-batches or one packed pass.

Multi-ratio masking gives groups of samples with different visible-token counts. Two ways to run
them through the encoder:
- sub-batches (the official code): one encoder pass per distinct count (`split_by_count`);
- packing: samples of different counts share a row of the batch (e.g. 409 + 102 audio tokens in one
  512-long row), attention restricted to each sample by a block-diagonal mask (`PackPlan`), so all
  groups go through the encoder in a single pass.
Index tensors are built on the device with vectorised ops; Python loops run over distinct counts
(the groups), never over samples.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def visible_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """[B, N] bool (True = dropped) -> [B, count] indices of the kept tokens, ascending."""
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return order[:, :count]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], index [B, n] -> [B, n, D]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, *args, checkpointing: bool = False) -> torch.Tensor:
    """Apply `blocks` in order; with `checkpointing`, recompute each in backward (non-reentrant)."""
    use_ckpt = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, *args, use_reentrant=False) if use_ckpt else block(x, *args)
    return x


def keep_counts(mask: torch.Tensor) -> torch.Tensor:
    return (~mask).sum(dim=1)


def split_by_count(mask: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """[(sample indices, kept count)] for each distinct kept count, largest count first."""
    counts = keep_counts(mask)
    values = torch.unique(counts).tolist()
    if values[0] == 0:
        raise ValueError("a mask drops every token of a sample; keep at least one token per sample")
    return [(torch.nonzero(counts == c).squeeze(1), int(c)) for c in sorted(values, reverse=True)]


def uniform_count(mask: torch.Tensor, name: str) -> int:
    """The kept count shared by every sample of `mask`; a clear error when they differ."""
    counts = keep_counts(mask)
    low, high = int(counts.min()), int(counts.max())
    if low != high:
        raise ValueError(f"{name} masks keep {low}..{high} tokens per sample; this pass needs one count "
                         "for all samples (use random_masks with a single ratio)")
    return low


def _row_types(counts: Counter, capacity: int) -> list[tuple[tuple[int, ...], int]]:
    """First-fit-decreasing at group level: [(counts packed in one row, number of such rows)]."""
    remaining = Counter(counts)
    rows = []
    while remaining:
        space, used = capacity, Counter()
        for c in sorted(remaining, reverse=True):
            while c <= space and used[c] < remaining[c]:
                used[c] += 1
                space -= c
        repeat = min(remaining[c] // n for c, n in used.items())
        composition = tuple(c for c in sorted(used, reverse=True) for _ in range(used[c]))
        rows.append((composition, repeat))
        for c, n in used.items():
            remaining[c] -= n * repeat
        remaining = +remaining  # drop exhausted counts
    return rows


@dataclass
class PackPlan:
    """Where each kept token goes in a packed [rows, capacity] batch."""

    token_index: torch.Tensor  # [R, C] index into tokens.flatten(0, 1); padding points at 0
    sample: torch.Tensor       # [R, C] sample of each position; -1 for padding
    batch_size: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor, capacity: int | None = None) -> "PackPlan":
        batch, num_tokens = mask.shape
        groups = split_by_count(mask)
        capacity = capacity or groups[0][1]
        if groups[0][1] > capacity:
            raise ValueError(f"a sample keeps {groups[0][1]} tokens, more than the row capacity {capacity}")
        next_sample = {c: 0 for _, c in groups}
        by_count = {c: idx for idx, c in groups}
        index_rows, sample_rows = [], []
        for composition, repeat in _row_types(Counter({c: len(idx) for idx, c in groups}), capacity):
            index = torch.zeros(repeat, capacity, dtype=torch.long, device=mask.device)
            sample = torch.full((repeat, capacity), -1, dtype=torch.long, device=mask.device)
            offset = 0
            for c in composition:
                start = next_sample[c]
                chosen = by_count[c][start:start + repeat]
                next_sample[c] = start + repeat
                kept = visible_indices(mask[chosen], c)
                index[:, offset:offset + c] = chosen[:, None] * num_tokens + kept
                sample[:, offset:offset + c] = chosen[:, None]
                offset += c
            index_rows.append(index)
            sample_rows.append(sample)
        return cls(torch.cat(index_rows), torch.cat(sample_rows), batch)

    def pack(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] -> packed [R, C, D]."""
        return tokens.flatten(0, 1)[self.token_index]

    def attention_mask(self) -> torch.Tensor:
        """[R, 1, C, C] bool, True where query and key belong to the same sample (or both padding)."""
        return (self.sample[:, :, None] == self.sample[:, None, :]).unsqueeze(1)

    def mean_per_sample(self, packed: torch.Tensor) -> torch.Tensor:
        """packed [R, C, D] -> [B, D]: the mean of each sample's tokens."""
        dim = packed.shape[-1]
        target = torch.where(self.sample >= 0, self.sample, self.batch_size).flatten()
        flat = packed.reshape(-1, dim).to(torch.promote_types(packed.dtype, torch.float32))  # >= fp32 sums
        sums = flat.new_zeros(self.batch_size + 1, dim).index_add(0, target, flat)
        counts = torch.bincount(target, minlength=self.batch_size + 1).to(flat.dtype)
        return (sums[: self.batch_size] / counts[: self.batch_size, None].clamp(min=1)).to(packed.dtype)
