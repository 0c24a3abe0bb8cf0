"""The ``.etok`` token file: one encoded video, written block by block, readable block by block.

The byte layout is specified in ``docs/etok-format.md``; in short::

    preamble (magic, version, header length) | header JSON | header CRC32
    block record 0 | block record 1 | ...           (count, payload size, flags, payload, CRC32)
    index                                           (16 bytes per block: offset, count, flags)
    footer                                          (40 bytes: index offset, blocks, frames, CRC32, magic)

A writer streams records to a hidden temporary file and keeps only the small index in memory; the
file appears at its final path (atomically, by rename) only when the writer closes successfully.
A reader reads the header, footer and index on open and then any block with one seek.

FSQ indices are bit-packed at ``bits_per_index`` bits each; VAE latents are stored as float16, so a
VAE round trip returns the latents rounded to half precision (decoding them is then exact).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from elastictok._version import __version__
from elastictok.model.tokens import Tokens, is_context_window

if TYPE_CHECKING:
    from elastictok.model.autoencoder import ElasticTok

__all__ = [
    "FORMAT_VERSION",
    "TokenFile",
    "TokenFileError",
    "TokenFileWriter",
    "bits_for_codebook",
    "model_fingerprint",
    "open_token_file",
    "pack_bits",
    "read_tokens",
    "unpack_bits",
    "write_tokens",
]

FORMAT_VERSION = 1
# PNG-style: the high-bit byte catches 7-bit transports, CR LF and ^Z catch text-mode mangling.
MAGIC = b"\x89ETOK\r\n\x1a"
FOOTER_MAGIC = b"ETOK_END"

_PREAMBLE = struct.Struct("<8sII")  # magic, format version, header JSON length
_CRC = struct.Struct("<I")
_RECORD_HEAD = struct.Struct("<IIB3x")  # kept count, payload bytes, flags, 3 reserved bytes
_INDEX_ENTRY = struct.Struct("<QIB3x")  # record offset, kept count, flags, 3 reserved bytes
_FOOTER = struct.Struct("<QQQI4x8s")  # index offset, blocks, frames, index CRC32, reserved, magic
_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("count", "<u4"), ("flags", "u1"), ("reserved", "V3")])
_FLAG_KEYFRAME = 0x01
_RECORD_OVERHEAD = _RECORD_HEAD.size + _CRC.size
_KINDS = ("fsq", "vae")
_VALUE_DTYPES = {"fsq": "packed-uint", "vae": "float16"}
_U32 = 1 << 32  # header integers are bounded like the format's u32 fields (counts, lengths)
_REQUIRED = {
    "model_fingerprint": str,
    "kind": str,
    "codebook_size": int,
    "latent_dim": int,
    "frame_size": list,
    "frames_per_block": int,
    "tokens_per_block": int,
    "settings": dict,
}

assert _INDEX_DTYPE.itemsize == _INDEX_ENTRY.size and _FOOTER.size == 40


class TokenFileError(ValueError):
    """A token file that cannot be read or does not belong to the given model (always one line)."""


# Bit packing -------------------------------------------------------------------------------------
def bits_for_codebook(codebook_size: int) -> int:
    """Bits per index, ceil(log2(codebook_size)) and at least 1: 16 for the 64000-entry FSQ codebook."""
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    return max(1, (codebook_size - 1).bit_length())


def _check_width(width: int) -> None:
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in [1, 32], got {width}")


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers below 2**width, LSB first, into ceil(n * width / 8) bytes.

    Bit j of value i is stream bit i * width + j, and stream bit k is bit k % 8 of byte k // 8; the
    final byte is zero-padded. For widths 8, 16 and 32 this equals little-endian unsigned integers.
    """
    _check_width(width)
    values = np.asarray(values).reshape(-1)
    if values.size and (int(values.min()) < 0 or int(values.max()) >= 1 << width):
        raise ValueError(f"values must be in [0, 2**{width}), got [{int(values.min())}, {int(values.max())}]")
    as_u32 = values.astype("<u4")
    if width in (8, 16, 32):
        return as_u32.astype(f"<u{width // 8}").tobytes()
    bits = np.unpackbits(as_u32.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")  # (n, 32)
    return np.packbits(bits[:, :width].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` int64 values from the packed bytes."""
    _check_width(width)
    need = -(-count * width // 8)
    if len(data) < need:
        raise ValueError(f"{count} values of {width} bits need {need} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if width in (8, 16, 32):
        return raw.view(f"<u{width // 8}").astype(np.int64)
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    padded = np.zeros((count, 32), dtype=np.uint8)
    padded[:, :width] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").reshape(count).astype(np.int64)


# Model fingerprint -------------------------------------------------------------------------------
def model_fingerprint(model: ElasticTok) -> str:
    """sha256 hex of the config JSON and every state_dict tensor (name, shape, dtype, raw bytes).

    Tensors are hashed in sorted-name order, each introduced by a JSON line carrying its byte count so
    that no two different models can share a byte stream. Computed afresh on every call.
    """
    h = hashlib.sha256()
    h.update(b"elastictok-fingerprint-v1\n")
    # The declared quality target is advice on how to code, not part of what decodes the tokens.
    config = {k: v for k, v in model.config.to_dict().items() if k != "default_target"}
    h.update(json.dumps(config, indent=2, sort_keys=True).encode("utf-8"))
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        raw = tensor.view(torch.uint8).numpy()  # any dtype (bf16 included) as its native bytes
        h.update(("\n" + json.dumps([name, list(state[name].shape), str(tensor.dtype), raw.nbytes]) + "\n").encode())
        h.update(raw.data)
    return h.hexdigest()


# Header ------------------------------------------------------------------------------------------
def _payload_nbytes(header: Mapping[str, Any], count: Any) -> Any:
    """Payload size of a block of ``count`` kept tokens (an int, or a numpy array of counts)."""
    if header["kind"] == "fsq":
        return -(-count * header["bits_per_index"] // 8)
    return count * header["latent_dim"] * 2


def _make_header(
    *,
    model_fingerprint: str,
    kind: str,
    codebook_size: int,
    latent_dim: int,
    frame_size: Iterable[int],
    frames_per_block: int,
    tokens_per_block: int,
    fps: float | None,
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if kind == "fsq" and codebook_size < 2:
        raise ValueError(f"an fsq token file needs codebook_size >= 2, got {codebook_size}")
    size = [int(v) for v in frame_size]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"frame_size must be (height, width) of positive ints, got {frame_size}")
    if min(latent_dim, frames_per_block, tokens_per_block) < 1 or tokens_per_block >= 1 << 32:
        raise ValueError(
            f"latent_dim, frames_per_block and tokens_per_block must be positive (tokens_per_block < 2**32); "
            f"got {latent_dim}, {frames_per_block}, {tokens_per_block}"
        )
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number or None (images), got {fps}")
    return {
        "model_fingerprint": str(model_fingerprint),
        "kind": kind,
        "codebook_size": int(codebook_size) if kind == "fsq" else 0,
        "latent_dim": int(latent_dim),
        "bits_per_index": bits_for_codebook(codebook_size) if kind == "fsq" else None,
        "value_dtype": "packed-uint" if kind == "fsq" else "float16",
        "frame_size": size,
        "fps": None if fps is None else float(fps),
        "frames_per_block": int(frames_per_block),
        "tokens_per_block": int(tokens_per_block),
        "settings": dict(settings or {}),
        "writer": f"elastictok {__version__}",
    }


def _encode_header(header: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"token file header (settings included) must be plain JSON: {e}") from None
    return text.encode("utf-8")


# Writer ------------------------------------------------------------------------------------------
class TokenFileWriter:
    """Write an ``.etok`` file block by block; the file appears at ``path`` only on successful close.

    Use as a context manager. Records go straight to a temporary file ``.<name>.<random>.tmp`` in the
    target's directory; only the index (16 bytes per block) stays in memory. Leaving the ``with`` block
    by an exception (KeyboardInterrupt included) deletes the temporary file and leaves any existing
    file at ``path`` untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        model_fingerprint: str,
        kind: str,
        frame_size: Iterable[int],
        frames_per_block: int,
        tokens_per_block: int,
        latent_dim: int,
        codebook_size: int = 0,
        fps: float | None = None,
        settings: Mapping[str, Any] | None = None,
        num_frames: int | None = None,
    ) -> None:
        self.header = _make_header(
            model_fingerprint=model_fingerprint, kind=kind, codebook_size=codebook_size, latent_dim=latent_dim,
            frame_size=frame_size, frames_per_block=frames_per_block, tokens_per_block=tokens_per_block,
            fps=fps, settings=settings,
        )
        header_bytes = _encode_header(self.header)
        self.path = Path(path)
        self._index = bytearray()
        self._keyframe_count = 0
        self._total_tokens = 0
        self._num_frames = num_frames
        self._done = False
        self.tmp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        # "xb" rather than mkstemp: the final file gets the usual umask permissions, not 0600.
        self._file: BinaryIO | None = open(self.tmp_path, "xb")
        try:
            self._file.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)))
            self._file.write(header_bytes)
            self._file.write(_CRC.pack(zlib.crc32(header_bytes)))
        except BaseException:
            self.abort()
            raise

    @classmethod
    def for_model(
        cls,
        path: str | os.PathLike[str],
        model: ElasticTok,
        *,
        frame_size: Iterable[int] | None = None,
        fps: float | None = None,
        settings: Mapping[str, Any] | None = None,
        num_frames: int | None = None,
        fingerprint: str | None = None,
    ) -> TokenFileWriter:
        """A writer whose header describes ``model`` (pass ``fingerprint`` to skip re-hashing it)."""
        c = model.config
        size = tuple(frame_size or c.frame_size)
        return cls(
            path, model_fingerprint=fingerprint or model_fingerprint(model), kind=c.bottleneck,
            codebook_size=c.codebook_size, latent_dim=c.latent_dim, frame_size=size,
            frames_per_block=c.frames_per_block, tokens_per_block=c.tokens_per_block(size),  # type: ignore[arg-type]
            fps=fps, settings=settings, num_frames=num_frames,
        )

    @property
    def num_blocks(self) -> int:
        return len(self._index) // _INDEX_ENTRY.size

    def _payload(self, values: Tensor, count: int) -> bytes:
        h, where = self.header, f"block {self.num_blocks}"
        T = h["tokens_per_block"]
        if not 1 <= count <= T:
            raise ValueError(f"{where}: count must be in [1, {T}], got {count}")
        if not isinstance(values, Tensor) or values.shape[0] not in (count, T):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"{where}: expected {count} kept tokens (or a padded row of {T}), got {got}")
        values = values.detach()[:count].to("cpu")
        if h["kind"] == "fsq":
            return _fsq_payload(values, h, where)
        return _vae_payload(values, h, where)

    def write_block(self, values: Tensor, count: int, keyframe: bool = False) -> None:
        """Append one block: ``values`` are its kept tokens, (count,) long or (count, D) float."""
        if self._file is None:
            raise ValueError(f"{self.path.name}: the writer is closed")
        count = int(count)
        payload = self._payload(values, count)
        flags = _FLAG_KEYFRAME if keyframe else 0
        offset = self._file.tell()
        head = _RECORD_HEAD.pack(count, len(payload), flags)
        self._file.write(head)
        self._file.write(payload)
        self._file.write(_CRC.pack(zlib.crc32(payload, zlib.crc32(head))))
        self._index += _INDEX_ENTRY.pack(offset, count, flags)
        self._total_tokens += count

    def set_num_frames(self, num_frames: int) -> None:
        """The true frame count (the last block may cover padding); defaults to every block full."""
        self._num_frames = int(num_frames)

    def _final_num_frames(self) -> int:
        n, fpb = self.num_blocks, self.header["frames_per_block"]
        if n == 0:
            raise ValueError(f"{self.path.name}: no blocks were written")
        frames = n * fpb if self._num_frames is None else self._num_frames
        if not (n - 1) * fpb < frames <= n * fpb:
            raise ValueError(
                f"{self.path.name}: {n} blocks of {fpb} frames hold {(n - 1) * fpb + 1}..{n * fpb} frames, "
                f"but num_frames is {frames}"
            )
        return frames

    def close(self) -> None:
        """Write the index and footer, flush, fsync and rename onto ``path``. On failure, abort."""
        if self._done:
            return
        if self._file is None:
            raise ValueError(f"{self.path.name}: the writer was aborted")
        try:
            frames = self._final_num_frames()
            index_offset = self._file.tell()
            fields = struct.pack("<QQQ", index_offset, self.num_blocks, frames)
            crc = zlib.crc32(fields, zlib.crc32(self._index))
            self._file.write(self._index)
            self._file.write(_FOOTER.pack(index_offset, self.num_blocks, frames, crc, FOOTER_MAGIC))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discard everything written; the target path is not touched."""
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None
        with suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave its temporary file behind.
        if getattr(self, "_file", None) is not None:
            self.abort()


def _fsq_payload(values: Tensor, header: Mapping[str, Any], where: str) -> bytes:
    if values.ndim != 1 or values.is_floating_point() or values.dtype == torch.bool:
        raise ValueError(f"{where}: fsq values must be (n,) integers, got {values.dtype} {tuple(values.shape)}")
    arr = values.to(torch.int64).numpy()
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= header["codebook_size"]):
        raise ValueError(f"{where}: fsq indices must be in [0, {header['codebook_size']})")
    return pack_bits(arr, header["bits_per_index"])


def _vae_payload(values: Tensor, header: Mapping[str, Any], where: str) -> bytes:
    D = header["latent_dim"]
    if values.ndim != 2 or values.shape[1] != D or not values.is_floating_point():
        raise ValueError(f"{where}: vae values must be (n, {D}) floats, got {values.dtype} {tuple(values.shape)}")
    half = values.to(torch.float16)
    if not bool(torch.isfinite(half).all()):
        raise ValueError(f"{where}: vae latents are not finite in float16 (|x| > 65504 or NaN)")
    return half.numpy().astype("<f2").tobytes()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    with suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Reader ------------------------------------------------------------------------------------------
class TokenFile:
    """A read-only ``.etok`` file. Header, footer and index are read and checked on open; blocks on demand.

    Keeps the file open; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO | None = open(self.path, "rb")
        except OSError as e:
            raise TokenFileError(f"{self.path}: cannot open token file: {e.strerror or e}") from None
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._data_start = self._read_header()
            self._read_index()
        except BaseException:
            self.close()
            raise

    # Opening -------------------------------------------------------------------------------------
    def _fail(self, what: str) -> TokenFileError:
        return TokenFileError(f"{self.path.name}: {what}")

    def _read_at(self, offset: int, size: int, what: str) -> bytes:
        assert self._file is not None
        if offset + size > self._size:  # checked first: a hostile size must not become a huge read buffer
            raise self._fail(f"{what} is truncated (file ends at byte {self._size})")
        self._file.seek(offset)
        data = self._file.read(size)
        if len(data) != size:
            raise self._fail(f"{what} is truncated (file ends at byte {self._size})")
        return data

    def _read_header(self) -> int:
        head = self._read_at(0, min(self._size, _PREAMBLE.size), "preamble")
        if not MAGIC.startswith(head[: len(MAGIC)]) or not head:
            raise self._fail(f"not an .etok token file (expected magic {MAGIC!r}, found {head[:len(MAGIC)]!r})")
        if len(head) < _PREAMBLE.size:
            raise self._fail(f"preamble is truncated (file is only {self._size} bytes)")
        _, version, length = _PREAMBLE.unpack(head)
        if version > FORMAT_VERSION:
            raise self._fail(
                f"format version {version} is newer than this reader supports "
                f"(version {FORMAT_VERSION}); upgrade elastictok"
            )
        if version != FORMAT_VERSION:
            raise self._fail(f"unsupported format version {version} (expected {FORMAT_VERSION})")
        if _PREAMBLE.size + length + _CRC.size > self._size:
            raise self._fail(f"header is truncated (declares {length} bytes, file is {self._size} bytes)")
        raw = self._read_at(_PREAMBLE.size, length + _CRC.size, "header")
        body, (crc,) = raw[:length], _CRC.unpack(raw[length:])
        if zlib.crc32(body) != crc:
            raise self._fail("header checksum mismatch (corrupted header)")
        try:
            header = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, NaN, a huge integer literal, deep nesting
            raise self._fail(f"header is not valid UTF-8 JSON ({e.__class__.__name__})") from None
        self._header = self._check_header(header)
        return _PREAMBLE.size + length + _CRC.size

    def _check_header(self, header: Any) -> dict[str, Any]:
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        for key, kind in _REQUIRED.items():
            if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
                article = "an" if kind.__name__[0] in "aeiou" else "a"
                raise self._fail(f"header field {key!r} is missing or not {article} {kind.__name__}")
        if header["kind"] not in _KINDS:
            raise self._fail(f"header kind must be one of {_KINDS}, got {_short(header['kind'])}")
        if header.get("value_dtype") != _VALUE_DTYPES[header["kind"]]:
            raise self._fail(
                f"header value_dtype must be {_VALUE_DTYPES[header['kind']]!r} for {header['kind']} tokens, "
                f"got {_short(header.get('value_dtype'))}"
            )
        size = header["frame_size"]
        if len(size) != 2 or not all(_is_int(v) and 0 < v < _U32 for v in size):
            raise self._fail(f"header frame_size must be [height, width], got {_short(size)}")
        dims = {k: header[k] for k in ("latent_dim", "frames_per_block", "tokens_per_block")}
        if not all(0 < v < _U32 for v in dims.values()):
            raise self._fail(
                f"header latent_dim, frames_per_block and tokens_per_block must be in [1, 2**32): {_short(dims)}"
            )
        if dims["tokens_per_block"] > dims["frames_per_block"] * size[0] * size[1]:
            raise self._fail(  # a token covers at least one pixel of one frame
                f"header tokens_per_block {dims['tokens_per_block']} exceeds the pixels of a block "
                f"({dims['frames_per_block']} frames of {size[0]}x{size[1]})"
            )
        fps = header.get("fps")
        if fps is not None and not (isinstance(fps, (int, float)) and not isinstance(fps, bool)
                                    and math.isfinite(fps) and fps > 0):
            raise self._fail(f"header fps must be null or a positive number, got {_short(fps)}")
        if header["kind"] == "fsq":
            bits, codebook = header.get("bits_per_index"), header["codebook_size"]
            if not 2 <= codebook <= _U32:
                raise self._fail(f"header codebook_size must be in [2, 2**32], got {_short(codebook)}")
            if not _is_int(bits) or bits != bits_for_codebook(codebook):
                raise self._fail(f"header bits_per_index {_short(bits)} does not fit codebook_size {codebook}")
        window = header["settings"].get("context_blocks")
        if not is_context_window(window):
            raise self._fail(f"records a context window of {_short(window)}; expected null or an int >= 1")
        return header

    def _read_index(self) -> None:
        if self._size < self._data_start + _FOOTER.size:
            raise self._fail("file is truncated: no footer (was the writer interrupted?)")
        footer = self._read_at(self._size - _FOOTER.size, _FOOTER.size, "footer")
        index_offset, n, frames, crc, magic = _FOOTER.unpack(footer)
        fits = index_offset >= self._data_start and index_offset + n * _INDEX_ENTRY.size + _FOOTER.size == self._size
        if magic != FOOTER_MAGIC or not fits:
            end = self._earlier_end()
            if end is not None:
                raise self._fail(
                    f"{self._size - end} extra bytes after the end of the token file (its footer ends at byte {end} "
                    f"of {self._size}; was something appended to it?)"
                )
            if magic != FOOTER_MAGIC and fits:
                raise self._fail("footer magic is damaged (corrupted footer)")
            if magic != FOOTER_MAGIC:
                raise self._fail("file is truncated or incomplete: footer magic missing (was the writer interrupted?)")
            raise self._fail(f"footer is inconsistent with the file size ({n} blocks, index at byte {index_offset})")
        raw = self._read_at(index_offset, n * _INDEX_ENTRY.size, "index")
        if zlib.crc32(footer[:24], zlib.crc32(raw)) != crc:
            raise self._fail("index checksum mismatch (corrupted index or footer)")
        index = np.frombuffer(raw, dtype=_INDEX_DTYPE)
        self._offsets = index["offset"].astype(np.int64)
        self._counts = index["count"].astype(np.int64)
        self._flags = index["flags"].astype(np.int64)
        self._num_frames = int(frames)
        self._check_index(index_offset)

    def _earlier_end(self) -> int | None:
        """The end of a complete token file that extra bytes follow: the last footer before the end of the
        file whose magic, position and index checksum agree. None when there is none (a truncated file).

        Only called on a file that is already refused, to name what is wrong; it may scan the whole file."""
        assert self._file is not None
        m = len(FOOTER_MAGIC)
        lowest = self._data_start + _FOOTER.size - m  # the first byte a footer magic can start at
        high = self._size - m - 1  # the last one, short of the very end (already found wanting)
        while high >= lowest:
            low = max(lowest, high - (1 << 20))
            self._file.seek(low)
            chunk = self._file.read(high - low + m)  # every magic starting in [low, high]
            at = chunk.rfind(FOOTER_MAGIC)
            while at >= 0:
                if self._complete_at(low + at + m):
                    return low + at + m
                at = chunk.rfind(FOOTER_MAGIC, 0, at + m - 1)
            high = low - 1
        return None

    def _complete_at(self, end: int) -> bool:
        """Whether a footer ending at byte ``end`` (< file size) describes an index that ends there."""
        if end < self._data_start + _FOOTER.size or end >= self._size:
            return False
        assert self._file is not None
        self._file.seek(end - _FOOTER.size)
        footer = self._file.read(_FOOTER.size)
        index_offset, n, _, crc, _ = _FOOTER.unpack(footer)
        if index_offset < self._data_start or index_offset + n * _INDEX_ENTRY.size + _FOOTER.size != end:
            return False
        self._file.seek(index_offset)
        return zlib.crc32(footer[:24], zlib.crc32(self._file.read(n * _INDEX_ENTRY.size))) == crc

    def _check_index(self, index_offset: int) -> None:
        h, n = self._header, len(self._counts)
        if n == 0:
            raise self._fail("file holds no blocks")
        bad = np.flatnonzero((self._counts < 1) | (self._counts > h["tokens_per_block"]))
        if bad.size:
            i = int(bad[0])
            raise self._fail(f"index: block {i} has count {int(self._counts[i])}, outside [1, {h['tokens_per_block']}]")
        if _payload_nbytes(h, int(self._counts.max())) > self._size:  # also keeps the sums below from overflowing
            raise self._fail(f"index: block {int(self._counts.argmax())} is larger than the file")
        sizes = _RECORD_OVERHEAD + _payload_nbytes(h, self._counts)
        if float(sizes.sum(dtype=np.float64)) > self._size:
            raise self._fail("index: the blocks it lists are larger than the file")
        expected = self._data_start + np.concatenate(([0], np.cumsum(sizes)))
        bad = np.flatnonzero(self._offsets != expected[:-1])
        if bad.size or expected[-1] != index_offset:
            where = f"block {int(bad[0])}" if bad.size else "the last block"
            raise self._fail(f"index: record offsets are inconsistent at {where}")
        fpb = h["frames_per_block"]
        if not (n - 1) * fpb < self._num_frames <= n * fpb:
            raise self._fail(f"footer: {self._num_frames} frames do not fit {n} blocks of {fpb} frames")

    # Accessors -----------------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        """The stored header JSON, plus ``num_frames`` (which the footer finalises)."""
        return {**self._header, "num_frames": self._num_frames}

    @property
    def num_blocks(self) -> int:
        return len(self._counts)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def counts(self) -> list[int]:
        return self._counts.tolist()

    @property
    def keyframes(self) -> list[int]:
        return np.flatnonzero(self._flags & _FLAG_KEYFRAME).tolist()

    @property
    def total_tokens(self) -> int:
        return int(self._counts.sum())

    def read_block(self, i: int) -> Tensor:
        """The kept tokens of block ``i``: (n,) int64 indices or (n, D) float32 latents."""
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range: {self.path.name} has {self.num_blocks} blocks")
        if self._file is None:
            raise ValueError(f"{self.path.name}: the token file is closed")
        h, count, flags = self._header, int(self._counts[i]), int(self._flags[i])
        size = _payload_nbytes(h, count)
        record = self._read_at(int(self._offsets[i]), _RECORD_OVERHEAD + size, f"block {i}")
        head, payload = record[: _RECORD_HEAD.size], record[_RECORD_HEAD.size : -_CRC.size]
        (crc,) = _CRC.unpack(record[-_CRC.size :])
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            raise self._fail(f"block {i}: checksum mismatch (corrupted data)")
        if _RECORD_HEAD.unpack(head) != (count, size, flags):
            raise self._fail(f"block {i}: record header disagrees with the index")
        if h["kind"] == "fsq":
            indices = unpack_bits(payload, h["bits_per_index"], count)
            # Packed at ceil(log2(codebook_size)) bits, an index can exceed the codebook; decoding would wrap it.
            bad = np.flatnonzero(indices >= h["codebook_size"])
            if bad.size:
                j = int(bad[0])
                raise self._fail(
                    f"block {i}: token {j} has FSQ index {int(indices[j])}, outside the codebook of "
                    f"{h['codebook_size']} entries (corrupted data)"
                )
            return torch.from_numpy(indices)
        latents = np.frombuffer(payload, dtype="<f2").reshape(count, h["latent_dim"]).astype(np.float32)
        if not np.isfinite(latents).all():
            raise self._fail(f"block {i}: VAE latents are NaN or infinite (corrupted data)")
        return torch.from_numpy(latents)

    def verify(self) -> None:
        """Read every block, raising :class:`TokenFileError` at the first bad one (checksum, index
        agreement, FSQ index past the codebook, non-finite VAE latent)."""
        for i in range(self.num_blocks):
            self.read_block(i)

    @property
    def context_blocks(self) -> int | None:
        """Earlier blocks each block attended to when encoded (None: all); decoding must repeat it."""
        return self._header["settings"].get("context_blocks")  # checked on open

    def to_tokens(self, start_block: int = 0, end_block: int | None = None) -> Tokens:
        """Blocks ``start_block:end_block`` as a batch-of-one :class:`Tokens`, padded with zeros.

        ``num_frames`` counts the frames those blocks cover (the true count, for the last block).
        ``start_block`` is recorded, so that ``model.decode`` of a range starting at a keyframe gives
        the frames the whole file decodes to there.
        """
        end = self.num_blocks if end_block is None else end_block
        if not 0 <= start_block < end <= self.num_blocks:
            raise IndexError(f"block range [{start_block}, {end}) is empty or outside [0, {self.num_blocks})")
        h, n = self._header, end - start_block
        T, fpb = h["tokens_per_block"], h["frames_per_block"]
        shape = (1, n, T) if h["kind"] == "fsq" else (1, n, T, h["latent_dim"])
        need = math.prod(shape) * (8 if h["kind"] == "fsq" else 4)
        too_big = self._fail(
            f"blocks {start_block}..{end - 1} take {need / 2**30:.1f} GiB as padded tokens ({n} blocks of {T} "
            f"token slots), more than this machine can allocate; read fewer blocks at a time"
        )
        if need > _memory_bytes():
            raise too_big
        try:
            values = torch.zeros(shape, dtype=torch.long if h["kind"] == "fsq" else torch.float32)
        except (RuntimeError, MemoryError):  # an allocation failure (e.g. under a memory limit)
            raise too_big from None
        for j in range(n):
            block = self.read_block(start_block + j)
            values[0, j, : len(block)] = block
        counts = torch.from_numpy(self._counts[start_block:end].copy()).reshape(1, n)
        frames = min(self._num_frames, end * fpb) - start_block * fpb
        size = (h["frame_size"][0], h["frame_size"][1])
        later_keys = [k - start_block for k in self.keyframes if start_block < k < end]
        keys = None
        if later_keys:
            keys = torch.zeros(1, n, dtype=torch.bool)
            keys[0, [0, *later_keys]] = True
        return Tokens(counts, values, h["kind"], frames, size, self.context_blocks, keys, start_block)

    def info(self) -> dict[str, Any]:
        """Header, per-block counts and keyframes, totals; JSON-serialisable.

        Reads and checks every block first (:meth:`verify`), so a file whose block data is damaged
        raises :class:`TokenFileError` here rather than being described as sound."""
        self.verify()
        payload = int(_payload_nbytes(self._header, self._counts).sum())
        return {
            **self.header,
            "format_version": FORMAT_VERSION,
            "num_blocks": self.num_blocks,
            "counts": self.counts,
            "keyframes": self.keyframes,
            "total_tokens": self.total_tokens,
            "payload_bytes": payload,
            "file_bytes": self._size,
        }

    def check_model(self, model: ElasticTok) -> None:
        """Raise :class:`TokenFileError` unless ``model`` is the one that wrote this file."""
        expected, actual = self._header["model_fingerprint"], model_fingerprint(model)
        if expected != actual:
            raise self._fail(
                f"was encoded with model {expected[:12]}, this model is {actual[:12]}; pass the model that encoded it"
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TokenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self._header
        return f"TokenFile({str(self.path)!r}, kind={h['kind']}, blocks={self.num_blocks}, tokens={self.total_tokens})"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; the writer never writes them


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """repr() of a header value, cut short: messages stay one readable line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _memory_bytes() -> int:
    """Physical memory, the most a padded token tensor may take (unknown: no limit)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 1 << 62


def open_token_file(path: str | os.PathLike[str]) -> TokenFile:
    return TokenFile(path)


# Convenience -------------------------------------------------------------------------------------
def write_tokens(
    path: str | os.PathLike[str],
    tokens: Tokens,
    model: ElasticTok,
    fps: float | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write a batch-of-one :class:`Tokens` encoded by ``model`` to ``path`` (atomically).

    The tokens' context window goes into ``settings`` (as ``context_blocks``) and their keyframes into
    the block flags, so the file decodes with the context it was encoded with."""
    if tokens.batch_size != 1:
        raise ValueError(f"a token file holds one video; got a batch of {tokens.batch_size} (use tokens.select(i))")
    if tokens.kind != model.config.bottleneck:
        raise ValueError(f"these are {tokens.kind} tokens but the model has a {model.config.bottleneck} bottleneck")
    if tokens.start_block:
        raise ValueError(
            f"these tokens start at block {tokens.start_block} of a longer video; a token file starts at block 0"
        )
    T = model.config.tokens_per_block(tokens.frame_size)
    if tokens.tokens_per_block != T:
        raise ValueError(
            f"expected {T} token slots per block for frames {tokens.frame_size}, got {tokens.tokens_per_block}"
        )
    keys = set() if tokens.keyframes is None else {int(k) for k in tokens.keyframes[0].nonzero().flatten()} | {0}
    settings = dict(settings or {})
    if tokens.context_blocks is not None:
        if settings.setdefault("context_blocks", tokens.context_blocks) != tokens.context_blocks:
            raise ValueError(
                f"settings say context_blocks={settings['context_blocks']} but the tokens were encoded with "
                f"{tokens.context_blocks}; decoding would not reproduce them"
            )
    counts = tokens.counts.cpu()
    with TokenFileWriter.for_model(
        path, model, frame_size=tokens.frame_size, fps=fps, settings=settings, num_frames=tokens.num_frames
    ) as writer:
        for i in range(tokens.num_blocks):
            writer.write_block(tokens.block(0, i), int(counts[0, i]), keyframe=i in keys)
    return Path(path)


def read_tokens(path: str | os.PathLike[str], model: ElasticTok | None = None) -> Tokens:
    """Read a whole token file; with ``model``, first check that it is the model that wrote it."""
    with TokenFile(path) as f:
        if model is not None:
            f.check_model(model)
        return f.to_tokens()
