"""Adaptive encoding: per block, the fewest tokens that meet a quality target, given the blocks before it.

Blocks are coded in order through the model's KV-cached block path. For each block a search
(:mod:`elastictok.search`) asks whether a candidate count meets the target; each candidate costs one
encoder + decoder pass over that block only, attending to the committed earlier blocks. The winning
candidate's keys/values are kept and committed directly, so no extra commit pass and no final
whole-sequence pass are needed (the block path equals the whole-sequence path).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .metrics import block_mse, mse_to_psnr, ssim
from .model import BlockStep, ElasticTok, KVCache, StreamState
from .tokens import Tokens

METRICS = ("mse", "psnr", "ssim", "lpips")
DEFAULT_THRESHOLDS = {"mse": 0.003, "psnr": 31.25, "ssim": 0.9, "lpips": 0.1}
# MSE on [-1, 1] pixels is at most 4; PSNR above 100 dB or SSIM above 1 can never be met.
THRESHOLD_RANGES = {"mse": (0.0, 4.0), "psnr": (0.0, 100.0), "ssim": (0.0, 1.0), "lpips": (0.0, 10.0)}


@dataclass(frozen=True)
class Target:
    """A quality target: ``metric`` must reach ``threshold`` on each block.

    MSE is the official block MSE on [-1, 1] pixels; PSNR is in dB on the [0, 1] scale (0.003 MSE is
    31.25 dB); SSIM and LPIPS (AlexNet) are averaged over the block's frames. A block meets an MSE or
    LPIPS target when its value is <= the threshold, and a PSNR or SSIM target when it is >=.
    """

    metric: str = "mse"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")
        if self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLDS[self.metric])
        lo, hi = THRESHOLD_RANGES[self.metric]
        if not (math.isfinite(self.threshold) and lo < self.threshold <= hi):
            raise ValueError(f"a {self.metric} threshold must be in ({lo}, {hi}], got {self.threshold}")

    def met(self, value: float) -> bool:
        return self.margin(value) <= 0

    def margin(self, value: float) -> float:
        """How far ``value`` misses the target (<= 0: met), on a roughly log scale for the searches."""
        if self.metric == "psnr":
            return self.threshold - value  # dB is already logarithmic
        if self.metric == "ssim":
            return math.log(max(1 - value, 1e-12)) - math.log(max(1 - self.threshold, 1e-12))
        return math.log(max(value, 1e-12)) - math.log(max(self.threshold, 1e-12))


class BlockScorer:
    """Scores a reconstructed block against its input with one metric."""

    def __init__(self, model: ElasticTok, metric: str, frame_size: tuple[int, int]) -> None:
        self.model, self.metric, self.frame_size = model, metric, frame_size
        self._lpips = None
        if metric == "lpips":
            from .lpips import LPIPS

            self._lpips = LPIPS("alex").to(model.encoder.in_proj.weight.device)
        if metric == "ssim" and min(frame_size) < 11:
            raise ValueError(f"ssim needs frames of at least 11x11, got {frame_size[0]}x{frame_size[1]}")

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> float:
        """recon, target: one block's patches (1, T, P)."""
        T = recon.shape[1]
        if self.metric in ("mse", "psnr"):
            mse = float(block_mse(recon, target, T)[0, 0])
            return mse if self.metric == "mse" else float(mse_to_psnr(mse))
        frames = self.model.config.frames_per_block
        a = self.model.unpatchify(recon.float().clamp(-1, 1), frames, self.frame_size)[0].transpose(0, 1)  # (F, 3, H, W)
        b = self.model.unpatchify(target.float(), frames, self.frame_size)[0].transpose(0, 1)
        if self.metric == "ssim":
            return float(ssim(a, b).mean())
        return float(self._lpips(a, b).mean())


@dataclass
class BlockChoice:
    count: int
    value: float  # the target metric at that count
    evaluations: int  # candidates scored
    passes: int  # sequential passes (fewer than the evaluations when candidates were batched)


@dataclass
class AdaptiveResult:
    tokens: Tokens
    recon: torch.Tensor  # (B, 3, T, H, W)
    choices: list[list[BlockChoice]] = field(default_factory=list)  # [sample][block]

    @property
    def evaluations(self) -> int:
        return sum(c.evaluations for sample in self.choices for c in sample)

    @property
    def passes(self) -> int:
        return sum(c.passes for sample in self.choices for c in sample)


def broadcast_state(state: StreamState, k: int) -> StreamState:
    """The same past seen by ``k`` candidates at once (expanded views, no copies)."""

    def expand(cache: KVCache) -> KVCache:
        layers = None if cache.layers is None else [(a.expand(k, -1, -1, -1), b.expand(k, -1, -1, -1)) for a, b in cache.layers]
        return KVCache(layers, cache.num_blocks)

    return StreamState(state.frame_size, expand(state.enc), expand(state.dec), state.next_block)


class BlockCoder:
    """Codes one block at candidate counts against a fixed past, remembering the winner's state."""

    def __init__(self, model: ElasticTok, patches: torch.Tensor, state: StreamState, scorer: BlockScorer) -> None:
        self.model, self.patches, self.state, self.scorer = model, patches, state, scorer
        self.steps: dict[int, BlockStep] = {}
        self.values: dict[int, float] = {}
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
            BlockStep(counts[i : i + 1], z_pre[i : i + 1], codes[i : i + 1], recon[i : i + 1], pick(enc_kv, i), pick(dec_kv, i))
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
        return values

    def final(self, n: int) -> BlockStep:
        return self.steps.get(n) or self.step(n)


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


@torch.no_grad()
def encode_adaptive(
    model: ElasticTok,
    video: torch.Tensor,
    target: Target | None = None,
    search: str = "fast",
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    num_tokens: int | torch.Tensor | None = None,
    context_blocks: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
    keyframe_interval: int | None = None,
    cut_threshold: float | None = None,
    speculation: int | None = None,
) -> AdaptiveResult:
    """Encode ``video`` (B, 3, T, H, W) in [-1, 1] block by block.

    With ``num_tokens`` (an int, or a (B, n_blocks) allocation) the counts are given; otherwise each
    block gets the fewest tokens in [min_tokens, max_tokens] (default: the model's minimum and every
    token) that meet ``target`` (default: the official MSE 0.003), falling back to max_tokens.
    ``context_blocks`` bounds how many earlier blocks each block attends to (default: as many as the
    model saw in training, ``config.default_context_blocks``; the tokens record it); see
    :mod:`elastictok.streaming` for keyframes (recorded in ``tokens.keyframes``, so that
    ``model.decode`` repeats them) and ``speculation`` (batched candidates on a GPU).
    ``on_block(i, n)`` is called after each block.
    """
    from .checks import check_video
    from .streaming import code_blocks

    check_video(video, model.config)
    context_blocks = model.config.context_window(context_blocks)
    frame_size = tuple(video.shape[-2:])
    T = model.config.tokens_per_block(frame_size)
    num_frames = video.shape[2]
    padded = model.pad_frames(video)
    fpb = model.config.frames_per_block
    n_blocks = padded.shape[2] // fpb
    if isinstance(num_tokens, torch.Tensor) and num_tokens.shape != (video.shape[0], n_blocks):
        raise ValueError(f"expected num_tokens of shape (B, n_blocks) = ({video.shape[0]}, {n_blocks}), got {tuple(num_tokens.shape)}")
    all_counts, all_codes, all_recon, all_keys, choices = [], [], [], [], []
    for b in range(video.shape[0]):
        counts = num_tokens[b].tolist() if isinstance(num_tokens, torch.Tensor) else num_tokens
        blocks = (padded[b : b + 1, :, i * fpb : (i + 1) * fpb] for i in range(n_blocks))
        coded = []
        for cb in code_blocks(
            model, blocks, target=target, search=search, min_tokens=min_tokens, max_tokens=max_tokens,
            counts=counts, context_blocks=context_blocks, keyframe_interval=keyframe_interval,
            cut_threshold=cut_threshold, speculation=speculation,
        ):
            coded.append(cb)
            if on_block is not None:
                on_block(cb.index, cb.count)
        all_counts.append(torch.tensor([cb.count for cb in coded]))
        all_keys.append(torch.tensor([cb.keyframe for cb in coded]))
        all_codes.append(torch.cat([cb.codes for cb in coded], 1))
        all_recon.append(torch.cat([cb.recon for cb in coded], 2)[:, :, :num_frames])
        choices.append([BlockChoice(cb.count, cb.value, cb.evaluations, cb.passes) for cb in coded])
    codes = torch.cat(all_codes)  # (B, L, D)
    values = model.codes_to_values(codes).unflatten(1, (n_blocks, T)).cpu()
    keys = torch.stack(all_keys)  # (B, n_blocks)
    keys = keys if keys[:, 1:].any() else None  # only block 0: the plain layout
    tokens = Tokens(torch.stack(all_counts), values, model.config.bottleneck, num_frames, frame_size, context_blocks, keys)
    return AdaptiveResult(tokens, torch.cat(all_recon), choices)
