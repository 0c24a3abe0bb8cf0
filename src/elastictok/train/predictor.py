"""Training a model's token-count predictor from quality curves the model itself measures.

Curves: for each training block, the real reconstruction MSE at a few random token counts (one full
encoder+decoder pass each, plus every token), then at a few more where those measurements say the
curve crosses MSE levels drawn from the range of usual targets (where a search needs the predictor
to be right), against the context of the blocks before it, each of them committed at one of its
measured counts (so the predictor sees contexts of every quality).
Fitting: the Gaussian negative log-likelihood of log MSE under the predictor's mean and spread.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elastictok.coding.coder import BlockCoder
from elastictok.coding.prediction import past_slice
from elastictok.coding.search import log_crossing
from elastictok.coding.streaming import blocks_of
from elastictok.coding.target import BlockScorer
from elastictok.files.source import Source
from elastictok.media.io import IMAGE_EXTS, VIDEO_EXTS, media_files, to_uint8, to_unit
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.predictor import CountPredictor, PastSlice, PredictorConfig, block_features
from elastictok.utils.files import atomic_path, one_line
from elastictok.utils.pretrained import CONFIG_NAME, WEIGHTS_NAME, record_checksums, weights_digest


@dataclass(frozen=True)
class PredictorTraining:
    """What to measure and how long to fit. Sources are spread evenly over the sub-folders given
    (classes, video sources); ``resolutions`` are cycled through, one per source. ``focus_counts`` of
    each block's ``counts_per_block`` are placed near crossings of MSE levels in ``focus_mse``.
    ``still_clips`` of the images picked are also measured as still clips (the image repeated for
    ``still_blocks`` blocks): in a still scene a block is copied from its context, errors and all."""

    resolutions: tuple[int, ...] = (112,)
    max_images: int = 240
    max_videos: int = 48
    blocks_per_video: int = 6
    counts_per_block: int = 8
    focus_counts: int = 0
    focus_mse: tuple[float, float] = (0.01, 0.04)
    epochs: int = 120
    hidden_size: int = 32
    still_clips: int = 48
    still_blocks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        may_be_zero = ("max_images", "max_videos", "focus_counts", "still_clips")
        for name in (*may_be_zero, "blocks_per_video", "counts_per_block", "epochs", "hidden_size", "still_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name in may_be_zero else 1):
                raise ValueError(f"expected --{name.replace('_', '-')} to be a whole number, got {value!r}")
        if self.focus_counts >= self.counts_per_block - 1:
            raise ValueError(f"expected --focus-counts below --counts-per-block minus 1 ({self.counts_per_block - 1}), "
                             f"got {self.focus_counts}")
        low, high = self.focus_mse
        if not 0 < low <= high:
            raise ValueError(f"expected --focus-mse as two levels 0 < low <= high, got {list(self.focus_mse)}")
        if not self.resolutions or any(not isinstance(r, int) or not 16 <= r <= 1080 for r in self.resolutions):
            raise ValueError(f"expected --resolution values in [16, 1080], got {list(self.resolutions)}")


@dataclass
class Curve:
    """One block's measured curve: pixels as uint8 patches, the context's last slice, MSE at counts."""

    patches: torch.Tensor  # (T, P) uint8
    previous: torch.Tensor | None  # (rows * cols, P) uint8: the context's last reconstructed slice
    previous_source: torch.Tensor | None  # (rows * cols, P) uint8: that slice as it was
    grid: tuple[int, int, int]
    counts: torch.Tensor  # (K,) int64
    mse: torch.Tensor  # (K,) float32
    video: bool


def spread_pick(files: list[Path], root: Path, limit: int, rng: random.Random) -> list[Path]:
    """Up to ``limit`` files taken round-robin over the sub-folders of ``root`` (shuffled within each)."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(str(f.parent.relative_to(root)), []).append(f)
    queues = [rng.sample(g, len(g)) for _, g in sorted(groups.items())]
    picked: list[Path] = []
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop())
    return picked


def training_sources(images: list[Path], videos: list[Path], opts: PredictorTraining) -> list[Path]:
    rng = random.Random(opts.seed)
    picked: list[Path] = []
    for folders, limit, exts in ((images, opts.max_images, IMAGE_EXTS), (videos, opts.max_videos, VIDEO_EXTS)):
        per_folder = math.ceil(limit / max(1, len(folders)))
        for d in folders:
            picked += spread_pick(media_files(d, exts), Path(d), per_folder, rng)
    return picked


def log_uniform(lo: float, hi: float, rng: random.Random) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def crossing_count(counts: list[int], mse: list[float], level: float) -> int | None:
    """The first count where the measured curve (ascending ``counts``) falls to ``level``, linear in
    log-log between the measurements around it; None where it never does or starts below it."""
    for (n0, m0), (n1, m1) in zip(zip(counts, mse), zip(counts[1:], mse[1:])):
        if m0 > level >= m1:
            return round(log_crossing(n0, math.log(m0 / level), n1, math.log(m1 / level)))
    return None


@torch.no_grad()
def block_curves(
    model: ElasticTok, blocks: Iterator[torch.Tensor], opts: PredictorTraining, rng: random.Random, video: bool
) -> Iterator[Curve]:
    """Measure the curve of each (1, 3, F, H, W) block in order, committing one measured count of each."""
    state, scorer = None, None
    window = model.config.default_context_blocks
    previous = previous_source = None
    for block in blocks:
        if state is None:
            frame_size = tuple(block.shape[-2:])
            state, scorer = model.new_state(frame_size), BlockScorer(model, "mse", frame_size)
            lo, _, T = model.config.token_bounds(frame_size)
            grid = model.config.grid(frame_size)
        patches = model.patchify(block.to(model.device))
        coder = BlockCoder(model, patches, state, scorer)
        # Log-uniform counts over [lo, T] (curves change fastest at small counts), and every token.
        spread = opts.counts_per_block - 1 - opts.focus_counts
        counts = sorted({T, *(round(log_uniform(lo, T, rng)) for _ in range(spread))})
        steps = {n: coder.step(n) for n in counts}
        mse = {n: scorer(steps[n].recon, patches) for n in counts}
        for _ in range(opts.focus_counts):
            level = log_uniform(*opts.focus_mse, rng)
            n = crossing_count(counts, [mse[m] for m in counts], level)
            n = round(log_uniform(lo, T, rng)) if n is None else min(max(n + rng.randint(-2, 2), lo), T)
            if n not in steps:
                steps[n] = coder.step(n)
                mse[n] = scorer(steps[n].recon, patches)
                counts = sorted(steps)
        yield Curve(to_uint8(patches[0].cpu()), previous, previous_source, grid, torch.tensor(counts),
                    torch.tensor([mse[n] for n in counts]), video)
        step = steps[rng.choice(counts)]
        model.commit(state, step, window)
        past = past_slice(model, step.recon, patches, frame_size)
        previous, previous_source = to_uint8(past.recon[0].cpu()), to_uint8(past.source[0].cpu())


def measure_curves(
    model: ElasticTok, sources: list[Path], opts: PredictorTraining,
    on_source: Callable[[int, Path, int], None] | None = None,
) -> list[Curve]:
    """Curves of the blocks of ``sources`` (an image is one block; a video its first ``blocks_per_video``),
    then of the first ``still_clips`` images as still clips (with a random stream of their own, so that
    adding them leaves the other curves as they were)."""
    curves: list[Curve] = []
    F = model.config.frames_per_block
    images = [p for p in sources if p.suffix.lower() in IMAGE_EXTS][:opts.still_clips]
    plain, stills = random.Random(opts.seed), random.Random(opts.seed + 1)
    jobs = [(path, False, plain) for path in sources] + [(path, True, stills) for path in images]
    for i, (path, still, rng) in enumerate(jobs):
        resolution = opts.resolutions[i % len(opts.resolutions)]
        source = Source.open(path, model, resolution=resolution, max_frames=opts.blocks_per_video * F)
        blocks: Iterator[torch.Tensor] = (block for block, _ in blocks_of(source.frames(), F))
        if still:
            first = next(blocks)
            blocks = (first for _ in range(opts.still_blocks))
        before = len(curves)
        curves += block_curves(model, blocks, opts, rng, source.is_video or still)
        if on_source is not None:
            on_source(i, path, len(curves) - before)
    return curves


def save_curves(curves: list[Curve], path: str | Path, seconds: float, for_weights: str) -> None:
    data = {"seconds": seconds, "for_weights": for_weights, "curves": [
        {"patches": c.patches, "previous": c.previous, "previous_source": c.previous_source,
         "grid": list(c.grid), "counts": c.counts, "mse": c.mse,
         "video": c.video} for c in curves]}
    with atomic_path(path) as temp:
        torch.save(data, temp)


def load_curves(path: str | Path, for_weights: str) -> tuple[list[Curve], float]:
    """Curves saved by :func:`save_curves` for the weights with SHA-256 ``for_weights``, and the
    seconds their measurement took."""
    try:
        data = torch.load(path, weights_only=True)
        curves = [Curve(c["patches"], c["previous"], c["previous_source"], tuple(c["grid"]), c["counts"], c["mse"],
                        c["video"])
                  for c in data["curves"]]
        seconds, made_for = float(data["seconds"]), str(data["for_weights"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a curves file written by train-predictor ({one_line(err)})") from None
    if made_for != for_weights:
        raise ValueError(f"{path}: these curves were measured with other model weights; measure them again")
    return curves, seconds


def curve_inputs(curve: Curve, patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    previous = None
    if curve.previous is not None:
        previous = PastSlice(to_unit(curve.previous)[None], to_unit(curve.previous_source)[None])
    return block_features(to_unit(curve.patches)[None], patch_size, curve.grid, previous)


def fit_predictor(
    curves: list[Curve], model: ElasticTok, for_weights: str, opts: PredictorTraining, held_out: float = 0.1,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[CountPredictor, dict[str, float]]:
    """Fit a predictor to ``curves`` of ``model`` (whose weights file has the SHA-256 ``for_weights``);
    returns it and its error on a held-out share of the blocks (mean |log MSE error|, mean spread)."""
    torch.manual_seed(opts.seed)
    predictor = CountPredictor(PredictorConfig(hidden_size=opts.hidden_size, for_weights=for_weights))
    patch_size = model.config.patch_size
    inputs = [curve_inputs(c, patch_size) for c in curves]
    order = list(range(len(curves)))
    random.Random(opts.seed).shuffle(order)
    split = max(1, int(len(order) * held_out)) if len(order) > 1 else 0
    test, train = order[:split], order[split:]
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, opts.epochs)

    def loss_of(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = curves[i]
        log_mse, log_spread = predictor(*inputs[i], c.counts, c.grid[1] * c.grid[2], c.previous is not None)
        error = log_mse[0] - torch.log(c.mse.clamp_min(1e-8))
        nll = 0.5 * (error / log_spread[0].exp()).pow(2) + log_spread[0]
        return nll.mean() + 0.5 * error.pow(2).mean(), error.abs().mean(), log_spread[0].exp().mean()

    for epoch in range(opts.epochs):
        predictor.train()
        random.Random(opts.seed + epoch).shuffle(train)
        for start in range(0, len(train), 16):
            optimizer.zero_grad()
            loss = torch.stack([loss_of(i)[0] for i in train[start : start + 16]]).mean()
            loss.backward()
            optimizer.step()
        schedule.step()
        if on_epoch is not None and (epoch % 25 == 0 or epoch == opts.epochs - 1):
            with torch.no_grad():
                held = [loss_of(i) for i in test] or [loss_of(i) for i in train[:1]]
            on_epoch(epoch, float(torch.stack([h[1] for h in held]).mean()),
                     float(torch.stack([h[2] for h in held]).mean()))
    predictor.eval()
    with torch.no_grad():
        held = [loss_of(i) for i in test]
    stats = {"held_out_blocks": len(test), "train_blocks": len(train),
             "held_out_log_mse_error": float(torch.stack([h[1] for h in held]).mean()) if held else math.nan,
             "held_out_spread": float(torch.stack([h[2] for h in held]).mean()) if held else math.nan}
    return predictor, stats


def train_predictor(
    model: ElasticTok, model_dir: str | Path, images: list[Path], videos: list[Path], out: str | Path,
    opts: PredictorTraining, curves_file: str | Path | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure curves (or read ``curves_file`` when it exists, else save them there), fit a predictor,
    and write ``out``: the model directory with the predictor beside the weights (``out`` may be
    ``model_dir``). Returns a summary with the seconds spent measuring and fitting."""
    digest = weights_digest(model_dir)
    begin = time.perf_counter()
    if curves_file is not None and Path(curves_file).is_file():
        curves, measure_seconds = load_curves(curves_file, digest)
        log(f"read {len(curves)} block curves from {curves_file} (measured in {measure_seconds:.0f} s)")
    else:
        sources = training_sources(images, videos, opts)
        if not sources:
            raise ValueError("no images or videos found in --images / --videos")
        log(f"measuring curves on {len(sources)} sources ({opts.counts_per_block} counts per block)")
        curves = measure_curves(model, sources, opts, lambda i, path, n: log(
            f"  [{i + 1}/{len(sources)}] {path.name}: {n} block(s), {time.perf_counter() - begin:.0f} s"))
        measure_seconds = time.perf_counter() - begin
        if curves_file is not None:
            save_curves(curves, curves_file, measure_seconds, digest)
    fit_begin = time.perf_counter()
    predictor, stats = fit_predictor(curves, model, digest, opts, on_epoch=lambda e, err, spread: log(
        f"  epoch {e + 1}/{opts.epochs}: held-out |log MSE error| {err:.3f}, spread {spread:.3f}"))
    fit_seconds = time.perf_counter() - fit_begin
    summary = {"blocks": len(curves), "video_blocks": sum(c.video for c in curves), "measure_seconds":
               round(measure_seconds, 1), "fit_seconds": round(fit_seconds, 1), **stats,
               "resolutions": list(opts.resolutions), "counts_per_block": opts.counts_per_block,
               "focus_counts": opts.focus_counts, "focus_mse": list(opts.focus_mse),
               "still_clips": opts.still_clips, "still_blocks": opts.still_blocks,
               "epochs": opts.epochs, "seed": opts.seed}
    predictor.config.extra = summary
    out = Path(out)
    if out.resolve() != Path(model_dir).resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            with atomic_path(out / name) as temp:
                shutil.copyfile(Path(model_dir) / name, temp)
        record_checksums(out, [WEIGHTS_NAME])
    predictor.save_pretrained(out)
    return summary
