"""Adaptive-encode time: the official search procedure against ours, on the same clips, side by side.

The official procedure (elastic/inference.py) bisects with one encoder+decoder pass per candidate,
then runs a commit pass per block and a final whole-sequence pass. Ours (`binary`, `fast`) keeps the
winning candidate's KV cache and needs neither, and with an unconditioned encoder encodes each block
once. Prints time, sequential passes and how often the chosen counts agree. `--speculation D` adds
`fast` scoring D bisection levels per batched pass (what it does by itself on a GPU, where a batch
costs little more than one candidate; on a CPU it costs more). `--tolerance T ...` adds `fast` at
each tolerance (a fraction of the block's tokens, e.g. 0 1/64) and tables of total tokens against
`binary`'s, in separate runs and against the same context; `--encodes-only` skips the official
procedure and the same-context comparison, `--paired-only` runs only the latter. Usage:

    python benchmarks/search.py [--model DIR] [--unconditioned-model DIR] [--clips PATH ...] [--frames 32]
        [--threshold 0.003] [--resolution PX] [--device cpu|cuda] [--speculation D|auto] [--context-blocks W]
        [--tolerance T ...] [--encodes-only | --paired-only]
    python benchmarks/search.py --save-clips DIR --clips ... [--frames 32] [--resolution PX]   # .npy frames

A clip ending in .npy is read as saved by --save-clips (the GPU run in scripts/device_search.sh).
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.coder import BlockCoder
from elastictok.coding.options import CodingOptions
from elastictok.coding.prediction import past_slice, predicted_guess
from elastictok.coding.search import (
    DEFAULT_TOLERANCE,
    Probe,
    clamp_count,
    estimated_crossing,
    first_estimate,
    official_binary,
    predicted_crossing,
    run_search,
)
from elastictok.coding.target import BlockScorer, Target
from elastictok.files.source import load_input
from elastictok.metrics.pixel import block_mse
from elastictok.weights.pretrained import load_default_model, load_pretrained

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2"


@torch.no_grad()
def official_procedure(model, video, threshold: float, context_blocks: int | None = None) -> tuple[list[int], int]:
    """Kept counts per block and the number of block passes, as the official code spends them."""
    T = model.config.tokens_per_block(tuple(video.shape[-2:]))
    lo = model.config.min_tokens(tuple(video.shape[-2:]))
    patches = model.patchify(model.pad_frames(video))
    state, counts, passes = model.new_state(tuple(video.shape[-2:])), [], 0
    for i in range(patches.shape[1] // T):
        block = patches[:, i * T : (i + 1) * T]

        def loss(kept: int) -> float:
            step = model.code_block(block, torch.tensor([kept], device=video.device), state)
            return float(block_mse(step.recon, block, T)[0, 0])

        reported, tried = official_binary(loss, lo, T, threshold)
        kept = min(reported + 1, T)
        model.commit(state, model.code_block(block, torch.tensor([kept], device=video.device), state),
                     context_blocks)  # the commit pass
        passes += len(tried) + 1
        counts.append(kept)
    model.decode(model.encode(video, torch.tensor([counts], device=video.device),
                              context_blocks))  # the final whole-sequence pass
    return counts, passes + patches.shape[1] // T


@torch.no_grad()
def paired_agreement(model, video, threshold: float, context_blocks: int | None = None,
                     tolerances: dict[str, float] | None = None) -> dict[str, tuple[list[int], list[int]]]:
    """Counts and evaluations per block of `binary`, `fast`, and `fast` and `binary` at each of
    ``tolerances`` (label: tolerance) when all search the same block against the same context (binary's
    earlier choices);
    each `fast` keeps its own start and slope from block to block, as in a run of its own. In separate
    runs one different count changes every later block's context, so their curves, and the end-to-end
    agreement counts that too."""
    frame_size = tuple(video.shape[-2:])
    lo, hi, T = model.config.token_bounds(frame_size, None, None)
    target, scorer = Target("mse", threshold), BlockScorer(model, "mse", frame_size)
    patches = model.patchify(model.pad_frames(video))
    state = model.new_state(frame_size)
    variants = {"fast": None, **(tolerances or {})}
    hints = {label: (None, None) for label in variants}  # start, slope
    picks = {label: ([], []) for label in ["binary", *variants]}
    for i in range(patches.shape[1] // T):
        coder = BlockCoder(model, patches[:, i * T : (i + 1) * T], state, scorer)
        # One memo for every search: each count costs one pass whichever asks first.
        margin = Probe(lambda n: target.margin(coder.evaluate(n, target.met))).value
        reference = run_search("binary", margin, lo, hi)
        picks["binary"][0].append(reference.count)
        picks["binary"][1].append(reference.evaluations)
        for label, tolerance in variants.items():
            found = run_search("fast", margin, lo, hi, *hints[label], tolerance=tolerance, tokens=T)
            hints[label] = found.count, found.slope
            picks[label][0].append(found.count)
            picks[label][1].append(found.evaluations)
        for label, tolerance in (tolerances or {}).items():  # binary with a tolerance probes no new counts
            found = run_search("binary", margin, lo, hi, tolerance=tolerance, tokens=T)
            picks.setdefault(label.replace("fast", "binary"), ([], []))
            picks[label.replace("fast", "binary")][0].append(found.count)
            picks[label.replace("fast", "binary")][1].append(found.evaluations)
        model.commit(state, coder.final(reference.count), context_blocks)
    return picks


def bench_model(name: str, model, clips: list[str], frames: int, threshold: float, fps, resolution, speculation,
                context_blocks, tolerances: list[Fraction] = (), official: bool = True, encodes: bool = True,
                paired: bool = True) -> None:
    device = model.device
    context_blocks = model.config.context_window(context_blocks)  # the library's default, for every row
    searches = {"binary": ("binary", 1, None), "fast": ("fast", 1, None)}  # (search, depth, tolerance)
    if speculation == "auto":
        searches["fast-auto"] = ("fast", None, None)  # the library's default: depth timed on the first block
    elif int(speculation):
        searches[f"fast-spec{speculation}"] = ("fast", int(speculation), None)
    loose = {f"fast t={t}": float(t) for t in tolerances}
    for label, t in loose.items():
        searches[label] = ("fast", 1, t)
    if not encodes:
        searches = {}
    rows = {k: [0.0, 0, 0, 0] for k in [*(["official"] if official else []), *searches]}
    # seconds, passes, candidates, blocks; the counts each search picked, per block
    counts = {k: [] for k in searches}
    same = {k: 0 for k in searches}
    pairs: dict[str, tuple[list[int], list[int]]] = {}
    for clip in clips:
        video = load_clip(clip, model, frames, fps, resolution).to(device)
        if official:
            # The official procedure re-runs the encoder for every candidate whatever the encoder.
            sync(device)
            start = time.perf_counter()
            ref_counts, passes = official_procedure(model, video, threshold, context_blocks)
            sync(device)
            rows["official"][0] += time.perf_counter() - start
            rows["official"][1] += passes
            rows["official"][2] += passes
            rows["official"][3] += len(ref_counts)
        picks = {}
        for label, (search, depth, tolerance) in searches.items():
            start = time.perf_counter()
            result = encode_adaptive(model, video, CodingOptions(target=Target("mse", threshold), search=search,
                                                                 speculation=depth, context_blocks=context_blocks,
                                                                 tolerance=tolerance))
            sync(device)
            rows[label][0] += time.perf_counter() - start
            rows[label][1] += result.passes
            rows[label][2] += result.evaluations
            picks[label] = result.tokens.counts[0].tolist()
            rows[label][3] += len(picks[label])
            counts[label] += picks[label]
        for label in searches:
            same[label] += sum(a == b for a, b in zip(picks["binary"], picks[label]))
        if paired:
            clip_pairs = paired_agreement(model, video, threshold, context_blocks, loose)
            for label, (c, e) in clip_pairs.items():
                pairs.setdefault(label, ([], []))
                pairs[label][0].extend(c)
                pairs[label][1].extend(e)
            if not encodes:
                picks = {label: c for label, (c, _) in clip_pairs.items()}
        if picks:
            # How far the answer moves from block to block bounds what starting from the previous count saves.
            steps = [abs(a - b) for a, b in zip(picks["binary"][1:], picks["binary"])]
            print(f"  {Path(clip).name}: " + ", ".join(f"{k} {v}" for k, v in picks.items())
                  + f"; median |change| between blocks {sorted(steps)[len(steps) // 2] if steps else 0}")
    total = next(iter(rows.values()))[3] if rows else len(pairs["binary"][0])
    window = f"at most {context_blocks} earlier block(s)"
    print(f"\n{name} ({model.config.encoder_conditioning} encoder), {len(clips)} clips, {total} blocks, "
          f"MSE <= {threshold}, {device}, {window}")
    if rows:
        # Passes: sequential model calls over one block (encoder + decoder; with an unconditioned encoder,
        # ours encode once per block and a candidate costs a decoder pass). Candidates: counts scored.
        print(f"{'search':<14}{'seconds':>9}{'passes/block':>14}{'candidates/block':>18}{'s/block':>9}"
              f"{'same as binary':>16}")
        for label, (seconds, passes, candidates, blocks) in rows.items():
            agree = f"{same[label]}/{blocks}" if label in same else "-"
            print(f"{label:<14}{seconds:>9.2f}{passes / blocks:>14.2f}{candidates / blocks:>18.2f}"
                  f"{seconds / blocks:>9.3f}{agree:>16}")
    for label in searches:
        if label != "binary":
            print(f"{label} vs binary: {rows['binary'][0] / rows[label][0]:.2f}x faster, "
                  f"same count on {same[label]}/{total} blocks ({100 * same[label] / total:.1f}%)"
                  + (f"; vs the official procedure: {rows['official'][0] / rows[label][0]:.2f}x" if official else ""))
    if pairs:
        agree = sum(a == b for a, b in zip(*(pairs[k][0] for k in ["binary", "fast"])))
        print(f"fast picks binary's count on {agree}/{total} blocks ({100 * agree / total:.1f}%) "
              "when both search each block against the same context")
    if not tolerances:
        return
    # Tokens kept against exact binary's: what a tolerance costs. "fast" runs the library's default.
    # "Searched blocks": those where some count meets the target (binary's count is below every token);
    # elsewhere every search keeps every token. "Most above": the largest excess over binary on one block.
    T = model.config.tokens_per_block(tuple(video.shape[-2:]))
    default = Fraction(DEFAULT_TOLERANCE["fast"])
    print(f"\ntolerance: a fraction of the block's tokens ({T} here); fast's default {default}")
    header = f"{'total tokens':>14}{'vs binary':>11}{'searched blocks':>17}{'most above':>12}"
    tables = []
    if searches:
        tables.append(("separate runs", "passes/block", {k: (counts[k], rows[k][1] / rows[k][3]) for k in searches}))
    if pairs:
        tables.append(("same context", "evals/block", {k: (c, sum(e) / len(e)) for k, (c, e) in pairs.items()}))
    for title, cost, table in tables:
        ref = table["binary"][0]
        searched = [i for i, n in enumerate(ref) if n < T]
        print(f"{title:<14}{cost:>14}{header}")
        for label, (picked, per_block) in table.items():
            extra = 100 * (sum(picked) / sum(ref) - 1)
            extra_searched = 100 * (sum(picked[i] for i in searched) / max(1, sum(ref[i] for i in searched)) - 1)
            above = max(a - b for a, b in zip(picked, ref))
            print(f"{label:<14}{per_block:>14.2f}{sum(picked):>14}{extra:>+10.2f}%{extra_searched:>+16.2f}%"
                  f"{above:>12}")


def parse_target(text: str) -> Target:
    metric, _, value = text.partition(":")
    return Target(metric, float(value))


@torch.no_grad()
def predictor_pairs(model, video, target: Target, context_blocks: int, tolerance: float) -> dict:
    """Every block against binary's context: binary's exact count (timed: its own evaluations), the
    predictor's count (where its curve crosses the target) and the cost of a prediction, and the
    evaluations of predict, fast and binary at ``tolerance`` on the same curve (a shared memo)."""
    frame_size = tuple(video.shape[-2:])
    lo, hi, T = model.config.token_bounds(frame_size, None, None)
    scorer = BlockScorer(model, target.metric, frame_size)
    patches = model.patchify(model.pad_frames(video))
    state, last, bias = model.new_state(frame_size), None, 0.0
    hints = {name: (None, None) for name in ("predict", "fast", "binary")}  # each search's own earlier count
    out = {"exact": [], "predicted": [], "started": [], "corrected": [], "previous": [],
           "floors": [], "binary_seconds": 0.0, "binary_evals": 0, "predict_seconds": 0.0,
           "evals": {"predict": [], "fast": [], "binary": []},
           "counts": {"predict": [], "fast": [], "binary": []}, "T": T}
    for i in range(patches.shape[1] // T):
        block = patches[:, i * T : (i + 1) * T]
        coder = BlockCoder(model, block, state, scorer)
        probe = Probe(lambda n: target.margin(coder.evaluate(n, target.met)))
        margin = probe.value  # memoised, so what binary measured (every token, where it climbed there) stays readable
        start = time.perf_counter()
        exact = run_search("binary", margin, lo, hi, tolerance=0)
        out["binary_seconds"] += time.perf_counter() - start
        out["binary_evals"] += exact.evaluations
        start = time.perf_counter()
        guess = predicted_guess(model, block, last, frame_size, target, lo, hi, bias)
        out["predict_seconds"] += time.perf_counter() - start
        out["exact"].append(exact.count)
        raw = lambda n: guess.margin(n) - bias  # noqa: E731  (the predictor alone)
        if hi in probe.results:
            out["floors"].append((raw(hi), probe.results[hi]))
        out["predicted"].append(clamp_count(predicted_crossing(raw, guess.counts), lo, hi))
        # Where predict starts: corrected by the error on the block before, halfway to that block's count;
        # and the two estimates it combines, alone.
        corrected = estimated_crossing(guess.margin, guess.counts, lo)
        previous = hints["predict"][0]
        out["started"].append(clamp_count(first_estimate(corrected, previous), lo, hi))
        out["corrected"].append(clamp_count(corrected, lo, hi))
        out["previous"].append(clamp_count(corrected if previous is None else previous, lo, hi))
        for name in ("predict", "fast", "binary"):
            found = run_search(name, margin, lo, hi, *hints[name], tolerance=tolerance, tokens=T, guess=guess)
            hints[name] = found.count, found.slope
            if name == "predict":
                bias += found.residual or 0.0
            out["evals"][name].append(found.evaluations)
            out["counts"][name].append(found.count)
        step = coder.final(exact.count)
        model.commit(state, step, context_blocks)
        last = past_slice(model, step.recon, block, frame_size)
    return out


def bench_predict(model, clips: list[str], frames: int, fps, resolution, targets: list[Target],
                  tolerances: list[float], context_blocks, separate: bool = True) -> None:
    """The predictor's accuracy and the predict search against fast and binary, per target (see --targets):
    binary and fast at the first of ``tolerances``, predict at each."""
    context_blocks = model.config.context_window(context_blocks)
    tolerance = tolerances[0]
    label = lambda name, t: f"{name} t={Fraction(t).limit_denominator()}"  # noqa: E731
    runs = {"binary exact": ("binary", 0.0), label("binary", tolerance): ("binary", tolerance),
            label("fast", tolerance): ("fast", tolerance),
            **{label("predict", t): ("predict", t) for t in tolerances}}
    videos = [load_clip(clip, model, frames, fps, resolution).to(model.device) for clip in clips]
    for target in targets:
        pairs = [predictor_pairs(model, v, target, context_blocks, tolerance) for v in videos]
        T = [p["T"] for p in pairs for _ in p["exact"]]
        exact = [n for p in pairs for n in p["exact"]]
        reachable = [i for i in range(len(exact)) if exact[i] < T[i]]
        # |estimate - exact| as a share of the block's tokens, for each block, of one estimate.
        off = lambda key: [abs(n - e) / t for n, e, t in zip((n for p in pairs for n in p[key]), exact, T)]  # noqa: E731
        err, err_start = off("predicted"), off("started")
        binary_seconds = sum(p["binary_seconds"] for p in pairs)
        binary_evals = sum(p["binary_evals"] for p in pairs)
        per_eval = binary_seconds / max(1, binary_evals)
        prediction_cost = sum(p["predict_seconds"] for p in pairs) / len(exact)  # one prediction per block
        relative = prediction_cost / per_eval
        print(f"\n{target.metric} {target.threshold:g}: {len(clips)} clips, {len(exact)} blocks "
              f"({len(reachable)} where some count meets the target), "
              f"tolerance {Fraction(tolerance).limit_denominator()}")
        print(f"predictor error |predicted - exact| / tokens: mean {100 * np.mean(err):.2f}% over all blocks, "
              f"{100 * np.mean([err[i] for i in reachable]) if reachable else float('nan'):.2f}% over reachable ones; "
              f"median {100 * np.median(err):.2f}%; within 1/64 of the tokens on "
              f"{sum(e <= 1 / 64 for e in err)}/{len(err)}")
        # Where the error lies: each clip's share of the mean, and its margin at every token, predicted and
        # measured (averaged over the blocks where binary measured it): near-floor targets are the hard ones.
        first = np.cumsum([0] + [len(p["exact"]) for p in pairs])
        for clip, p, i in zip(clips, pairs, first):
            floors = np.array(p["floors"]).reshape(-1, 2)
            floor = (f"margin at every token predicted {floors[:, 0].mean():+.3f}, measured {floors[:, 1].mean():+.3f} "
                     f"({len(floors)} blocks)" if len(floors) else "every token not measured (binary never tried it)")
            print(f"  {Path(clip).name}: {100 * sum(err[i : i + len(p['exact'])]) / len(err):.2f} points of the mean; "
                  + floor)
        print(f"corrected by the error on the block before and halfway to its count (where predict starts): "
              f"mean {100 * np.mean(err_start):.2f}%,"
              f" {100 * np.mean([err_start[i] for i in reachable]) if reachable else float('nan'):.2f}% over reachable "
              f"ones; within 1/64 on {sum(e <= 1 / 64 for e in err_start)}/{len(err)}")
        print(f"predict's start combines two estimates, alone: the corrected prediction "
              f"{100 * np.mean(off('corrected')):.2f}%, the block before's count {100 * np.mean(off('previous')):.2f}% "
              "(a clip's first block: the prediction)")
        print(f"a prediction costs {1000 * prediction_cost:.1f} ms = {relative:.3f} of a full pass "
              f"({1000 * per_eval:.0f} ms)")
        same = {k: sum(sum(p["evals"][k]) for p in pairs) / len(exact) for k in ("predict", "fast", "binary")}
        print("same context, evaluations per block: " + ", ".join(f"{k} {v:.2f}" for k, v in same.items())
              + f", exact binary {binary_evals / len(exact):.2f}")
        # Tokens against exact binary's on the same curves: over all blocks, and over the reachable ones alone
        # (blocks that keep every token whatever the search dilute the cost of a tolerance).
        counts = {k: [n for p in pairs for n in p["counts"][k]] for k in same}
        cost = lambda k, idx: (100 * (sum(counts[k][i] for i in idx) / sum(exact[i] for i in idx) - 1)  # noqa: E731
                               if len(idx) else float("nan"))
        print("same context, total tokens against exact binary (all blocks / reachable ones): "
              + ", ".join(f"{k} {cost(k, range(len(exact))):+.2f}% / {cost(k, reachable):+.2f}%" for k in same))
        if not separate:
            continue
        # Whole encodes, each in its own run; clip by clip, every search in turn, so that a neighbour's load
        # on this machine falls on all of them alike.
        rows = {name: [0.0, 0, 0, 0, 0] for name in runs}  # seconds, evaluations, tokens, met, blocks
        for video in videos:
            for name, (search, tol) in runs.items():
                start = time.perf_counter()
                result = encode_adaptive(model, video, CodingOptions(target=target, search=search, tolerance=tol,
                                                                     context_blocks=context_blocks))
                row = rows[name]
                row[0] += time.perf_counter() - start
                for choice in result.choices[0]:
                    row[1] += choice.evaluations
                    row[3] += target.met(choice.value) or choice.count == result.tokens.tokens_per_block
                    row[4] += 1
                row[2] += int(result.tokens.counts.sum())
        print(f"{'search':<18}{'seconds':>9}{'full passes/block':>19}{'vs exact binary':>17}{'total tokens':>14}"
              f"{'vs binary':>11}{'meets target':>14}")
        reference_seconds, reference_tokens = rows["binary exact"][0], rows["binary exact"][2]
        for name, (seconds, evals, tokens, met, blocks) in rows.items():
            # The prediction counts at its measured cost relative to a full pass.
            passes = evals / blocks + (relative if runs[name][0] == "predict" else 0.0)
            print(f"{name:<18}{seconds:>9.1f}{passes:>19.2f}{reference_seconds / seconds:>16.2f}x{tokens:>14}"
                  f"{100 * (tokens / reference_tokens - 1):>+10.2f}%{f'{met}/{blocks}':>14}")


def load_clip(clip: str, model, frames: int, fps, resolution) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1]: a video file, or frames saved by ``--save-clips`` (no PyAV needed,
    for machines without it, such as the GPU machine this project borrows)."""
    if clip.endswith(".npy"):
        array = torch.from_numpy(np.load(clip))[:frames]  # (T, H, W, 3) uint8
        return (array.permute(3, 0, 1, 2).float() / 127.5 - 1)[None]
    video, _ = load_input(clip, model.config, resolution=resolution, max_frames=frames, fps=fps)
    return video


def save_clips(clips: list[str], out: str, model, frames: int, fps, resolution) -> None:
    """Decode each clip as the benchmark would and save it as uint8 frames (T, H, W, 3), exactly."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for clip in clips:
        video = load_input(clip, model.config, resolution=resolution, max_frames=frames, fps=fps)[0][0]
        array = ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)  # (T, H, W, 3)
        np.save(Path(out) / f"{Path(clip).stem}.npy", array.numpy())
        print(f"{clip} -> {Path(out) / Path(clip).stem}.npy {tuple(array.shape)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="mask-conditioned model (default: the embedded model)")
    parser.add_argument("--unconditioned-model", help="an encoder_conditioning='none' model to compare as well")
    parser.add_argument("--clips", nargs="*", default=sorted(str(p) for p in DEV.glob("*.mp4")))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.003)
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--resolution", type=int, help="shorter side in pixels (any-size models; default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--speculation", default="0",
                        help="also run fast with this many levels per batched pass, or 'auto' (its default choice)")
    parser.add_argument("--context-blocks", type=int,
                        help="earlier blocks each block attends to (default: the model's trained window, "
                        "the library's default; a number >= the clip's blocks gives every earlier block)")
    parser.add_argument("--tolerance", nargs="+", type=Fraction, default=[], metavar="T",
                        help="also run fast at each tolerance (a fraction of the block's tokens, e.g. 0 1/256 1/64) "
                        "and print the total tokens against binary's")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--encodes-only", action="store_true",
                      help="skip the official procedure and the same-context comparison (only the encodes)")
    only.add_argument("--paired-only", action="store_true",
                      help="only the same-context comparison: every search on each block against binary's context")
    parser.add_argument("--save-clips", metavar="DIR", help="only decode the clips into DIR as .npy frames, then stop")
    parser.add_argument("--targets", nargs="+", type=parse_target, metavar="METRIC:VALUE",
                        help="only the predictor table: its accuracy, and predict against fast and binary, at each "
                        "target (e.g. mse:0.02 mse:0.03 psnr:25; with --paired-only, only the same-context "
                        "part); binary and fast run at the first --tolerance (default: predict's), predict at "
                        "each; the model needs a predictor")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.frames} frames per clip")
    model = load_pretrained(args.model, device=args.device) if args.model else load_default_model(device=args.device)[0]
    if args.save_clips:
        save_clips(args.clips, args.save_clips, model, args.frames, args.fps, args.resolution)
        return
    if args.targets:
        tolerances = [float(t) for t in args.tolerance] or [DEFAULT_TOLERANCE["predict"]]
        bench_predict(model, args.clips, args.frames, args.fps, args.resolution, args.targets, tolerances,
                      args.context_blocks, not args.paired_only)
        return
    common = (args.clips, args.frames, args.threshold, args.fps, args.resolution, args.speculation, args.context_blocks,
              args.tolerance, not (args.encodes_only or args.paired_only), not args.paired_only, not args.encodes_only)
    bench_model(args.model or "default model", model, *common)
    if args.unconditioned_model:
        bench_model(args.unconditioned_model, load_pretrained(args.unconditioned_model, device=args.device), *common)


if __name__ == "__main__":
    main()
