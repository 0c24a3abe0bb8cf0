"""Coding one block at candidate token counts against a fixed past, and batching those candidates."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from elastictok.coding.target import BlockScorer
from elastictok.model.autoencoder import BlockStep, ElasticTok, KVCache, StreamState


def broadcast_state(state: StreamState, k: int) -> StreamState:
    """The same past seen by ``k`` candidates at once (expanded views, no copies)."""

    def expand(cache: KVCache) -> KVCache:
        layers = None if cache.layers is None else [
            (a.expand(k, -1, -1, -1), b.expand(k, -1, -1, -1)) for a, b in cache.layers
        ]
        return KVCache(layers, cache.num_blocks)

    return StreamState(state.frame_size, expand(state.enc), expand(state.dec), state.next_block)


class BlockCoder:
    """Codes one block at candidate counts against a fixed past, remembering the winner's state."""

    def __init__(self, model: ElasticTok, patches: torch.Tensor, state: StreamState, scorer: BlockScorer) -> None:
        self.model, self.patches, self.state, self.scorer = model, patches, state, scorer
        self.steps: dict[int, BlockStep] = {}
        self.values: dict[int, float] = {}
        # The largest count coded so far while none passes: what a search returns when nothing does.
        self.fallback: tuple[int, BlockStep] | None = None
        self.z_pre = None
        if model.config.encoder_conditioning == "none":
            # The unconditioned encoder does not see the count: encode once, decode per candidate.
            full = torch.tensor([patches.shape[1]], device=patches.device)
            self.z_pre, _, self.enc_kv = model.encode_block(patches, full, state)

    def step(self, n: int) -> BlockStep:
        return self.steps_for([n])[0]

    def steps_for(self, ns: list[int]) -> list[BlockStep]:
        """Candidates ``ns`` coded in one batched pass against the shared past."""
        k, dev = len(ns), self.patches.device
        counts = torch.tensor(ns, device=dev)
        state = self.state if k == 1 else broadcast_state(self.state, k)
        if self.z_pre is None:
            patches = self.patches.expand(k, -1, -1)  # (k, T, P)
            batch = self.model.code_block(patches, counts, state)
            z_pre, codes, recon, enc_kv, dec_kv = batch.z_pre, batch.codes, batch.recon, batch.enc_kv, batch.dec_kv
        else:
            keep = torch.arange(self.patches.shape[1], device=dev) < counts[:, None]  # (k, T)
            z_pre = self.z_pre.expand(k, -1, -1)
            codes, _, _ = self.model.quantize(z_pre, keep)
            recon, dec_kv = self.model.decode_block(codes, state)
            enc_kv = [(kk.expand(k, -1, -1, -1), vv.expand(k, -1, -1, -1)) for kk, vv in self.enc_kv]
        if k == 1:
            return [BlockStep(counts, z_pre, codes, recon, enc_kv, dec_kv)]
        # Copies, so a kept candidate does not hold on to the whole batch's keys and values.
        pick = lambda kv, i: [(a[i : i + 1].clone(), b[i : i + 1].clone()) for a, b in kv]  # noqa: E731
        return [
            BlockStep(
                counts[i : i + 1], z_pre[i : i + 1], codes[i : i + 1], recon[i : i + 1],
                pick(enc_kv, i), pick(dec_kv, i),
            )
            for i in range(k)
        ]

    def evaluate(self, n: int, keep_if: Callable[[float], bool]) -> float:
        return self.evaluate_many([n], keep_if)[0]

    def evaluate_many(self, ns: list[int], keep_if: Callable[[float], bool]) -> list[float]:
        values = []
        for n, step in zip(ns, self.steps_for(ns)):
            value = self.scorer(step.recon, self.patches)
            self.values[n] = value
            values.append(value)
            # Keep only steps that may win (passing ones, smallest first, and the fallback) to bound memory.
            if keep_if(value):
                for m in [m for m in self.steps if m > n]:
                    del self.steps[m]
                if not any(m < n for m in self.steps):
                    self.steps[n] = step
                self.fallback = None
            elif not self.steps and (self.fallback is None or n > self.fallback[0]):
                self.fallback = (n, step)
        return values

    def final(self, n: int) -> BlockStep:
        """The step of count ``n``: the one its evaluation coded where kept, else a new pass."""
        if n in self.steps:
            return self.steps[n]
        if self.fallback is not None and self.fallback[0] == n:
            return self.fallback[1]
        return self.step(n)


def speculation_depth(coder: BlockCoder, lo: int, hi: int, max_depth: int = 6) -> int:
    """Bisection levels per batched pass for this hardware: the d that minimises the time per level,
    t(2**d - 1 candidates) / d, timed on this block. On a CPU a batch costs at least as much as its
    candidates one by one (measured: 2.2x for 2, 4.3x for 4 at 112x192), so there it is 1 untimed.
    """
    device = coder.patches.device
    if device.type != "cuda":
        return 1
    mid = (lo + hi) // 2

    def seconds(k: int) -> float:
        coder.steps_for([mid] * k)  # warm-up: kernels, allocator
        torch.cuda.synchronize(device)
        begin = time.perf_counter()
        coder.steps_for([mid] * k)
        torch.cuda.synchronize(device)
        return time.perf_counter() - begin

    return best_depth(seconds, max_depth)


def best_depth(seconds: Callable[[int], float], max_depth: int) -> int:
    """The depth d <= ``max_depth`` with the least ``seconds(2**d - 1) / d`` (time per bisection
    level), trying depths in order until one costs more per level than the one before or runs out of
    memory."""
    per_level: dict[int, float] = {}
    for d in range(1, max_depth + 1):
        try:
            per_level[d] = seconds(2**d - 1) / d
        except torch.cuda.OutOfMemoryError:
            break
        if d > 1 and per_level[d] > per_level[d - 1]:
            break  # batches have stopped being nearly free: deeper only costs more per level
    return min(per_level, key=per_level.get) if per_level else 1


def affordable_depth(depth: int, past_bytes: int, free_bytes: int) -> int:
    """The largest depth <= ``depth`` whose batch fits: each candidate beyond the first gets its own
    copy of the past's keys and values (attention concatenates them), and those copies may take at
    most a quarter of the free memory. Long contexts therefore fall back towards sequential search."""
    while depth > 1 and (2**depth - 2) * past_bytes > free_bytes / 4:
        depth -= 1
    return depth


def depth_for_block(coder: BlockCoder, depth: int) -> int:
    """``depth`` lowered for this block's context where batches are copied on a GPU."""
    device = coder.patches.device
    if depth == 1 or device.type != "cuda":
        return depth
    return affordable_depth(depth, past_bytes(coder.state), torch.cuda.mem_get_info(device)[0])


def past_bytes(state: StreamState) -> int:
    """Bytes of the keys and values of the committed blocks, encoder and decoder."""
    layers = (state.enc.layers or []) + (state.dec.layers or [])
    return sum(t.numel() * t.element_size() for kv in layers for t in kv)
