"""Average-rate control: spend at most N tokens per block on average, where they help most.

A first pass measures each block's rate-distortion curve at a few candidate counts (with context
from earlier blocks coded at the budget, close to what the final pass will see). A Lagrangian
allocation then picks one count per block minimising total distortion under the token budget, and a
greedy pass spends what the Lagrangian leaves over. The uniform allocation (N everywhere) is always
a candidate, so the allocation is never worse than it on the measured curves; but the allocation
changes the context later blocks see, so a last pass codes it and keeps uniform where that came out
worse (:func:`checked`), which makes "never worse than uniform" hold for the encode itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elastictok.coding.coder import BlockCoder
from elastictok.coding.options import OBJECTIVES, CodingOptions
from elastictok.coding.search import grid_candidates
from elastictok.coding.streaming import is_cut, reset_context
from elastictok.coding.target import BlockScorer
from elastictok.metrics.pixel import mse_to_psnr
from elastictok.model.autoencoder import ElasticTok


@dataclass
class Allocation:
    counts: list[int]
    budget: float  # tokens per block on average
    predicted_distortion: float  # on the measured curves, summed over blocks

    @property
    def average(self) -> float:
        return sum(self.counts) / len(self.counts)


def candidate_counts(lo: int, hi: int, budget: int, num: int = 12) -> list[int]:
    """A log-spaced grid over [lo, hi] plus the budget itself (so the uniform allocation is feasible)."""
    return sorted(set(grid_candidates(lo, hi, num)) | {min(max(budget, lo), hi)})


def distortion(mse: float, objective: str) -> float:
    """What the allocation minimises per block: MSE, or minus PSNR (maximising mean PSNR)."""
    return mse if objective == "mse" else -float(mse_to_psnr(max(mse, 1e-12)))


@torch.no_grad()
def measure_curves(
    model: ElasticTok,
    blocks: Iterable[torch.Tensor],
    candidates: Sequence[int] | None,
    context_count: int | Sequence[int],
    context_blocks: int | None = None,
    keyframes: set[int] | None = None,
) -> list[dict[int, float]]:
    """Per block, the official block MSE at every candidate count: [{count: mse}, ...].

    Each block is measured against earlier blocks coded at ``context_count`` (one count for every
    block, or one per block); ``candidates`` None measures only that count, which is then exactly
    what encoding with those counts gives."""
    curves, state, scorer = [], None, None
    for i, block in enumerate(blocks):
        if state is None:
            state = model.new_state(tuple(block.shape[-2:]))
            scorer = BlockScorer(model, "mse", state.frame_size)
        if keyframes and i in keyframes:
            reset_context(state)
        ctx = context_count if isinstance(context_count, int) else context_count[i]
        coder = BlockCoder(model, model.patchify(block.to(model.device)), state, scorer)
        # Keep the context count's state, so committing it costs no extra pass.
        curves.append({n: coder.evaluate(n, lambda v, keep=n == ctx: keep) for n in (candidates or [ctx])})
        model.commit(state, coder.final(ctx), context_blocks)
    return curves


def uniform_counts(curves: list[dict[int, float]], budget: float) -> list[int]:
    """The same count in every block: the largest measured one within the budget."""
    return [max([n for n in c if n <= budget], default=min(c)) for c in curves]


def total_distortion(curves: list[dict[int, float]], counts: list[int], objective: str) -> float:
    return sum(distortion(c[n], objective) for c, n in zip(curves, counts))


def checked(
    curves: list[dict[int, float]], realised: list[dict[int, float]], counts: list[int], budget: float, objective: str
) -> tuple[list[int], dict[str, float]]:
    """``counts`` (an allocation), or the uniform counts where they do better.

    ``curves`` hold exactly what uniform coding gives (they were measured with earlier blocks at the
    uniform count); ``realised`` holds what coding ``counts`` gives (each block measured at its own
    count, after earlier blocks at theirs). Returns the better counts and both mean distortions."""
    uniform = uniform_counts(curves, budget)
    got, base = total_distortion(realised, counts, objective), total_distortion(curves, uniform, objective)
    means = {"allocation": got / len(counts), "uniform": base / len(counts)}
    return (uniform if base < got else counts), means


def allocate(curves: list[dict[int, float]], budget: float, objective: str = "psnr") -> Allocation:
    """Choose one count per block with average <= ``budget`` minimising summed distortion."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if not curves:
        raise ValueError("no blocks to allocate tokens to")
    total = budget * len(curves)
    costs = [{n: distortion(m, objective) for n, m in c.items()} for c in curves]
    smallest = sum(min(c) for c in costs)
    if smallest > total:
        raise ValueError(f"a budget of {budget} tokens per block is below the minimum of {smallest / len(curves):.1f}")
    counts = _lagrangian(costs, total)
    counts = _fill(costs, counts, total)
    uniform = uniform_counts(costs, budget)
    if sum(c[n] for c, n in zip(costs, uniform)) < sum(c[n] for c, n in zip(costs, counts)):
        counts = uniform
    return Allocation(counts, budget, sum(c[n] for c, n in zip(costs, counts)))


def _pick(costs: list[dict[int, float]], lam: float) -> list[int]:
    return [min(c, key=lambda n: (c[n] + lam * n, n)) for c in costs]


def _lagrangian(costs: list[dict[int, float]], total: float) -> list[int]:
    """The cheapest multiplier whose per-block argmin fits the budget (bisection on lambda)."""
    if sum(_pick(costs, 0.0)) <= total:
        return _pick(costs, 0.0)
    lo, hi = 0.0, 1.0
    while sum(_pick(costs, hi)) > total:
        hi *= 2
        if hi > 1e12:
            break
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(_pick(costs, mid)) > total:
            lo = mid
        else:
            hi = mid
    return _pick(costs, hi)


def _fill(costs: list[dict[int, float]], counts: list[int], total: float) -> list[int]:
    """Spend leftover tokens on the upgrades with the best distortion drop per token."""
    counts = list(counts)
    while True:
        left = total - sum(counts)
        best, best_gain = None, 0.0
        for i, (c, n) in enumerate(zip(costs, counts)):
            for m in c:
                if n < m <= n + left and c[m] < c[n]:
                    gain = (c[n] - c[m]) / (m - n)
                    if gain > best_gain:
                        best, best_gain = (i, m), gain
        if best is None:
            return counts
        counts[best[0]] = best[1]


def keyframes_of(blocks: Iterable[torch.Tensor], options: CodingOptions) -> set[int]:
    """Keyframe blocks, decided from the pixels alone so that every rate-control pass agrees."""
    keys, previous = {0}, None
    for i, block in enumerate(blocks):
        if options.keyframe_interval and i % options.keyframe_interval == 0:
            keys.add(i)
        if options.cut_threshold is not None and is_cut(previous, block, options.cut_threshold):
            keys.add(i)
        previous = block
    return keys


def plan_counts(
    model: ElasticTok, blocks: Callable[[], Iterable[torch.Tensor]], frame_size: tuple[int, int], options: CodingOptions
) -> tuple[list[int], dict[str, Any]]:
    """Per-block counts that spend ``options.budget`` tokens per block on average, and a report.

    ``blocks()`` iterates over the video's blocks afresh for each pass (measure, then check).
    """
    lo, hi, _ = options.bounds(model.config, frame_size)
    budget = min(options.budget, hi)
    candidates = [n for n in candidate_counts(lo, hi, int(budget)) if lo <= n <= hi]
    keys = keyframes_of(blocks(), options)
    curves = measure_curves(model, blocks(), candidates, int(budget), options.context_blocks, keys)
    allocation = allocate(curves, budget, options.budget_objective)
    counts, report = allocation.counts, {"budget": options.budget, "candidates": candidates}
    if counts != uniform_counts(curves, budget):
        # The curves condition every block on earlier blocks at the uniform count; the allocation
        # changes that context. One pass at the allocated counts gives exactly what encoding them
        # yields, and the curves already hold exactly what uniform yields: keep the better.
        realised = measure_curves(model, blocks(), None, counts, options.context_blocks, keys)
        counts, report["checked"] = checked(curves, realised, counts, budget, options.budget_objective)
    report["allocation"] = counts
    return counts, report
