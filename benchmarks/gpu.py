"""One command for a GPU machine, no downloads: the fsq-200m model at 256x256 with random weights, bf16 autocast.

Prints encode and decode throughput (frames/s), the model FLOPs utilisation (MFU) against a peak of
790 TFLOP/s (dense bf16; ``--peak-tflops``), and the time to adaptively encode one clip of
``--frames`` frames (default 33) with the ``binary`` and ``fast`` searches. Throughput is measured on
batches of 16-frame clips (4 blocks, the official inference chunk). Usage::

    python benchmarks/gpu.py                                      # on the GPU machine
    python benchmarks/gpu.py --preset tiny-fsq --frames 8         # a CPU smoke test

FLOPs are counted analytically for one forward pass of the stack that runs (the encoder for encode,
the decoder for decode), over L = blocks x T tokens per clip:

- matmuls: ``2 * P * L``, P = the weights of every ``nn.Linear`` in that stack (projections in and out,
  attention, SwiGLU);
- attention: ``4 * layers * ctx * d`` per token (QK^T and AV, 2 FLOPs per multiply-add), where ctx is
  the keys a query may attend: block-causal, a token of block i sees (i + 1) * T keys, so ctx averages
  T * (blocks + 1) / 2 over a clip.

Norms, RoPE, softmax and the FSQ are not counted, and neither are the masked-out scores that SDPA
computes anyway, so this is the *useful* FLOP rate. Random weights never meet the MSE target, so the
adaptive searches run their worst case (every block ends at all tokens); a trained model is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from elastictok import ElasticTok, ElasticTokConfig
from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target


def linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def stack_flops(stack: nn.Module, layers: int, d: int, T: int, blocks: int) -> float:
    """Useful FLOPs of one whole-sequence pass of an encoder or decoder over one clip."""
    L = T * blocks
    ctx = T * (blocks + 1) / 2
    return 2 * linear_weights(stack) * L + 4 * layers * ctx * d * L


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fsq-200m",
                        help="model preset (default fsq-200m; tiny-fsq for a smoke test)")
    parser.add_argument("--size", type=int, help="frame side (default: the preset's, 256 for fsq-200m)")
    parser.add_argument("--frames", type=int, default=33, help="frames of the adaptive clip (default 33); throughput "
                        "clips take at most 16 of them, in whole blocks")
    parser.add_argument("--batch", type=int, default=4, help="clips per throughput call")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.003, help="block-MSE target of the adaptive encodes")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="peak for the MFU (default 790, dense bf16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    config = ElasticTokConfig.from_preset(args.preset)
    size = (args.size, args.size) if args.size else tuple(config.frame_size)
    model = ElasticTok(config).to(device).eval()
    fpb, T = config.frames_per_block, config.tokens_per_block(size)
    frames = max(fpb, min(16, args.frames) // fpb * fpb)  # the official inference chunk: 4 blocks
    blocks = frames // fpb
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.preset} (random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) at "
          f"{size[0]}x{size[1]}, {T} tokens per block; {name}; torch {torch.__version__}; bf16 autocast")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    video = torch.rand(args.batch, 3, frames, *size, device=device) * 2 - 1
    with autocast:
        tokens = model.encode(video)
        encode_s = timed(lambda: model.encode(video), device, args.repeat)
        decode_s = timed(lambda: model.decode(tokens), device, args.repeat)
    enc_flops = stack_flops(model.encoder, config.num_encoder_layers, config.hidden_size, T, blocks) * args.batch
    dec_flops = stack_flops(model.decoder, config.num_decoder_layers, config.hidden_size, T, blocks) * args.batch
    print(f"\nthroughput: {args.batch} clips x {frames} frames ({blocks} blocks, {blocks * T} tokens per clip), "
          f"median of {args.repeat}")
    print(f"{'pass':<8}{'seconds':>10}{'frames/s':>12}{'TFLOP':>10}{'TFLOP/s':>10}{'MFU':>8}")
    for label, seconds, flops in (("encode", encode_s, enc_flops), ("decode", decode_s, dec_flops)):
        rate = flops / seconds / 1e12
        print(f"{label:<8}{seconds:>10.4f}{args.batch * frames / seconds:>12.1f}{flops / 1e12:>10.3f}{rate:>10.2f}"
              f"{100 * rate / args.peak_tflops:>7.2f}%")
    print(f"(MFU against {args.peak_tflops:g} TFLOP/s; FLOPs = 2 * Linear weights * tokens "
          "+ 4 * layers * ctx * d per token)")

    clip = torch.rand(1, 3, args.frames, *size, device=device) * 2 - 1
    print(f"\nadaptive encode of one {args.frames}-frame clip ({-(-args.frames // fpb)} blocks), "
          f"block MSE <= {args.threshold}")
    # passes: sequential model calls; candidates: counts scored (more than the passes when `fast`
    # batches levels of bisection, which it does on CUDA when a batch costs little more than one).
    print(f"{'search':<8}{'seconds':>10}{'passes':>8}{'passes/block':>14}{'candidates':>12}{'tokens/block':>14}")
    for search in ("binary", "fast"):
        with autocast:
            encode_adaptive(model, clip[:, :, :fpb],
                            CodingOptions(target=Target("mse", args.threshold), search=search))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = encode_adaptive(model, clip, CodingOptions(target=Target("mse", args.threshold), search=search))
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        n = result.tokens.num_blocks
        print(f"{search:<8}{seconds:>10.2f}{result.passes:>8}{result.passes / n:>14.1f}{result.evaluations:>12}"
              f"{float(result.tokens.counts.float().mean()):>14.0f}")
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
