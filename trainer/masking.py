"""Token masks for pretraining, built on the device without loops over samples.

Masks are explicit inputs of the model's forward so a second pass (e.g. a replay) sees exactly the
same tokens. `True` marks a dropped token. Every sample of a ratio group drops exactly the same
number of tokens (N - floor(N * (1 - ratio)), the official count), so groups have fixed lengths.

- `MultiRatioMasker`: the batch is split at random into len(ratios) balanced groups, one ratio each
  (official: 5 groups {0, .2, .4, .6, .8}; audio and visual get independent group draws). Visual
  masking is unstructured. Audio masking (`audio_mask`) is time+frequency "tf" masking:
  floor(0.7 * ratio * T) time columns and floor(0.7 * ratio * F) frequency rows of the (F x T) patch
  grid are forced out, the rest of the exact count at random.
  - `official` (default, the paper presets): the official rule as written: the forced tokens take one
    value (1.1) above every random score and the lowest `keep` of an argsort are kept. Where the lines
    hold more tokens than the count (ratios 0.2, 0.4 and 0.6 on the 8 x 64 grid) the sort's order among
    those equal values decides which forced tokens stay, so lines are often broken there: whole
    columns / rows dropped on average 2.3 / 0.15 at 0.2, 6.1 / 0.9 at 0.4, 17.5 / 1.9 at 0.6 (the
    official code's own figures, measured against tests/official_reference.py). The argsort runs on
    the CPU (a [batch, tokens] sort, cheap) because torch's CPU sort is what those figures come from;
    a GPU sort orders equal values differently.
  - `structured`: the lines are kept whole: where they hold more than the count, whole frequency
    rows, then columns, are given up until they fit (8 / 0 at 0.2, 17 / 1 at 0.4, 26 / 2 at 0.6).
  - `unstructured`: random tokens, like visual.
- `random_masks`: one unstructured ratio for every sample (MAE reconstruction, 75%).
Draws come from the given `torch.Generator` (on its device), so masks are deterministic per seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPS = 1e-9
_FORCED = 1.1           # the official score of forced tokens: above every uniform [0, 1) draw
AUDIO_MASKS = ("official", "structured", "unstructured")


@dataclass(frozen=True)
class TokenMasks:
    """Per-sample token masks: audio bool [B, Na], visual bool [B, Nv]; True = dropped."""

    audio: torch.Tensor
    visual: torch.Tensor

    def __post_init__(self) -> None:
        for name, m in (("audio", self.audio), ("visual", self.visual)):
            if m.dtype != torch.bool or m.dim() != 2:
                raise ValueError(f"{name} mask must be bool [batch, tokens], got {m.dtype} {tuple(m.shape)}")
        if self.audio.shape[0] != self.visual.shape[0]:
            raise ValueError(f"audio and visual masks have batch sizes {self.audio.shape[0]} and {self.visual.shape[0]}")

    def __len__(self) -> int:
        return self.audio.shape[0]

    def __getitem__(self, index) -> "TokenMasks":
        """Masks of a subset of samples (slice, index tensor or list), e.g. masks[i:j] for chunking."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TokenMasks(self.audio[index], self.visual[index])

    def to(self, device: torch.device | str) -> "TokenMasks":
        return TokenMasks(self.audio.to(device), self.visual.to(device))


def keep_count(num_tokens: int, ratio: float) -> int:
    """Tokens kept at a masking ratio: floor(N * (1 - ratio)) as the official code counts, at least 1."""
    return max(1, int(math.floor(num_tokens * (1.0 - ratio) + _EPS)))


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _ranks(noise: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim (0 = smallest)."""
    return torch.argsort(torch.argsort(noise, dim=-1), dim=-1)


def mask_from_noise(noise: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Drop all but the `keep[i]` lowest-noise tokens of each row i. noise [B, N], keep [B] -> bool [B, N]."""
    return _ranks(noise) >= keep[:, None]


def _balanced_groups(batch: int, groups: int, generator, device) -> torch.Tensor:
    """Group id per sample: a random permutation cut into `groups` parts differing by at most one."""
    position = _ranks(_rand((batch,), generator, device))
    return position * groups // max(batch, 1)


def official_tf_lines(grid: tuple[int, int], ratio: float, fraction: float = 0.7) -> tuple[int, int]:
    """(frequency rows, time columns) the official code forces out: int(lines * ratio * fraction) each."""
    rows, cols = grid
    return int(math.floor(rows * ratio * fraction + _EPS)), int(math.floor(cols * ratio * fraction + _EPS))


def _official_tie_mask(noise: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The official selection: keep the first `keep[i]` tokens of a CPU argsort of row i (forced
    tokens share one value, so the sort's order among them decides which stay)."""
    order = torch.argsort(noise.float().cpu(), dim=-1)
    ranks = torch.argsort(order, dim=-1).to(noise.device)
    return ranks >= keep[:, None]


def tf_lines(grid: tuple[int, int], ratio: float, fraction: float = 0.7) -> tuple[int, int]:
    """(frequency rows, time columns) dropped whole at `ratio`: floor(fraction * ratio * lines) each
    (the official counts), minus whole rows, then columns, until they fit in the exact masked count."""
    rows, cols = grid
    n_rows, n_cols = official_tf_lines(grid, ratio, fraction)
    masked = rows * cols - keep_count(rows * cols, ratio)
    while n_rows * cols + n_cols * rows - n_rows * n_cols > masked:
        if n_rows > 0:
            n_rows -= 1
        else:
            n_cols -= 1
    return n_rows, n_cols


def _tf_forced(n_rows: torch.Tensor, n_cols: torch.Tensor, grid: tuple[int, int], generator, device) -> torch.Tensor:
    """bool [B, F*T] (frequency-major): tokens on n_rows[i] random frequency rows and n_cols[i] random
    time columns of each sample i."""
    rows, cols = grid
    batch = n_rows.shape[0]
    col_out = _ranks(_rand((batch, cols), generator, device)) < n_cols[:, None]
    row_out = _ranks(_rand((batch, rows), generator, device)) < n_rows[:, None]
    return (row_out[:, :, None] | col_out[:, None, :]).flatten(1)


@dataclass(kw_only=True)
class MultiRatioMasker:
    """Multi-ratio masks for the contrastive branch. Call with (batch_size, generator=, device=)."""

    ratios: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    audio_grid: tuple[int, int] = (8, 64)     # (frequency rows, time columns) of audio patches
    visual_grid: tuple[int, int] = (14, 14)
    audio_mask: str = "official"              # official | structured | unstructured (module docstring)
    structured_fraction: float = 0.7          # share of the ratio taken by whole time/frequency lines
    same_groups: bool = False                 # True: a sample's audio and visual share one ratio

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)
        if not self.ratios or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ValueError(f"ratios must be a non-empty list of values in [0, 1), got {self.ratios}")
        if self.audio_mask not in AUDIO_MASKS:
            raise ValueError(f"audio_mask must be one of {', '.join(AUDIO_MASKS)}; got {self.audio_mask!r}")
        if not 0.0 <= self.structured_fraction <= 1.0:
            raise ValueError(f"structured_fraction must be in [0, 1], got {self.structured_fraction}")
        self.audio_grid, self.visual_grid = tuple(self.audio_grid), tuple(self.visual_grid)

    @property
    def audio_tokens(self) -> int:
        return self.audio_grid[0] * self.audio_grid[1]

    @property
    def visual_tokens(self) -> int:
        return self.visual_grid[0] * self.visual_grid[1]

    def __call__(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> TokenMasks:
        device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
        group_a = _balanced_groups(batch_size, len(self.ratios), generator, device)
        group_v = group_a if self.same_groups else _balanced_groups(batch_size, len(self.ratios), generator, device)
        keep_a = torch.tensor([keep_count(self.audio_tokens, r) for r in self.ratios], device=device)[group_a]
        keep_v = torch.tensor([keep_count(self.visual_tokens, r) for r in self.ratios], device=device)[group_v]
        noise_a = _rand((batch_size, self.audio_tokens), generator, device)
        if self.audio_mask == "unstructured":
            mask_a = mask_from_noise(noise_a, keep_a)
        else:
            line_rule = tf_lines if self.audio_mask == "structured" else official_tf_lines
            lines = torch.tensor([line_rule(self.audio_grid, r, self.structured_fraction) for r in self.ratios],
                                 device=device)[group_a]
            forced = _tf_forced(lines[:, 0], lines[:, 1], self.audio_grid, generator, device)
            if self.audio_mask == "structured":
                mask_a = mask_from_noise(noise_a + 2.0 * forced, keep_a)
            else:
                mask_a = _official_tie_mask(noise_a.masked_fill(forced, _FORCED), keep_a)
        noise_v = _rand((batch_size, self.visual_tokens), generator, device)
        return TokenMasks(mask_a, mask_from_noise(noise_v, keep_v))


def random_masks(batch_size: int, ratio: float, audio_tokens: int, visual_tokens: int,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> TokenMasks:
    """Unstructured masks dropping exactly N - floor(N * (1 - ratio)) tokens of every sample."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    masks = []
    for n in (audio_tokens, visual_tokens):
        keep = torch.full((batch_size,), keep_count(n, ratio), device=device)
        masks.append(mask_from_noise(_rand((batch_size, n), generator, device), keep))
    return TokenMasks(*masks)
