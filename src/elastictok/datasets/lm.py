"""Token datasets as language-model training data, and generated sequences back to :class:`Tokens`.

Vocabulary (``V`` = the FSQ codebook size)::

    0 .. V-1   codebook indices
    V          BOC  begin of clip
    V + 1      EOC  end of clip
    V + 2      BOB  begin of a block that continues the context
    V + 3      BOK  begin of a keyframe block (coded afresh; the first block always is one)
    V + 4      PAD  padding after the last clip of a packed sequence

A clip is ``BOC, BOK, t, t, ..., BOB, t, ..., EOC``: each block's kept tokens follow its marker, so
counts, which vary from block to block, are where the next marker stands.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from elastictok.datasets.reader import TokenDataset
from elastictok.model.config import ElasticTokConfig
from elastictok.model.tokens import Tokens


class SequenceError(ValueError):
    """A token sequence that is not a well-formed clip (always one line, with the position)."""


@dataclass(frozen=True)
class Vocabulary:
    """The ids of LM sequences over a codebook of ``codebook_size`` entries (layout in the module doc)."""

    codebook_size: int

    @property
    def boc(self) -> int:
        return self.codebook_size

    @property
    def eoc(self) -> int:
        return self.codebook_size + 1

    @property
    def bob(self) -> int:
        return self.codebook_size + 2

    @property
    def bok(self) -> int:
        return self.codebook_size + 3

    @property
    def pad(self) -> int:
        return self.codebook_size + 4

    @property
    def size(self) -> int:
        return self.codebook_size + 5

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.size <= 1 << 16 else np.int32)

    @classmethod
    def for_config(cls, config: ElasticTokConfig) -> Vocabulary:
        if config.bottleneck != "fsq":
            raise ValueError(f"LM sequences need discrete (fsq) tokens; the model has a {config.bottleneck} bottleneck")
        return cls(config.codebook_size)

    def clip_ids(self, counts: Sequence[int], tokens: np.ndarray, keyframes: Sequence[bool]) -> np.ndarray:
        """One clip's sequence: BOC, then each block's marker and kept tokens, then EOC."""
        counts_a = np.asarray(counts, dtype=np.int64)
        out = np.empty(2 + len(counts_a) + int(counts_a.sum()), dtype=self.dtype)
        markers = 1 + np.arange(len(counts_a)) + np.concatenate(([0], np.cumsum(counts_a)[:-1]))
        is_token = np.ones(len(out), dtype=bool)
        is_token[[0, -1]] = False
        is_token[markers] = False
        out[0], out[-1] = self.boc, self.eoc
        out[markers] = np.where(np.asarray(keyframes, dtype=bool), self.bok, self.bob)
        out[is_token] = np.asarray(tokens)
        return out

    def parse(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[list[int], np.ndarray, list[bool]]:
        """A clip's sequence -> (per-block counts, kept tokens in block order, keyframe flags).

        Trailing PAD after EOC is allowed; anything else out of place raises :class:`SequenceError`.
        """
        a = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
            raise SequenceError(f"expected a 1-D sequence of integer ids, got {a.dtype} of shape {a.shape}")
        a = a.astype(np.int64)
        if a.size == 0 or a[0] != self.boc:
            got = self._name(a[0]) if a.size else "nothing"
            raise SequenceError(f"position 0: expected begin-of-clip (id {self.boc}), got {got}")
        ends = np.flatnonzero(a == self.eoc)
        if ends.size == 0:
            raise SequenceError(f"the sequence has no end-of-clip (id {self.eoc}); was it cut short?")
        end = int(ends[0])
        trailing = np.flatnonzero(a[end + 1 :] != self.pad)
        if trailing.size:
            p = end + 1 + int(trailing[0])
            raise SequenceError(f"position {p}: {self._name(a[p])} after end-of-clip (only padding may follow)")
        body = a[1:end]
        is_marker = (body == self.bob) | (body == self.bok)
        bad = np.flatnonzero(~is_marker & ((body < 0) | (body >= self.codebook_size)))
        if bad.size:
            p = int(bad[0])
            raise SequenceError(f"position {p + 1}: {self._name(body[p])} inside a clip "
                                "(expected codebook ids and block markers)")
        if body.size == 0 or not is_marker[0]:
            got = self._name(body[0]) if body.size else "end-of-clip"
            raise SequenceError(f"position 1: expected a block marker (BOK {self.bok}), got {got}")
        if body[0] != self.bok:
            raise SequenceError(f"position 1: the first block must begin with BOK (id {self.bok}), got BOB")
        starts = np.flatnonzero(is_marker)
        counts = np.diff(np.append(starts, body.size)) - 1
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise SequenceError(f"position {int(starts[empty[0]]) + 1}: block {int(empty[0])} has no tokens")
        return counts.tolist(), body[~is_marker], (body[starts] == self.bok).tolist()

    def _name(self, value: int) -> str:
        names = {self.boc: "BOC", self.eoc: "EOC", self.bob: "BOB", self.bok: "BOK", self.pad: "PAD"}
        return f"{names[int(value)]} ({int(value)})" if int(value) in names else f"id {int(value)}"


def sequence_to_tokens(
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    config: ElasticTokConfig,
    frame_size: tuple[int, int] | None = None,
    num_frames: int | None = None,
    context_blocks: int | None = None,
) -> Tokens:
    """A clip's LM sequence (e.g. generated by a model) -> batch-of-one :class:`Tokens` for ``model.decode``.

    ``frame_size`` defaults to the model's training size, ``num_frames`` to every block full and
    ``context_blocks`` to the model's trained window (what ``tokenize`` records by default).
    """
    vocab = Vocabulary.for_config(config)
    counts, kept, keyframes = vocab.parse(ids)
    size = tuple(frame_size or config.frame_size)
    T, fpb, n = config.tokens_per_block(size), config.frames_per_block, len(counts)
    over = [i for i, c in enumerate(counts) if c > T]
    if over:
        i = over[0]
        raise SequenceError(f"block {i} has {counts[i]} tokens; {size[0]}x{size[1]} frames have {T} per block")
    frames = n * fpb if num_frames is None else num_frames
    if not (n - 1) * fpb < frames <= n * fpb:
        raise SequenceError(f"{n} blocks of {fpb} frames hold {(n - 1) * fpb + 1}..{n * fpb} frames, not {frames}")
    values = torch.zeros(1, n, T, dtype=torch.long)
    for i, block in enumerate(np.split(kept, np.cumsum(counts)[:-1])):
        values[0, i, : len(block)] = torch.from_numpy(block)
    keys = torch.tensor([keyframes]) if any(keyframes[1:]) else None
    window = config.context_window(context_blocks)
    return Tokens(torch.tensor([counts]), values, "fsq", frames, size, window, keys)  # type: ignore[arg-type]


class LMSequences(Dataset):
    """A token dataset as language-model training sequences.

    Without ``seq_len`` each item is one clip's sequence (``input_ids``, variable length). With it,
    clips are concatenated (in dataset order, or shuffled with ``seed``) and cut into windows of
    ``seq_len`` ids; a clip may continue into the next window, and the last window is padded with PAD.
    Each item holds ``input_ids``, ``document_ids`` (the clip's row index, -1 on padding) and
    ``position_ids`` (the position within its clip); :func:`document_mask` turns the document ids
    into a causal attention mask that keeps clips apart. All ids are held in memory (2 bytes each).
    """

    def __init__(self, dataset: TokenDataset | str | os.PathLike[str], seq_len: int | None = None,
                 seed: int | None = None) -> None:
        self.dataset = dataset if isinstance(dataset, TokenDataset) else TokenDataset(dataset)
        if seq_len is not None and not (isinstance(seq_len, int) and seq_len >= 2):
            raise ValueError(f"expected seq_len to be an int >= 2, got {seq_len!r}")
        self.vocab = Vocabulary.for_config(self.dataset.config)
        self.seq_len = seq_len
        clips = [self.vocab.clip_ids(r["counts"], np.asarray(r["tokens"]), r["keyframes"])
                 for r in self._columns()]
        order = np.arange(len(clips)) if seed is None else np.random.default_rng(seed).permutation(len(clips))
        self.order = order
        self.stream = np.concatenate([clips[i] for i in order]) if clips else np.empty(0, self.vocab.dtype)
        self.offsets = np.concatenate(([0], np.cumsum([len(clips[i]) for i in order]))).astype(np.int64)

    def _columns(self):
        for batch in self.dataset.batches(["counts", "keyframes", "tokens"]):
            counts, keys, tokens = (batch.column(c) for c in ("counts", "keyframes", "tokens"))
            for i in range(batch.num_rows):
                yield {"counts": counts[i].as_py(), "keyframes": keys[i].as_py(),
                       "tokens": tokens[i].values.to_numpy(zero_copy_only=False)}

    def __len__(self) -> int:
        if self.seq_len is None:
            return len(self.offsets) - 1
        return -(-len(self.stream) // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        if self.seq_len is None:
            ids = self.stream[self.offsets[index] : self.offsets[index + 1]]
            return {"input_ids": torch.from_numpy(ids.astype(np.int64)), "document_ids": torch.full(
                (len(ids),), int(self.order[index])), "position_ids": torch.arange(len(ids))}
        start = index * self.seq_len
        ids = self.stream[start : start + self.seq_len].astype(np.int64)
        positions = np.arange(start, start + len(ids))
        docs = np.searchsorted(self.offsets, positions, side="right") - 1
        pad = self.seq_len - len(ids)
        return {
            "input_ids": torch.from_numpy(np.pad(ids, (0, pad), constant_values=self.vocab.pad)),
            "document_ids": torch.from_numpy(np.pad(self.order[docs], (0, pad), constant_values=-1)),
            "position_ids": torch.from_numpy(np.pad(positions - self.offsets[docs], (0, pad))),
        }


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(..., L) document ids -> (..., L, L) bool: causal attention within each document (padding sees itself)."""
    same = document_ids[..., :, None] == document_ids[..., None, :]
    L = document_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=document_ids.device).tril()
    return same & causal
