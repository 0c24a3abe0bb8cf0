"""From a file to tokens and back, streaming: frames are read as needed, blocks written as they are coded.

Nothing here holds a whole video: ``encode_file`` appends each block to the ``.etok`` file as soon as
it is coded, ``reconstruct_file`` also streams the reconstruction into an mp4, and ``decode_file``
decodes block by block into the output video. The CLI and the web demo both call these.

Outputs are checked before any work (a missing or unwritable folder, a folder where a file goes, a
file where a folder goes raise ``OutputError`` naming the path as given), and a run that fails or is
interrupted leaves nothing behind: no temporary file, no partial output, no folder it created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from elastictok.coding.options import CodingOptions
from elastictok.coding.ratecontrol import plan_counts
from elastictok.coding.streaming import CodedBlock, code_blocks, decode_blocks, frames_of
from elastictok.files.outputs import Undo, check_output_dir, check_output_file
from elastictok.files.plot import plot_blocks, side_by_side
from elastictok.files.source import Source
from elastictok.media import io
from elastictok.model.autoencoder import ElasticTok
from elastictok.tokenfile.format import TokenFileWriter, open_token_file
from elastictok.utils.files import OutputError, write_json

# What reconstruct_file writes into its folder.
RECONSTRUCT_FILES = ("tokens.etok", "recon.png", "compare.png", "recon.mp4", "compare.mp4", "blocks.png", "stats.json")


def run(model: ElasticTok, source: Source, options: CodingOptions) -> tuple[Iterator[CodedBlock], dict]:
    """The coded blocks of ``source`` (a generator) and a report of the rate-control plan (if any)."""
    fpb = model.config.frames_per_block
    counts, report = None, {}
    if options.mode == "budget":
        counts, report = plan_counts(model, lambda: source.blocks(fpb), source.size, options)
    return code_blocks(model, source.blocks(fpb), options, counts), report


def block_stats(cb: CodedBlock, max_tokens: int) -> dict[str, Any]:
    return {"block": cb.index, "tokens": cb.count, "max_tokens": max_tokens, "mse": cb.mse, "psnr": cb.psnr,
            "keyframe": cb.keyframe, "evaluations": cb.evaluations}


def summarize(blocks: list[dict], source: Source, options: CodingOptions, report: dict, seconds: float) -> dict:
    """The ``stats.json`` of a coded file (schema in docs/cli.md)."""
    total = sum(b["tokens"] for b in blocks)
    most = sum(b["max_tokens"] for b in blocks)
    return {
        "input": source.path.name,
        "blocks": blocks,
        "total_tokens": total,
        "max_total_tokens": most,
        "token_fraction": total / most,
        "average_tokens_per_block": total / len(blocks),
        "mean_mse": sum(b["mse"] for b in blocks) / len(blocks),
        "mean_psnr": sum(b["psnr"] for b in blocks) / len(blocks),
        "keyframes": [b["block"] for b in blocks if b["keyframe"]],
        "frames": source.frames_read,
        "frame_size": list(source.size),
        "fps": source.fps,
        "settings": options.settings(),
        "rate_control": report or None,
        "seconds": seconds,
    }


def _values(model: ElasticTok, cb: CodedBlock) -> torch.Tensor:
    return model.codes_to_values(cb.codes)[0, : cb.count].cpu()


class BlockWriter:
    """Codes ``source`` and appends each block to an ``.etok`` file as it is coded.

    Iterate over it to get the coded blocks; the file is renamed into place only after the last one.
    ``stats`` holds the per-block figures and ``report`` the rate-control plan.
    """

    def __init__(self, model: ElasticTok, source: Source, out_path, options: CodingOptions,
                 on_block: Callable[[CodedBlock], None] | None = None) -> None:
        self.model, self.source, self.out_path, self.options, self.on_block = model, source, out_path, options, on_block
        self.stats: list[dict] = []
        self.report: dict = {}
        self.start = time.perf_counter()

    def __iter__(self) -> Iterator[CodedBlock]:
        model, source = self.model, self.source
        blocks, self.report = run(model, source, self.options)
        T = model.config.tokens_per_block(source.size)
        try:
            writer = TokenFileWriter.for_model(self.out_path, model, frame_size=source.size, fps=source.fps,
                                               settings=self.options.settings())
        except OSError as err:  # the writer's own message names its hidden temporary file
            raise OutputError(f"cannot write {str(self.out_path)!r}: {err.strerror or err}") from err
        try:
            for cb in blocks:
                writer.write_block(_values(model, cb), cb.count, keyframe=cb.keyframe)
                self.stats.append(block_stats(cb, T))
                if self.on_block is not None:
                    self.on_block(cb)
                yield cb
            writer.set_num_frames(source.frames_read)
        except BaseException:
            writer.abort()
            raise
        finally:
            _close(blocks)  # stop the frame reader now, not at garbage collection
        try:
            writer.close()
        except OSError as err:
            raise OutputError(f"cannot write {str(self.out_path)!r}: {err.strerror or err}") from err

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.start
        return summarize(self.stats, self.source, self.options, self.report, seconds)


def _close(iterator: Iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _prepared(model: ElasticTok, source: Source, options: CodingOptions) -> CodingOptions:
    """``options`` checked against this model and frame size before anything is written."""
    options.bounds(model.config, source.size)
    return options.for_model(model)


def encode_file(
    model: ElasticTok, source: Source, out_path, options: CodingOptions,
    on_block: Callable[[CodedBlock], None] | None = None,
) -> dict:
    """Code ``source`` block by block into ``out_path`` (.etok), appending each block as it is coded.

    The output is checked first; the file appears only once complete (a failure leaves none).
    """
    options = _prepared(model, source, options)
    check_output_file(out_path, inputs=[source.path])
    writer = BlockWriter(model, source, out_path, options, on_block)
    blocks = iter(writer)
    try:
        for _ in blocks:
            pass
    finally:
        _close(blocks)  # on an interrupt between blocks, the writer aborts here and now
    return writer.summary()


def reconstruct_file(
    model: ElasticTok, source: Source, out_dir, options: CodingOptions,
    on_block: Callable[[CodedBlock], None] | None = None,
) -> dict:
    """Write ``tokens.etok``, ``recon`` and ``compare`` (png or mp4), ``blocks.png`` and ``stats.json``.

    Videos stream: the reconstruction goes to recon.mp4 block by block while the token file grows,
    and compare.mp4 is made afterwards from the input and recon.mp4, frame by frame. ``out_dir`` is
    checked first; if the run fails, the files it wrote and the folders it created are removed.
    """
    options = _prepared(model, source, options)
    out = check_output_dir(out_dir)
    with Undo() as undo:
        if out.exists():
            for name in RECONSTRUCT_FILES:
                undo.file(out / name)
        else:
            undo.dirs(out)
        return _reconstruct(model, source, out, options, on_block)


def _reconstruct(model: ElasticTok, source: Source, out: Path, options: CodingOptions,
                 on_block: Callable[[CodedBlock], None] | None) -> dict:
    writer = BlockWriter(model, source, out / "tokens.etok", options, on_block)
    last: list[torch.Tensor] = []

    def recon_frames() -> Iterator[torch.Tensor]:
        blocks = iter(writer)
        try:
            for cb in blocks:
                last[:] = [cb.recon]
                # The source has counted this block's real frames by now; padding is never emitted.
                real = source.frames_read - cb.index * model.config.frames_per_block
                yield from (cb.recon[0, :, t] for t in range(real))
        finally:
            _close(blocks)

    if source.is_video:
        io.save_video(recon_frames(), out / "recon.mp4", source.fps)
        pairs = zip(source.frames(), io.iter_video_frames(out / "recon.mp4"))
        compare = (side_by_side(a[:, None], b[:, None])[:, 0] for a, b in pairs)
        io.save_video(compare, out / "compare.mp4", source.fps)
    else:
        for _ in recon_frames():
            pass
        image = next(source.frames())[:, None]  # (3, 1, H, W)
        io.save_image(last[0][0, :, 0], out / "recon.png")
        io.save_image(side_by_side(image, last[0][0, :, :1])[:, 0], out / "compare.png")
    result = writer.summary()
    plot_blocks(result, out / "blocks.png")
    write_json(out / "stats.json", result)
    return result


def decode_frames(model: ElasticTok, f, start_block: int = 0) -> Iterator[torch.Tensor]:
    """(3, H, W) frames of an open token file, decoded block by block from block 0 or a keyframe."""
    f.check_model(model)
    size = tuple(f.header["frame_size"])
    if not 0 <= start_block < f.num_blocks:
        raise ValueError(f"start block {start_block} is outside the file's {f.num_blocks} blocks")
    T = model.config.tokens_per_block(size)
    codes = (_block_codes(model, f.read_block(i), T) for i in range(start_block, f.num_blocks))
    blocks = decode_blocks(model, codes, size, f.keyframes, f.context_blocks, start_block)
    return frames_of(blocks, f.num_frames - start_block * model.config.frames_per_block)


def decode_file(model: ElasticTok, etok_path, out_path, start_block: int = 0) -> Path:
    """Decode an ``.etok`` file into an image or a video (streamed), from block 0 or a keyframe."""
    check_output_file(out_path, inputs=[etok_path])
    with open_token_file(etok_path) as f:
        frames = decode_frames(model, f, start_block)
        if Path(out_path).suffix.lower() in io.VIDEO_EXTS:
            return io.save_video(frames, out_path, f.header.get("fps") or 24.0)
        if f.num_frames - start_block * model.config.frames_per_block != 1:
            raise ValueError(f"{etok_path} holds {f.num_frames} frames; write it to a video file such as out.mp4")
        if Path(out_path).suffix.lower() not in io.IMAGE_EXTS:  # before decoding, not after
            known = ", ".join(sorted(io.IMAGE_EXTS | io.VIDEO_EXTS))
            raise io.MediaError(f"cannot write {str(out_path)!r}: unsupported extension (expected one of {known})")
        return io.save_image(next(frames), out_path)


def _block_codes(model: ElasticTok, kept: torch.Tensor, tokens_per_block: int) -> torch.Tensor:
    """Kept tokens of one block -> masked codes (1, T, D) for the decoder."""
    codes = model.values_to_codes(kept.to(model.device))  # (n, D)
    out = torch.zeros(1, tokens_per_block, model.config.latent_dim, device=codes.device)
    out[0, : codes.shape[0]] = codes
    return out
