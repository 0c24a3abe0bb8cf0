"""The .etok token file: round trips, bit packing, size, random access, corruption, atomicity, streaming."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from elastictok.model.tokens import Tokens
from elastictok.tokenfile.format import (
    FORMAT_VERSION,
    TokenFile,
    TokenFileError,
    TokenFileWriter,
    bits_for_codebook,
    model_fingerprint,
    open_token_file,
    pack_bits,
    read_tokens,
    unpack_bits,
    write_tokens,
)
from helpers import random_video, tiny


@pytest.fixture(scope="module")
def fsq():
    return tiny("tiny-fsq")


@pytest.fixture(scope="module")
def vae():
    return tiny("tiny-vae")


def _encode(model, frames: int = 10, seed: int = 0) -> Tokens:
    """Batch-of-one tokens with random per-block counts (the last block holds padded frames)."""
    c = model.config
    n_blocks = -(-frames // c.frames_per_block)
    T = c.tokens_per_block()
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, T + 1, (1, n_blocks), generator=g)
    return model.encode(random_video(1, frames, seed=seed), counts)


@pytest.fixture(scope="module")
def fsq_file(fsq, tmp_path_factory) -> tuple[Path, Tokens]:
    tokens = _encode(fsq, frames=22)  # 6 blocks
    keys = torch.tensor([[True, False, False, True, False, False]])
    tokens = replace(tokens, keyframes=keys)  # as if block 3 had been coded afresh (a scene cut)
    path = tmp_path_factory.mktemp("etok") / "clip.etok"
    write_tokens(path, tokens, fsq, fps=24.0, settings={"metric": "psnr", "threshold": 30.0})
    return path, tokens


def _copy(src: Path, dst_dir: Path, edit=None) -> Path:
    data = bytearray(src.read_bytes())
    if edit is not None:
        data = edit(data)
    dst = dst_dir / "edited.etok"
    dst.write_bytes(bytes(data))
    return dst


def _one_line_error(path: Path, model=None) -> str:
    with pytest.raises(TokenFileError) as err:
        read_tokens(path, model)
    message = str(err.value)
    assert "\n" not in message and message
    return message


def _record_offset(path: Path, block: int) -> int:
    """Offset of block ``block``'s record, found by following docs/etok-format.md by hand."""
    data = path.read_bytes()
    index_offset, n_blocks, _, _, magic = struct.unpack("<QQQI4x8s", data[-40:])
    assert magic == b"ETOK_END" and block < n_blocks
    (offset,) = struct.unpack_from("<Q", data, index_offset + 16 * block)
    return offset


# Round trips -------------------------------------------------------------------------------------
def test_fsq_round_trip_decodes_bit_for_bit(fsq, fsq_file):
    path, tokens = fsq_file
    back = read_tokens(path, fsq)
    assert torch.equal(back.counts, tokens.counts)
    assert back.kind == "fsq" and back.num_frames == 22 and back.frame_size == (32, 32)
    assert back.values.dtype == torch.long
    assert torch.equal(back.values[back.keep_mask()], tokens.values[tokens.keep_mask()])
    assert torch.equal(back.values[~back.keep_mask()], torch.zeros_like(back.values[~back.keep_mask()]))
    assert torch.equal(fsq.decode(back), fsq.decode(tokens))


def test_vae_round_trip_is_exact_at_half_precision(vae, tmp_path):
    tokens = _encode(vae, frames=9)
    path = write_tokens(tmp_path / "v.etok", tokens, vae)
    back = read_tokens(path, vae)
    assert back.values.dtype == torch.float32 and back.kind == "vae"
    rounded = replace(tokens, values=tokens.values.half().float() * tokens.keep_mask()[..., None])
    assert torch.equal(back.values, rounded.values)
    assert torch.equal(vae.decode(back), vae.decode(rounded))


def test_image_header_and_info(fsq, tmp_path):
    tokens = fsq.encode(random_video(1, 1), 5)
    path = write_tokens(tmp_path / "img.etok", tokens, fsq, settings={"search": "binary"})
    with open_token_file(path) as f:
        info = f.info()
        assert json.loads(json.dumps(info)) == info
        assert info["fps"] is None and info["num_frames"] == 1 and info["frames_per_block"] == 4
        # The tokens' context window is recorded next to the caller's settings.
        assert info["settings"] == {"search": "binary", "context_blocks": 3}
        assert info["counts"] == [5] and info["total_tokens"] == 5
        assert info["bits_per_index"] == 16 and info["codebook_size"] == 64000
        assert info["format_version"] == FORMAT_VERSION
        assert f.header["model_fingerprint"] == model_fingerprint(fsq)
    assert fsq.decode(read_tokens(path, fsq)).shape == (1, 3, 1, 32, 32)


def test_context_window_travels_with_the_file(fsq, tmp_path):
    video = random_video(1, 20)  # 5 blocks: a 1-block window changes blocks 2-4
    tokens = fsq.encode(video, 9, context_blocks=1)
    back = read_tokens(write_tokens(tmp_path / "w.etok", tokens, fsq), fsq)
    assert back.context_blocks == 1
    assert torch.equal(fsq.decode(back), fsq.decode(tokens))
    with pytest.raises(ValueError, match="encoded with 1"):
        write_tokens(tmp_path / "x.etok", tokens, fsq, settings={"context_blocks": 3})
    assert not (tmp_path / "x.etok").exists()
    bad = {"context_blocks": "all"}
    with TokenFileWriter.for_model(tmp_path / "bad.etok", fsq, frame_size=(32, 32), settings=bad) as w:
        w.write_block(tokens.block(0, 0), 9)
    with pytest.raises(TokenFileError, match="context window"):
        read_tokens(tmp_path / "bad.etok")


def test_keyframes_travel_with_the_file(fsq, tmp_path):
    from elastictok.coding.adaptive import encode_adaptive
    from elastictok.coding.options import CodingOptions
    from elastictok.coding.target import Target

    options = CodingOptions(target=Target("mse", 0.05), keyframe_interval=2)
    result = encode_adaptive(fsq, random_video(1, 20) * 0.3, options)
    tokens = result.tokens
    path = write_tokens(tmp_path / "k.etok", tokens, fsq)
    with open_token_file(path) as f:
        assert f.keyframes == [0, 2, 4]
        assert f.to_tokens(2).keyframes.tolist() == [[True, False, True]]
        assert f.to_tokens(0, 2).keyframes is None
    back = read_tokens(path, fsq)
    assert torch.equal(back.keyframes, tokens.keyframes)
    assert torch.equal(fsq.decode(back), fsq.decode(tokens))
    # A range from a keyframe decodes, at its own positions, to what the whole file gives there.
    with open_token_file(path) as f:
        tail = f.to_tokens(2)
        assert tail.start_block == 2 and tail.num_frames == 12
        torch.testing.assert_close(fsq.decode(tail), result.recon[:, :, 8:], rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="start at block 2"):
            write_tokens(tmp_path / "tail.etok", tail, fsq)


# Bit packing -------------------------------------------------------------------------------------
def _reference_pack(values: list[int], width: int) -> bytes:
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * width)
    return acc.to_bytes(-(-len(values) * width // 8), "little")


@pytest.mark.parametrize("width", [1, 3, 7, 8, 16, 17, 31, 32])
@pytest.mark.parametrize("count", [0, 1, 5, 13, 101])
def test_bit_packing_round_trip(width, count):
    rng = np.random.default_rng(width * 1000 + count)
    values = rng.integers(0, 1 << width, size=count, dtype=np.int64)
    if count:
        values[0] = (1 << width) - 1  # the top bit must survive
    packed = pack_bits(values, width)
    assert len(packed) == -(-count * width // 8)
    assert packed == _reference_pack(values.tolist(), width)  # LSB-first, as documented
    back = unpack_bits(packed, width, count)
    assert back.dtype == np.int64 and np.array_equal(back, values)


def test_bit_packing_rejects_bad_input():
    with pytest.raises(ValueError):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([-1]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([1]), 33)
    with pytest.raises(ValueError):
        unpack_bits(b"\x00", 7, 2)


def test_bits_for_codebook():
    assert [bits_for_codebook(n) for n in (2, 3, 4, 5, 64000, 65536, 65537)] == [1, 2, 2, 3, 16, 16, 17]


# Size and random access --------------------------------------------------------------------------
def test_fsq_file_stores_16_bits_per_kept_token(fsq_file):
    path, tokens = fsq_file
    with TokenFile(path) as f:
        info = f.info()
    total = int(tokens.total_tokens)
    assert info["total_tokens"] == total and info["payload_bytes"] == 2 * total
    assert 0 < path.stat().st_size - 2 * total < 1024


def test_random_access(fsq_file):
    path, tokens = fsq_file
    with TokenFile(path) as f:
        assert f.num_blocks == 6 and f.keyframes == [0, 3] and f.counts == tokens.counts[0].tolist()
        assert torch.equal(f.read_block(3), tokens.block(0, 3))
        assert torch.equal(f.read_block(5), tokens.block(0, 5))
        with pytest.raises(IndexError):
            f.read_block(6)
        tail = f.to_tokens(start_block=4)
        assert tail.num_blocks == 2 and tail.num_frames == 22 - 16
        assert torch.equal(tail.counts, tokens.counts[:, 4:])
        assert torch.equal(tail.values[tail.keep_mask()], tokens.values[:, 4:][tail.keep_mask()])
        middle = f.to_tokens(1, 3)
        assert middle.num_blocks == 2 and middle.num_frames == 8
        assert torch.equal(middle.counts, tokens.counts[:, 1:3])


# Refusals ----------------------------------------------------------------------------------------
def test_wrong_model_refused(fsq_file):
    path, _ = fsq_file
    other = tiny("tiny-fsq", seed=1)
    message = _one_line_error(path, other)
    with TokenFile(path) as f:
        expected = f.header["model_fingerprint"]
    assert f"was encoded with model {expected[:12]}" in message
    assert f"this model is {model_fingerprint(other)[:12]}" in message and "pass the model that encoded it" in message


def test_foreign_and_empty_files_refused(tmp_path):
    foreign = tmp_path / "foreign.etok"
    foreign.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100))
    assert "not an .etok token file" in _one_line_error(foreign)
    empty = tmp_path / "empty.etok"
    empty.write_bytes(b"")
    assert "not an .etok token file" in _one_line_error(empty)
    with pytest.raises(TokenFileError, match="cannot open"):
        TokenFile(tmp_path / "missing.etok")


@pytest.mark.parametrize("keep", [5, 14, 40, "middle", "minus1", "minus41"])
def test_truncated_file_refused(fsq_file, tmp_path, keep):
    path, _ = fsq_file
    size = path.stat().st_size
    cut = {"middle": size // 2, "minus1": size - 1, "minus41": size - 41}.get(keep, keep)
    truncated = _copy(path, tmp_path, lambda d: d[:cut])
    assert "truncated" in _one_line_error(truncated)


def test_flipped_payload_byte_names_the_block(fsq_file, tmp_path):
    path, _ = fsq_file

    def flip(data: bytearray) -> bytearray:
        data[_record_offset(path, 2) + 12 + 3] ^= 0x10  # 12-byte record head, then the payload
        return data

    damaged = _copy(path, tmp_path, flip)
    with TokenFile(damaged) as f, TokenFile(path) as good:  # the index is intact, so opening works
        assert torch.equal(f.read_block(1), good.read_block(1))
        with pytest.raises(TokenFileError, match="block 2: checksum mismatch"):
            f.read_block(2)
        with pytest.raises(TokenFileError, match="block 2"):
            f.verify()
    assert "block 2: checksum mismatch" in _one_line_error(damaged)


def test_flipped_header_byte_refused(fsq_file, tmp_path):
    path, _ = fsq_file

    def flip(data: bytearray) -> bytearray:
        data[30] ^= 0x01  # inside the header JSON (which starts at byte 16)
        return data

    assert "header checksum mismatch" in _one_line_error(_copy(path, tmp_path, flip))


def test_flipped_index_byte_refused(fsq_file, tmp_path):
    path, _ = fsq_file

    def flip(data: bytearray) -> bytearray:
        data[-40 - 16 + 8] ^= 0x01  # the count of the last index entry
        return data

    assert "index checksum mismatch" in _one_line_error(_copy(path, tmp_path, flip))


def test_newer_version_refused(fsq_file, tmp_path):
    path, _ = fsq_file

    def bump(data: bytearray) -> bytearray:
        data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
        return data

    message = _one_line_error(_copy(path, tmp_path, bump))
    assert f"format version {FORMAT_VERSION + 1} is newer" in message and f"version {FORMAT_VERSION}" in message


def test_write_tokens_refuses_batches_and_bad_keyframes(fsq, tmp_path):
    tokens = fsq.encode(random_video(2, 4), 8)
    with pytest.raises(ValueError, match="batch of 2"):
        write_tokens(tmp_path / "b.etok", tokens, fsq)
    with pytest.raises(ValueError, match="keyframes must be None or a bool tensor shaped like counts"):
        replace(tokens.select(0), keyframes=torch.tensor([[True, False, True]]))
    assert list(tmp_path.iterdir()) == []


# Atomicity and streaming -------------------------------------------------------------------------
def _writer(model, path: Path, **kwargs) -> TokenFileWriter:
    return TokenFileWriter.for_model(path, model, **kwargs)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_nothing_behind(fsq, tmp_path, exc):
    target = tmp_path / "out.etok"
    block = torch.arange(10)
    with pytest.raises(exc):
        with _writer(fsq, target) as w:
            w.write_block(block, 10)
            w.write_block(block, 10)
            assert w.tmp_path.exists() and w.tmp_path.name.startswith(".out.etok.")
            raise exc()
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"precious")
    with pytest.raises(exc):
        with _writer(fsq, target) as w:
            w.write_block(block, 10)
            w.write_block(block, 10)
            raise exc()
    assert [p.name for p in tmp_path.iterdir()] == ["out.etok"] and target.read_bytes() == b"precious"


def test_invalid_block_aborts_the_write(fsq, tmp_path):
    target = tmp_path / "out.etok"
    with pytest.raises(ValueError, match="count must be in"):
        with _writer(fsq, target) as w:
            w.write_block(torch.arange(3), 0)
    with pytest.raises(ValueError, match="indices must be in"):
        with _writer(fsq, target) as w:
            w.write_block(torch.full((3,), 64000), 3)
    with pytest.raises(ValueError, match="num_frames"):
        with _writer(fsq, target, num_frames=9) as w:
            w.write_block(torch.arange(3), 3)
    assert list(tmp_path.iterdir()) == []


def test_streaming_200_blocks(fsq, tmp_path):
    target = tmp_path / "long.etok"
    T = fsq.config.tokens_per_block()
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randint(0, 64000, (int(n),), generator=g) for n in torch.randint(1, T + 1, (200,), generator=g)]
    with _writer(fsq, target, fps=30.0) as w:
        for i, block in enumerate(blocks):
            w.write_block(block, len(block), keyframe=i % 50 == 0)
        w.set_num_frames(799)
        # Only the compact index is kept; payloads went to disk.
        held = [v for v in vars(w).values() if isinstance(v, (list, tuple, dict, bytearray)) and v is not w.header]
        assert all(isinstance(v, bytearray) and len(v) == 16 * 200 for v in held)
        assert w.tmp_path.stat().st_size > 2 * sum(map(len, blocks)) - 8192  # buffered writes reach the file
        assert not target.exists()
    with TokenFile(target) as f:
        assert f.num_blocks == 200 and f.num_frames == 799 and f.keyframes == [0, 50, 100, 150]
        assert f.counts == [len(b) for b in blocks]
        assert all(torch.equal(f.read_block(i), blocks[i]) for i in (0, 99, 199))
        f.verify()
    assert [p.name for p in tmp_path.iterdir()] == ["long.etok"]


# Fingerprint -------------------------------------------------------------------------------------
def test_model_fingerprint(fsq):
    fp = model_fingerprint(fsq)
    assert len(fp) == 64 and fp == model_fingerprint(tiny("tiny-fsq"))
    changed = tiny("tiny-fsq")
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(changed) != fp
    assert model_fingerprint(tiny("tiny-fsq").to(torch.bfloat16)) not in (fp, None)
