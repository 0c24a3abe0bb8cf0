"""A batch of variable-length encodings.

Token counts here always mean **the number of tokens kept** in a block, in [1, tokens_per_block].
The official code is off by one in places: its training sampler and adaptive search build the mask
``arange(T) <= n`` and so keep ``n + 1`` tokens while reporting ``n`` ("Tokens Used"); its fixed-count
helpers use ``arange(T) < n`` and keep ``n``. An official reported count ``n`` from the search is our
``min(n + 1, T)``; an official fixed-count ``n`` is our ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def is_context_window(value: object) -> bool:
    """None (every earlier block) or an int >= 1: a valid number of earlier blocks in context."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


@dataclass
class Tokens:
    """Encodings of a batch of videos, block by block.

    - ``counts`` (B, n_blocks) long: tokens kept per block.
    - ``values``: FSQ indices (B, n_blocks, T) long, or VAE latents (B, n_blocks, T, D) float, where T
      is the model's tokens per block. Entries at positions >= the block's count are padding and are
      ignored by the decoder.
    - ``num_frames``: the true frame count of the input (the last block may be padded by repeating
      the last frame); ``frame_size`` (H, W) of the input.
    - ``context_blocks``: how many earlier blocks each block attended to when it was encoded (None:
      all of them); decoding must use the same window to reproduce the encoder's reconstruction.
    - ``keyframes``: None, or (B, n_blocks) bool, True at blocks coded afresh (attending to no
      earlier block); block 0 always is one.
    - ``start_block``: the index of the first block in the video it came from (blocks read from the
      middle of a token file), which sets its positions.
    """

    counts: torch.Tensor
    values: torch.Tensor
    kind: str
    num_frames: int
    frame_size: tuple[int, int]
    context_blocks: int | None = None
    keyframes: torch.Tensor | None = None
    start_block: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("fsq", "vae"):
            raise ValueError(f"Tokens.kind must be 'fsq' or 'vae', got {self.kind!r}")
        expected_rank = 3 if self.kind == "fsq" else 4
        if self.counts.ndim != 2 or self.values.ndim != expected_rank or self.values.shape[:2] != self.counts.shape:
            raise ValueError(
                f"Tokens: expected counts (B, n_blocks) and {self.kind} values of rank {expected_rank} starting "
                f"with the same (B, n_blocks); got counts {tuple(self.counts.shape)}, values {tuple(self.values.shape)}"
            )
        if not is_context_window(self.context_blocks):
            raise ValueError(f"Tokens.context_blocks must be None or an int >= 1, got {self.context_blocks!r}")
        if isinstance(self.start_block, bool) or not isinstance(self.start_block, int) or self.start_block < 0:
            raise ValueError(f"Tokens.start_block must be an int >= 0, got {self.start_block!r}")
        self.check_values()
        keys = self.keyframes
        if keys is not None and (keys.dtype != torch.bool or keys.shape != self.counts.shape):
            raise ValueError(
                f"Tokens.keyframes must be None or a bool tensor shaped like counts {tuple(self.counts.shape)}, "
                f"got {keys.dtype} {tuple(keys.shape)}"
            )

    def check_values(self, codebook_size: int | None = None) -> None:
        """Refuse kept tokens no decoder can take: FSQ indices that are not integers, negative or (given
        the codebook's size) past its end; VAE latents that are NaN or infinite. Padding is not read."""
        kept = self.values[self.keep_mask().to(self.values.device)]  # (N,) indices or (N, D) latents
        if self.kind == "fsq":
            if self.values.is_floating_point() or self.values.is_complex() or self.values.dtype == torch.bool:
                raise ValueError(f"Tokens: expected integer FSQ indices, got dtype {self.values.dtype}")
            if kept.numel() and int(kept.min()) < 0:
                raise ValueError(f"Tokens: expected FSQ indices >= 0, got {int(kept.min())}")
            if codebook_size is not None and kept.numel() and int(kept.max()) >= codebook_size:
                raise ValueError(f"Tokens: expected FSQ indices below the codebook size {codebook_size}, "
                                 f"got {int(kept.max())}")
        elif not self.values.is_floating_point():
            raise ValueError(f"Tokens: expected floating-point VAE latents, got dtype {self.values.dtype}")
        elif not bool(torch.isfinite(kept).all()):
            raise ValueError("Tokens: expected finite VAE latents, got NaN or infinity")

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.counts.shape[1]

    @property
    def tokens_per_block(self) -> int:
        return self.values.shape[2]

    @property
    def total_tokens(self) -> torch.Tensor:
        """(B,) tokens kept over all blocks."""
        return self.counts.sum(1)

    def keep_mask(self) -> torch.Tensor:
        """(B, n_blocks, T) boolean: True at kept positions."""
        pos = torch.arange(self.tokens_per_block, device=self.counts.device)
        return pos < self.counts[..., None]

    def block(self, b: int, i: int) -> torch.Tensor:
        """The kept tokens of block i of sample b: (n,) indices or (n, D) latents."""
        return self.values[b, i, : int(self.counts[b, i])]

    def to_list(self) -> list[torch.Tensor]:
        """One flat sequence per sample, the kept tokens of each block in order, for a language model.

        FSQ gives (N_b,) long indices, VAE (N_b, D) latents. Block boundaries are ``counts``.
        """
        return [torch.cat([self.block(b, i) for i in range(self.num_blocks)]) for b in range(self.batch_size)]

    def to(self, device: torch.device | str) -> "Tokens":
        keys = None if self.keyframes is None else self.keyframes.to(device)
        return replace(self, counts=self.counts.to(device), values=self.values.to(device), keyframes=keys)

    def select(self, index: int | slice) -> "Tokens":
        """Samples of the batch (a single int keeps the batch axis)."""
        idx = slice(index, index + 1) if isinstance(index, int) else index
        keys = None if self.keyframes is None else self.keyframes[idx]
        return replace(self, counts=self.counts[idx], values=self.values[idx], keyframes=keys)
