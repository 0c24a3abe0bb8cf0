"""Hostile .etok files: every one is refused with a one-line TokenFileError, nothing else escapes.

Files are built here byte by byte from docs/etok-format.md (``build``), with valid checksums, so each
test reaches the check it is about instead of stopping at a CRC.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from elastictok.app.cli import main as cli_main
from elastictok.tokenfile import format as fmt
from elastictok.tokenfile.format import TokenFile, TokenFileError, pack_bits, read_tokens, write_tokens
from helpers import random_video, tiny

MAGIC = b"\x89ETOK\r\n\x1a"


def build(header: dict | bytes, blocks: list[tuple[int, int, bytes]], num_frames: int) -> bytes:
    """An .etok file from the spec: ``header`` (a dict, or the raw header bytes) and (count, flags, payload)
    records; every CRC is right."""
    body = header if isinstance(header, bytes) else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    out = bytearray(MAGIC + struct.pack("<II", 1, len(body)) + body + struct.pack("<I", zlib.crc32(body)))
    index = bytearray()
    for count, flags, payload in blocks:
        offset = len(out)
        head = struct.pack("<IIB3x", count, len(payload), flags)
        out += head + payload + struct.pack("<I", zlib.crc32(head + payload))
        index += struct.pack("<QIB3x", offset, count, flags)
    fields = struct.pack("<QQQ", len(out), len(blocks), num_frames)
    out += index + fields + struct.pack("<I4x8s", zlib.crc32(index + fields), b"ETOK_END")
    return bytes(out)


def fsq_header(**changes) -> dict:
    header = {
        "model_fingerprint": "0" * 64, "kind": "fsq", "codebook_size": 64000, "bits_per_index": 16, "latent_dim": 6,
        "value_dtype": "packed-uint", "frame_size": [32, 32], "fps": 24.0, "frames_per_block": 4,
        "tokens_per_block": 64, "settings": {}, "writer": "test",
    }
    return {**header, **changes}


def vae_header(**changes) -> dict:
    vae = {"kind": "vae", "codebook_size": 0, "bits_per_index": None, "latent_dim": 4, "value_dtype": "float16"}
    return fsq_header(**{**vae, **changes})


def fsq_block(values, bits: int = 16, flags: int = 0) -> tuple[int, int, bytes]:
    return len(values), flags, pack_bits(np.asarray(values, dtype=np.int64), bits)


GOOD_BLOCKS = [fsq_block([1, 2, 3], flags=1), fsq_block([63999, 0])]


def _refusal(path: Path) -> str:
    """The one-line TokenFileError that opening and reading everything raises."""
    with pytest.raises(TokenFileError) as err:
        with TokenFile(path) as f:
            f.info()
            f.to_tokens()
    message = str(err.value)
    assert message and "\n" not in message
    return message


def _write(tmp_path: Path, data: bytes, name: str = "hostile.etok") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    model = tiny("tiny-fsq")
    path = tmp_path_factory.mktemp("etok") / "clip.etok"
    return write_tokens(path, model.encode(random_video(1, 10), torch.tensor([[9, 1, 30]])), model, fps=24.0)


def test_the_builder_follows_the_spec_byte_for_byte(written):
    with TokenFile(written) as f:
        header = {k: v for k, v in f.header.items() if k != "num_frames"}
        keys = f.keyframes
        blocks = [(c, int(i in keys), pack_bits(f.read_block(i).numpy(), 16)) for i, c in enumerate(f.counts)]
        assert build(header, blocks, f.num_frames) == written.read_bytes()
    assert read_tokens(written).counts.tolist() == [[9, 1, 30]]


def test_a_built_file_reads(tmp_path):
    with TokenFile(_write(tmp_path, build(fsq_header(), GOOD_BLOCKS, 6))) as f:
        assert f.counts == [3, 2] and f.keyframes == [0] and f.read_block(1).tolist() == [63999, 0]
        assert f.info()["total_tokens"] == 5


# info() checks the block data -----------------------------------------------------------------------
def _damaged(written: Path, tmp_path: Path) -> Path:
    data = bytearray(written.read_bytes())
    index_offset, _, _, _, _ = struct.unpack("<QQQI4x8s", data[-40:])
    (offset,) = struct.unpack_from("<Q", data, index_offset + 16 * 2)
    data[offset + 12 + 5] ^= 0x04  # a payload byte of block 2; header, index and footer stay intact
    return _write(tmp_path, bytes(data), "damaged.etok")


def test_info_reads_and_checks_every_block(written, tmp_path):
    with TokenFile(_damaged(written, tmp_path)) as f:
        with pytest.raises(TokenFileError, match="block 2: checksum mismatch"):
            f.info()


def test_cli_info_refuses_a_file_with_a_damaged_block(written, tmp_path, capsys):
    assert cli_main(["info", str(written)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == [9, 1, 30]
    assert cli_main(["info", str(_damaged(written, tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "block 2: checksum mismatch" in captured.err


# Extra bytes are not truncation ---------------------------------------------------------------------
@pytest.mark.parametrize("junk", ["one-byte", "zeros-40", "random-1000", "footer-magic", "fake-footer", "itself"])
def test_appended_bytes_are_named_as_extra_not_truncated(written, tmp_path, junk):
    good = written.read_bytes()
    extra = {
        "one-byte": b"\n",
        "zeros-40": bytes(40),
        "random-1000": np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes(),
        "footer-magic": b"ETOK_END",
        "fake-footer": good[-40:],  # a footer that does not fit where it now stands
        "itself": good,  # two files back to back
    }[junk]
    message = _refusal(_write(tmp_path, good + extra))
    assert f"{len(extra)} extra bytes after the end of the token file (its footer ends at byte {len(good)}" in message
    assert "truncated" not in message


@pytest.mark.parametrize("cut", [41, 100, 1])
def test_cut_files_are_still_truncated_even_with_bytes_appended(written, tmp_path, cut):
    good = written.read_bytes()
    assert "truncated" in _refusal(_write(tmp_path, good[:-cut]))
    assert "truncated" in _refusal(_write(tmp_path, good[:-cut] + b"garbage" * 9))


def test_damaged_footer_magic_is_not_called_truncation(written, tmp_path):
    data = bytearray(written.read_bytes())
    data[-1] ^= 0x20
    assert "footer magic is damaged" in _refusal(_write(tmp_path, bytes(data)))


# Token values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("codebook", "bits", "values", "bad"), [
    (64000, 16, [63999, 64000, 5], (1, 64000)),
    (64000, 16, [0, 1, 65535], (2, 65535)),
    (5, 3, [4, 4, 7, 0], (2, 7)),
])
def test_fsq_indices_past_the_codebook_are_refused(tmp_path, codebook, bits, values, bad):
    header = fsq_header(codebook_size=codebook, bits_per_index=bits)
    path = _write(tmp_path, build(header, [fsq_block([1], bits), fsq_block(values, bits)], 8))
    expected = f"block 1: token {bad[0]} has FSQ index {bad[1]}, outside the codebook of {codebook} entries"
    with TokenFile(path) as f:
        assert f.read_block(0).tolist() == [1]
        with pytest.raises(TokenFileError, match=expected):
            f.read_block(1)
    assert expected in _refusal(path)
    with pytest.raises(TokenFileError, match=expected):
        read_tokens(path)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_vae_latents_are_refused(tmp_path, value):
    latents = np.zeros((3, 4), dtype="<f2")
    latents[2, 1] = value
    path = _write(tmp_path, build(vae_header(), [(3, 1, latents.tobytes())], 4))
    assert "block 0: VAE latents are NaN or infinite" in _refusal(path)


# Headers -----------------------------------------------------------------------------------------------
HOSTILE_HEADERS = {
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
    "a NaN setting": (b'{"settings":{"threshold":NaN}}', "not valid UTF-8 JSON"),
    "a 5000-digit integer": (b'{"codebook_size":1' + b"0" * 5000 + b"}", "not valid UTF-8 JSON"),
    "a codebook past 32 bits": (fsq_header(codebook_size=2**40, bits_per_index=40), "codebook_size must be in"),
    "a float bits_per_index": (fsq_header(bits_per_index=16.0), "bits_per_index 16.0 does not fit"),
    "a foreign value_dtype": (fsq_header(value_dtype="float32"), "value_dtype must be 'packed-uint'"),
    "a text fps": (fsq_header(fps="fast"), "fps must be null or a positive number"),
    "a negative fps": (fsq_header(fps=-24), "fps must be null or a positive number"),
    "2**40 token slots": (fsq_header(tokens_per_block=2**40), "must be in [1, 2**32)"),
    "more slots than pixels": (fsq_header(tokens_per_block=4097), "exceeds the pixels of a block"),
    "a bool frame size": (fsq_header(frame_size=[True, 32]), "frame_size must be [height, width]"),
    "a bad context window": (fsq_header(settings={"context_blocks": 0}), "context window of 0"),
    "a long kind": (fsq_header(kind="x" * 10_000), "kind must be one of"),
}


@pytest.mark.parametrize("name", HOSTILE_HEADERS)
def test_hostile_headers_are_refused_on_open(tmp_path, name):
    header, expected = HOSTILE_HEADERS[name]
    message = _refusal(_write(tmp_path, build(header, GOOD_BLOCKS, 6)))
    assert expected in message and len(message) < 300


def test_blocks_larger_than_the_file_are_refused_without_overflow(tmp_path):
    # 2**31 latents of width 2**31: 2**63 payload bytes, which int64 arithmetic would wrap to a negative size.
    header = vae_header(latent_dim=2**31, tokens_per_block=2**31, frames_per_block=1, frame_size=[2**16, 2**16])
    path = _write(tmp_path, build(header, [(2**31, 0, b"")], 1))
    assert "index: block 0 is larger than the file" in _refusal(path)


def test_padded_tokens_that_do_not_fit_in_memory_are_refused(tmp_path, monkeypatch):
    # 2**31 slots of one block are 16 GiB as int64; the block itself holds one token.
    header = fsq_header(tokens_per_block=2**31, frames_per_block=1, frame_size=[2**16, 2**16])
    path = _write(tmp_path, build(header, [fsq_block([7])], 1))
    monkeypatch.setattr(fmt, "_memory_bytes", lambda: 2**30)
    with TokenFile(path) as f:
        assert f.read_block(0).tolist() == [7] and f.info()["tokens_per_block"] == 2**31
        with pytest.raises(TokenFileError, match=r"16\.0 GiB as padded tokens \(1 blocks of 2147483648 token slots\)"):
            f.to_tokens()

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(fmt, "_memory_bytes", lambda: 2**62)
    monkeypatch.setattr(fmt.torch, "zeros", no_memory)
    with pytest.raises(TokenFileError, match="more than this machine can allocate"):
        read_tokens(path)
