"""Fuzzing campaign: the .etok reader and the media loaders against generated and mutated files.

Every case is a file, generated from the campaign seed and its number alone (so any case can be
rebuilt), written to a scratch folder and read by a worker process under a time limit:

* ``etok``: ``TokenFile`` (open, ``info()``, every block, ``to_tokens`` whole and in ranges) on .etok
  files built from docs/etok-format.md with random headers and blocks, then damaged: structure-aware
  changes with the checksums fixed up (hostile header values, counts, offsets, frame counts, FSQ
  indices past the codebook, non-finite latents, ...) and raw byte changes (flips, cuts, appended,
  inserted, deleted and spliced bytes).
* ``png`` / ``jpeg`` / ``mp4``: ``load_image`` (plain, resized, cropped to a multiple) or
  ``video_info`` + ``load_video`` + ``iter_video_frames`` (resampled) on small real-content files
  made with Pillow and PyAV, damaged chunk-, marker- and box-aware (with PNG CRCs fixed up) and
  byte by byte.

Outcomes per case: ``ok`` (read), ``refused`` (the documented error: TokenFileError or MediaError,
one line), ``crash`` (any other exception, a message over one line, or the worker dying), ``hang``
(over ``--timeout``), ``wrong`` (read, but the result breaks a rule: a valid file refused or read
back differently, a file that must be refused accepted, non-finite or out-of-range pixels). The
exit status is 1 when any case crashed, hung or was wrong. Inputs that crashed or hung are saved
(``--save``, else a new temporary folder, named in the output) with a line to reproduce each.
Each worker runs under an address-space limit (``--memory-gb``, default 3 GiB): a small file that
makes a loader allocate gigabytes shows up as a crash (MemoryError) instead of swamping the machine.

Usage::

    python benchmarks/fuzz.py                    # the campaign: 100,000 .etok, 2,000 each PNG/JPEG/mp4
    python benchmarks/fuzz.py --quick            # the short version CI runs (a few hundred cases)
    python benchmarks/fuzz.py --etok 5000 --png 0 --jpeg 0 --mp4 0 --workers 2 --timeout 20 --seed 3
    python benchmarks/fuzz.py --replay mp4:0:1234 [-o case.mp4]   # rebuild one case and run it here
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import random
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import islice
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "elastictok" / "media" / "assets" / "sample.jpg"
TARGETS = ("etok", "png", "jpeg", "mp4")
SUFFIX = {"etok": ".etok", "png": ".png", "jpeg": ".jpg", "mp4": ".mp4"}
FULL = {"etok": 100_000, "png": 2_000, "jpeg": 2_000, "mp4": 2_000}
QUICK = {"etok": 300, "png": 40, "jpeg": 40, "mp4": 30}
OUTCOMES = ("ok", "refused", "crash", "hang", "wrong", "harness")  # harness: a bug of this script

U32 = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 4096, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
       0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
U64 = U32 + [2**32, 2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]


# ---------------------------------------------------------------------------------------------
# Byte-level mutations (every format)


def _interesting(rng: random.Random, original: int, bits: int) -> int:
    pool = U64 if bits == 64 else U32
    value = rng.choice([*pool, original + 1, original - 1, original * 2, original // 2, rng.getrandbits(bits)])
    return value % (1 << bits)


def mutate_bytes(data: bytes, rng: random.Random, other: bytes | None = None, rounds: int | None = None) -> bytes:
    """Havoc-style damage: bit flips, random and interesting values, cuts, inserts, deletes, copies, splices."""
    buf = bytearray(data)
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 2, 3, 4, 8])):
        n = len(buf)
        op = rng.randrange(12)
        if n == 0:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op <= 2:  # flip a few bits
            for _ in range(rng.choice([1, 1, 2, 4])):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 3:  # random bytes
            for _ in range(rng.choice([1, 2, 4, 16])):
                buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 4 and n >= 8:  # an interesting integer, 1, 2, 4 or 8 bytes, either endianness
            width = rng.choice([1, 2, 4, 8])
            at = rng.randrange(n - width + 1)
            order = rng.choice(["little", "big"])
            value = _interesting(rng, int.from_bytes(buf[at : at + width], order), 8 * width)
            buf[at : at + width] = value.to_bytes(width, order)
        elif op == 5:  # cut the end
            del buf[rng.randrange(n) :]
        elif op == 6:  # append junk, or the file again
            buf += bytes(buf) if rng.random() < 0.2 else rng.randbytes(rng.choice([1, 8, 40, 300]))
        elif op == 7:  # insert bytes
            at = rng.randrange(n + 1)
            buf[at:at] = rng.randbytes(rng.choice([1, 2, 4, 16, 100]))
        elif op == 8:  # delete a range
            at = rng.randrange(n)
            del buf[at : at + rng.choice([1, 2, 4, 16, 100, 1000])]
        elif op == 9:  # duplicate a range
            at = rng.randrange(n)
            chunk = buf[at : at + rng.choice([4, 16, 100, 1000])]
            to = rng.randrange(n + 1)
            buf[to:to] = chunk
        elif op == 10 and other:  # splice: our head, another file's tail
            buf = buf[: rng.randrange(n)] + other[rng.randrange(len(other)) :]
        else:  # overwrite a range with a repeated byte
            at = rng.randrange(n)
            size = rng.choice([2, 8, 64, 512])
            buf[at : at + size] = bytes([rng.choice([0, 0xFF, rng.randrange(256)])]) * len(buf[at : at + size])
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# .etok files, built from docs/etok-format.md


@dataclass
class Record:
    count: int
    flags: int
    payload: bytes
    size: int | None = None  # the record's P field; None: the payload's length
    reserved: bytes = b"\0\0\0"
    crc: int | None = None  # None: the right CRC


@dataclass
class Entry:
    offset: int | None  # None: where the record of the same number starts
    count: int
    flags: int
    reserved: bytes = b"\0\0\0"


@dataclass
class Etok:
    header: bytes
    records: list[Record]
    index: list[Entry]
    num_frames: int
    magic: bytes = b"\x89ETOK\r\n\x1a"
    version: int = 1
    header_len: int | None = None
    header_crc: int | None = None
    index_offset: int | None = None
    num_blocks: int | None = None
    index_crc: int | None = None
    footer_reserved: bytes = bytes(4)
    footer_magic: bytes = b"ETOK_END"

    def to_bytes(self) -> bytes:
        m32, m64 = 0xFFFFFFFF, (1 << 64) - 1
        head_len = len(self.header) if self.header_len is None else self.header_len
        out = bytearray(self.magic + struct.pack("<II", self.version & m32, head_len & m32) + self.header)
        out += struct.pack("<I", (zlib.crc32(self.header) if self.header_crc is None else self.header_crc) & m32)
        starts = []
        for r in self.records:
            starts.append(len(out))
            size = len(r.payload) if r.size is None else r.size
            head = struct.pack("<IIB", r.count & m32, size & m32, r.flags & 0xFF) + r.reserved
            crc = zlib.crc32(head + r.payload) if r.crc is None else r.crc
            out += head + r.payload + struct.pack("<I", crc & m32)
        x = len(out)
        index = bytearray()
        for i, e in enumerate(self.index):
            offset = e.offset if e.offset is not None else (starts[i] if i < len(starts) else x)
            index += struct.pack("<QIB", offset & m64, e.count & m32, e.flags & 0xFF) + e.reserved
        n = len(self.index) if self.num_blocks is None else self.num_blocks
        x = x if self.index_offset is None else self.index_offset
        fields = struct.pack("<QQQ", x & m64, n & m64, self.num_frames & m64)
        crc = zlib.crc32(index + fields) if self.index_crc is None else self.index_crc
        return bytes(out + index + fields + struct.pack("<I", crc & m32) + self.footer_reserved + self.footer_magic)


def pack_lsb(values: np.ndarray, width: int) -> bytes:
    """The spec's bit packing, written independently of the library: sum(v[i] << (i * width)), little-endian."""
    if width in (8, 16, 32):
        return values.astype(f"<u{width // 8}").tobytes()
    acc = 0
    for i, v in enumerate(values.tolist()):
        acc |= int(v) << (i * width)
    return acc.to_bytes(-(-len(values) * width // 8), "little")


def dump_header(header: dict, rng: random.Random | None = None) -> bytes:
    if rng is not None and rng.random() < 0.5:  # any JSON layout is valid: key order and spaces vary
        return json.dumps(header, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5).encode()
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


CODEBOOKS = [64000, 2, 3, 4, 5, 255, 256, 257, 1000, 65535, 65536, 65537, 2**20 + 3, 2**31, 2**32 - 1, 2**32]


def etok_spec(rng: random.Random, nrng: np.random.Generator) -> dict[str, Any]:
    """A random valid token file: header, blocks (count, keyframe, values) and frame count."""
    kind = "fsq" if rng.random() < 0.7 else "vae"
    fpb = rng.choice([1, 2, 4, 4, 4, 8])
    h, w = rng.choice([(32, 32), (16, 24), (1, 1), (224, 224), (8, 64), (rng.randint(1, 300), rng.randint(1, 300))])
    most = min(fpb * h * w, 1024 if kind == "fsq" else 128)
    slots = rng.choice([1, min(2, most), most, rng.randint(1, most), rng.randint(1, most)])
    n = rng.choice([1, 1, 2, 3, 5, 8, rng.randint(1, 40)]) if rng.random() > 0.01 else rng.randint(100, 400)
    header: dict[str, Any] = {
        "model_fingerprint": rng.randbytes(32).hex(), "kind": kind, "frame_size": [h, w], "frames_per_block": fpb,
        "tokens_per_block": slots, "writer": rng.choice(["elastictok 0.1.0", "fuzz", "é✓"]),
        "fps": rng.choice([None, 24.0, 30000 / 1001, 0.5, 1e6, 25]),
        "settings": rng.choice([{}, {"metric": "psnr", "threshold": 30.0}, {"context_blocks": rng.randint(1, 9)},
                                {"context_blocks": None, "search": "binary", "ünï": [1, {"a": None}]}]),
    }
    if kind == "fsq":
        codebook = rng.choice([*CODEBOOKS, rng.randint(2, 2**32)])
        bits = max(1, (codebook - 1).bit_length())
        header.update(codebook_size=codebook, bits_per_index=bits, latent_dim=rng.randint(1, 8),
                      value_dtype="packed-uint")
    else:
        header.update(codebook_size=0, bits_per_index=None, latent_dim=rng.randint(1, 16), value_dtype="float16")
    blocks = []
    for i in range(n):
        count = rng.choice([1, slots, rng.randint(1, slots)])
        if kind == "fsq":
            values = nrng.integers(0, header["codebook_size"], count, dtype=np.int64)
            if count > 1:
                values[nrng.integers(0, count)] = header["codebook_size"] - 1  # the largest index
        else:
            values = (nrng.standard_normal((count, header["latent_dim"])) * rng.choice([0.01, 1, 100])).astype("<f2")
            flat = values.reshape(-1)
            for special in (65504.0, -65504.0, 6e-8, -0.0):
                if rng.random() < 0.2:
                    flat[nrng.integers(0, flat.size)] = special
        blocks.append((count, i == 0 or rng.random() < 0.2, values))
    frames = rng.randint((n - 1) * fpb + 1, n * fpb)
    return {"header": header, "blocks": blocks, "num_frames": frames}


def etok_from_spec(spec: dict[str, Any], rng: random.Random | None = None) -> Etok:
    h = spec["header"]
    records, index = [], []
    for count, key, values in spec["blocks"]:
        payload = pack_lsb(values, h["bits_per_index"]) if h["kind"] == "fsq" else values.astype("<f2").tobytes()
        records.append(Record(count, int(key), payload))
        index.append(Entry(None, count, int(key)))
    return Etok(dump_header(h, rng), records, index, spec["num_frames"])


HOSTILE_JSON: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63),
    10**30, 0.5, 1e308, -0.0, 16.0, "", "fsq", "vae", "x" * 1000, "packed-uint", "float16", [], [1], [0, 0], [1, 1],
    [2**31, 2**31], [2**16, 2**16], [-1, 5], [True, 4], [1, 2, 3], {}, {"context_blocks": 0}, {"context_blocks": 2**40},
    {"context_blocks": "all"}, {"context_blocks": True}, [[[]]],
]
HEADER_KEYS = ["model_fingerprint", "kind", "codebook_size", "bits_per_index", "latent_dim", "value_dtype",
               "frame_size", "fps", "frames_per_block", "tokens_per_block", "settings", "writer"]
RAW_HEADERS = [
    b"", b"{", b"[]", b"null", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"{" * 50_000 + b"}" * 50_000, b"[" * 200_000,
    b'{"a":1' + b"0" * 5000 + b"}", b'{"fps":NaN}', b'{"fps":Infinity}', b'{"kind":"fsq","kind":"vae"}',
]


def _header_edit(e: Etok, rng: random.Random, header: dict) -> str:
    """Change the header (its CRC stays right). Returns the effect: 'benign', 'refuse' or 'any'."""
    op = rng.randrange(7)
    if op == 0:  # a new key: readers must ignore it
        header[rng.choice(["x_future", "ü", "settings2"])] = rng.choice(HOSTILE_JSON)
        effect = "benign"
    elif op == 1:
        key = rng.choice(HEADER_KEYS)
        header.pop(key, None)
        effect = "any" if key in ("fps", "writer", "bits_per_index") else "refuse"
    elif op == 2:  # raw bytes that are not a header object
        e.header = rng.choice(RAW_HEADERS) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 200))
        return "refuse"
    elif op == 3:  # the header bytes themselves, damaged
        e.header = mutate_bytes(e.header, rng)
        return "any"
    else:
        header[rng.choice(HEADER_KEYS)] = rng.choice(HOSTILE_JSON)
        effect = "any"
    e.header = json.dumps(header).encode()  # NaN and Infinity allowed here: the reader must refuse them
    return effect


def _payload_edit(e: Etok, rng: random.Random, spec: dict) -> str:
    """Values a writer never writes, with valid CRCs: FSQ indices past the codebook, non-finite latents."""
    h = spec["header"]
    if len(e.records) != len(spec["blocks"]):  # records were dropped or repeated: the spec no longer says what is where
        return "any"
    i = rng.randrange(len(e.records))
    count, _, values = spec["blocks"][i]
    values = values.copy()
    if h["kind"] == "fsq":
        top = (1 << h["bits_per_index"]) - 1
        if top < h["codebook_size"]:  # a power-of-two codebook: every packed value is a valid index
            return "benign"
        values[rng.randrange(count)] = rng.randint(h["codebook_size"], top)
        e.records[i].payload = pack_lsb(values, h["bits_per_index"])
    else:
        values.reshape(-1)[rng.randrange(values.size)] = rng.choice([np.inf, -np.inf, np.nan])
        e.records[i].payload = values.tobytes()
    return "refuse"


def _structure_edit(e: Etok, rng: random.Random, spec: dict) -> str:
    """One structure-aware change, checksums fixed up unless the change is to a checksum."""
    n = len(e.records)
    op = rng.randrange(16) if n and e.index else rng.choice([0, 1, 2, 10, 11, 14, 15])
    if op <= 2:
        try:
            header = json.loads(e.header)
        except (ValueError, RecursionError):
            header = None
        if not isinstance(header, dict):  # an earlier edit broke it: start again from a good one
            _header_edit(e, rng, dict(spec["header"]))
            return "any"
        return _header_edit(e, rng, header)
    if op == 3:
        return _payload_edit(e, rng, spec)
    if op == 4:  # reserved bytes are ignored by readers
        where = rng.randrange(3)
        if where == 0:
            e.records[rng.randrange(n)].reserved = rng.randbytes(3)
        elif where == 1:
            e.index[rng.randrange(len(e.index))].reserved = rng.randbytes(3)
        else:
            e.footer_reserved = rng.randbytes(4)
        return "benign"
    if op == 5:  # a record head that disagrees with the index, or a wrong payload length
        r = e.records[rng.randrange(n)]
        if rng.random() < 0.5:
            r.count = _interesting(rng, r.count, 32)
        else:
            r.size = _interesting(rng, len(r.payload), 32)
        return "any"
    if op == 6:  # flags: record and index agree or not
        i = rng.randrange(min(n, len(e.index)))
        flags = rng.randrange(256)
        e.records[i].flags = flags
        if rng.random() < 0.5:
            e.index[i].flags = flags
        return "any"
    if op == 7:  # index entries: offsets and counts
        entry = e.index[rng.randrange(len(e.index))]
        if rng.random() < 0.5:
            entry.offset = _interesting(rng, entry.offset or 0, 64)
        else:
            entry.count = _interesting(rng, entry.count, 32)
        return "any"
    if op == 8:  # entries dropped, duplicated or swapped
        i, j = rng.randrange(len(e.index)), rng.randrange(len(e.index))
        choice = rng.randrange(3)
        if choice == 0:
            del e.index[i]
        elif choice == 1:
            e.index.insert(i, Entry(e.index[j].offset, e.index[j].count, e.index[j].flags))
        else:
            e.index[i], e.index[j] = e.index[j], e.index[i]
        return "any"
    if op == 9:  # records dropped or duplicated, the index following them
        i = rng.randrange(min(n, len(e.index)))
        if rng.random() < 0.5 and n > 1:
            del e.records[i], e.index[i]
        else:
            e.records.insert(i, replace(e.records[i]))
            e.index.insert(i, Entry(None, e.records[i].count, e.records[i].flags))
        return "any"
    if op == 10:  # the frame count
        fpb, blocks = spec["header"]["frames_per_block"], len(e.index)
        e.num_frames = rng.choice([0, (blocks - 1) * fpb, blocks * fpb + 1, 2**64 - 1, 2**63, rng.getrandbits(64)])
        return "refuse" if e.num_frames <= (blocks - 1) * fpb or e.num_frames > blocks * fpb else "any"
    if op == 11:  # footer fields
        if rng.random() < 0.5:
            e.index_offset = _interesting(rng, 0, 64)
        else:
            e.num_blocks = _interesting(rng, len(e.index), 64)
        return "any"
    if op == 12:  # no blocks at all
        e.records, e.index = [], []
        return "refuse"
    if op == 13:  # a checksum that does not match
        which = rng.randrange(3)
        if which == 0:
            e.header_crc = rng.getrandbits(32)
        elif which == 1:
            e.records[rng.randrange(n)].crc = rng.getrandbits(32)
        else:
            e.index_crc = rng.getrandbits(32)
        return "any"
    if op == 14:  # preamble: version, header length, magic (none of them under a checksum)
        which = rng.randrange(3)
        if which == 0:
            e.version = rng.choice([0, 2, 3, 255, 2**31, 2**32 - 1])
            return "refuse"
        if which == 1:
            e.header_len = _interesting(rng, len(e.header), 32)
            return "any"
        e.magic = mutate_bytes(e.magic, rng, rounds=1)[:8].ljust(8, b"\0")
        return "any"
    e.footer_magic = mutate_bytes(e.footer_magic, rng, rounds=1)[:8].ljust(8, b"\0")
    return "any"


def make_etok(seed: int, index: int) -> tuple[bytes, dict[str, Any]]:
    """Case ``index``: the file and what reading it must give (``expect``: 'exact', 'refuse' or None)."""
    rng = random.Random(f"etok:{seed}:{index}")
    nrng = np.random.default_rng([seed, 0, index])
    spec = etok_spec(rng, nrng)
    e = etok_from_spec(spec, rng)
    mix = rng.random()
    expect: str | None = "exact"
    notes = []
    if 0.1 <= mix < 0.8:  # structure-aware changes
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            effect = _structure_edit(e, rng, spec)
            notes.append(effect)
            if effect == "refuse" and expect in ("exact", "refuse"):
                expect = "refuse"
            elif effect == "any":
                expect = None
    data = e.to_bytes()
    if mix >= 0.55:  # byte damage (on its own, or on top)
        other = etok_from_spec(etok_spec(rng, nrng)).to_bytes() if rng.random() < 0.1 else None
        damaged = mutate_bytes(data, rng, other)
        if damaged != data:
            expect = None
        data = damaged
    return data, {"expect": expect, "spec": spec if expect == "exact" else None, "notes": notes}


# ---------------------------------------------------------------------------------------------
# PNG, JPEG and mp4: seeds with real content, then damage


def _photo(width: int, height: int, shift: int = 0):
    from PIL import Image

    with Image.open(SAMPLE) as im:
        im = im.convert("RGB")
        box = (shift % 64, shift % 48, shift % 64 + im.width // 2, shift % 48 + im.height // 2)
        return im.crop(box).resize((width, height), Image.Resampling.BILINEAR)


def _png(image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def png_seeds() -> list[bytes]:
    from PIL import Image, PngImagePlugin

    seeds = []
    for i, (w, h) in enumerate([(1, 1), (7, 5), (33, 17), (64, 48), (40, 96)]):
        rgb = _photo(w, h, i * 13)
        rgba = rgb.copy()
        rgba.putalpha(rgb.convert("L"))
        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", "fuzz seed")
        text.add_text("Big", "z" * 200, zip=True)
        seeds += [_png(rgb), _png(rgba), _png(rgb.convert("L")), _png(rgba.convert("LA")), _png(rgb.convert("1"))]
        palette = rgb.quantize(16)
        seeds += [_png(palette, transparency=0), _png(rgb, pnginfo=text, compress_level=0)]
        wide = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
        seeds.append(_png(wide))  # 16-bit grey
    frames = [_photo(32, 24, s) for s in (0, 9, 18)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=40)  # an APNG
    seeds.append(buf.getvalue())
    return seeds


def jpeg_seeds() -> list[bytes]:
    from PIL import Image

    seeds = []
    for i, (w, h) in enumerate([(1, 1), (8, 8), (33, 17), (64, 48), (40, 96)]):
        rgb = _photo(w, h, i * 7)
        variants = [
            (rgb, {"quality": 90}), (rgb, {"quality": 15, "subsampling": 2}), (rgb, {"progressive": True}),
            (rgb.convert("L"), {}), (rgb.convert("CMYK"), {}), (rgb, {"optimize": True, "subsampling": 0}),
        ]
        exif = Image.Exif()
        exif[0x0112] = 1 + i % 8  # orientation
        variants.append((rgb, {"exif": exif.tobytes()}))
        for image, kwargs in variants:
            buf = io.BytesIO()
            image.save(buf, "JPEG", **kwargs)
            seeds.append(buf.getvalue())
    return seeds


def _clip(path: Path, *, codec: str, size: tuple[int, int], frames: int, rate, pix_fmt: str = "yuv420p",
          options: dict[str, str] | None = None, container_options: dict[str, str] | None = None,
          gaps: bool = False) -> bytes:
    import av

    w, h = size
    with av.open(str(path), "w", format="mp4", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options={"threads": "1", **(options or {})})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.thread_count = 1
        for k in range(frames):
            frame = av.VideoFrame.from_image(_photo(w, h, 5 * k))
            if gaps:  # variable frame rate: some frames last three times as long
                frame.pts = k + 2 * (k // 3)
                frame.time_base = 1 / Fraction(rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def mp4_seeds(scratch: Path) -> list[bytes]:
    fast = {"movflags": "+faststart"}
    specs = [
        dict(codec="libx264", size=(32, 32), frames=8, rate=24),
        dict(codec="libx264", size=(64, 48), frames=12, rate=Fraction(30000, 1001), container_options=fast),
        dict(codec="libx264", size=(48, 32), frames=1, rate=25),
        dict(codec="libx264", size=(32, 24), frames=10, rate=30, pix_fmt="yuv444p", options={"g": "2"}),
        dict(codec="libx264", size=(32, 32), frames=9, rate=12, gaps=True),
        dict(codec="libx264", size=(32, 32), frames=8, rate=24,
             container_options={"movflags": "frag_keyframe+empty_moov"}),
        dict(codec="mpeg4", size=(48, 32), frames=10, rate=15),
        dict(codec="mpeg4", size=(16, 16), frames=3, rate=1, container_options=fast),
    ]
    seeds = []
    for i, spec in enumerate(specs):
        seeds.append(_clip(scratch / f"seed{i}.mp4", **spec))
        (scratch / f"seed{i}.mp4").unlink()
    return seeds


def _png_chunks(data: bytes) -> list[list[Any]] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    chunks, at = [], 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append([data[at + 4 : at + 8], data[at + 8 : at + 8 + length]])
        at += 12 + length
    return chunks


def _png_join(chunks: list[list[Any]], fix_crc: bool = True) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) if fix_crc else zlib.crc32(kind + body) ^ 1
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    return bytes(out)


def mutate_png(data: bytes, rng: random.Random) -> bytes:
    chunks = _png_chunks(data)
    if not chunks:
        return mutate_bytes(data, rng)
    op = rng.randrange(7)
    if op <= 1:  # IHDR fields (width, height, depth, colour type, compression, filter, interlace)
        ihdr = bytearray(chunks[0][1].ljust(13, b"\0"))
        field_at = rng.choice([0, 4, 8, 9, 10, 11, 12])
        if field_at < 8:
            size = rng.choice([0, 1, 3, 255, 10_000, 30_000, 65_535, 2**31 - 1, 2**31, 2**32 - 1, rng.getrandbits(32)])
            ihdr[field_at : field_at + 4] = struct.pack(">I", size)
        else:
            ihdr[field_at] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 255])
        chunks[0][1] = bytes(ihdr)
    elif op == 2:  # a chunk's data damaged
        c = rng.choice(chunks)
        c[1] = mutate_bytes(c[1], rng)
    elif op == 3:  # chunks dropped, duplicated, swapped
        i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
        r = rng.randrange(3)
        if r == 0:
            del chunks[i]
        elif r == 1:
            chunks.insert(i, list(chunks[j]))
        else:
            chunks[i], chunks[j] = chunks[j], chunks[i]
    elif op == 4:  # new chunks: palettes, transparency, colour profiles, text, EXIF, APNG control
        kind = rng.choice([b"PLTE", b"tRNS", b"iCCP", b"zTXt", b"iTXt", b"eXIf", b"acTL", b"fcTL", b"gAMA", b"sBIT",
                           b"pHYs", b"IDAT", b"IEND"])
        body = rng.choice([rng.randbytes(rng.randint(0, 64)), b"name\0\0" + zlib.compress(rng.randbytes(50)),
                           b"x\0\0" + zlib.compress(bytes(2_000_000)), struct.pack(">II", 2**31, 0)])
        chunks.insert(rng.randrange(1, len(chunks) + 1), [kind, body])
    elif op == 5:  # image data replaced: random, or a large image of zeros that compresses well
        ihdr = bytearray(chunks[0][1].ljust(13, b"\0"))
        if rng.random() < 0.15:
            w, h = rng.choice([(6000, 5000), (12_000, 9_000), (100_000, 10), (1, 2_000_000)])
            ihdr[0:8] = struct.pack(">II", w, h)
            ihdr[8:10] = bytes([8, 2])
            ihdr[12] = 0
            rows = b"".join([b"\0" + bytes(3 * w)] * min(h, 64))
            body = zlib.compress(rows * max(1, h // 64), 9) if h * w <= 2_000_000 else zlib.compress(rows, 9)
        else:
            body = zlib.compress(rng.randbytes(rng.randint(0, 5000)))
        chunks[0][1] = bytes(ihdr)
        chunks = [c for c in chunks if c[0] != b"IDAT"]
        chunks.insert(min(1, len(chunks)), [b"IDAT", body])
    else:
        return mutate_bytes(data, rng)
    out = _png_join(chunks, fix_crc=rng.random() < 0.9)
    return mutate_bytes(out, rng) if rng.random() < 0.2 else out


def _jpeg_segments(data: bytes) -> list[bytes] | None:
    """SOI, each marker segment (SOS with its entropy-coded data), EOI; None when not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    segments, at = [data[:2]], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xD9:
            segments.append(data[at : at + 2])
            at += 2
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        end = at + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not a stuffed byte or a restart
            while end + 1 < len(data) and not (data[end] == 0xFF and data[end + 1] not in (0, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[at:end])
        at = end
    if at < len(data):
        segments.append(data[at:])
    return segments


def mutate_jpeg(data: bytes, rng: random.Random) -> bytes:
    segments = _jpeg_segments(data)
    if not segments or len(segments) < 3:
        return mutate_bytes(data, rng)
    op = rng.randrange(6)
    pick = rng.randrange(1, len(segments))
    seg = bytearray(segments[pick])
    if op <= 1:  # frame header (SOF): precision, height, width, components, sampling, tables
        sof = [i for i, s in enumerate(segments) if len(s) > 9 and s[1] in (0xC0, 0xC1, 0xC2)]
        if sof:
            pick = sof[0]
            seg = bytearray(segments[pick])
            at = rng.choice([4, 5, 7, 9, 10, 11, 12])
            if at in (5, 7):
                seg[at : at + 2] = struct.pack(">H", rng.choice([0, 1, 2, 8, 9, 4096, 30_000, 65_535]))
            elif at < len(seg):
                seg[at] = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 16, 0x11, 0x22, 0x41, 0x44, 0xFF])
    elif op == 2:  # inside any segment (tables, EXIF, scan header, entropy data)
        if len(seg) > 4:
            seg[4:] = mutate_bytes(bytes(seg[4:]), rng)
    elif op == 3:  # the length field
        if len(seg) >= 4:
            seg[2:4] = struct.pack(">H", rng.choice([0, 1, 2, 3, len(seg) - 3, len(seg) + 1, 65_535]))
    elif op == 4:  # segments dropped, duplicated, swapped
        j = rng.randrange(1, len(segments))
        r = rng.randrange(3)
        if r == 0:
            del segments[pick]
            return b"".join(segments)
        if r == 1:
            segments.insert(pick, segments[j])
            return b"".join(segments)
        segments[pick], segments[j] = segments[j], segments[pick]
        return b"".join(segments)
    else:  # an EXIF orientation or IFD out of range
        exif = [i for i, s in enumerate(segments) if s[1:2] == b"\xe1" and b"Exif" in s[:12]]
        if not exif:
            return mutate_bytes(data, rng)
        pick = exif[0]
        seg = bytearray(segments[pick])
        at = rng.randrange(10, len(seg) - 1)
        seg[at : at + 2] = struct.pack("<H", rng.choice([0, 9, 255, 0x0112, 65_535, rng.getrandbits(16)]))
    segments[pick] = bytes(seg)
    out = b"".join(segments)
    return mutate_bytes(out, rng) if rng.random() < 0.2 else out


MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts", b"udta", b"mvex", b"moof", b"traf"}
MP4_TIMING = {b"stts", b"ctts", b"mdhd", b"mvhd", b"elst", b"tkhd", b"tfdt", b"trun", b"stsz", b"stco", b"stsc",
              b"stss", b"avcC", b"stsd", b"tfhd", b"trex", b"sidx"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None, parents: tuple = ()) -> list[tuple]:
    """Every box (offset, size, type, parents) found by walking 32-bit box headers; stops at nonsense."""
    end = len(data) if end is None else end
    found, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size < 8 or at + size > end:
            break
        found.append((at, size, kind, parents))
        if kind in MP4_CONTAINERS:
            found += mp4_boxes(data, at + 8, at + size, (*parents, at))
        elif kind == b"stsd":
            found += mp4_boxes(data, at + 16, at + size, (*parents, at))
        elif kind in (b"avc1", b"mp4v", b"hev1", b"hvc1"):
            found += mp4_boxes(data, at + 8 + 78, at + size, (*parents, at))
        at += size
    return found


def _resize_parents(buf: bytearray, parents: tuple, delta: int) -> None:
    for p in parents:
        (size,) = struct.unpack(">I", buf[p : p + 4])
        buf[p : p + 4] = struct.pack(">I", (size + delta) & 0xFFFFFFFF)


def mutate_mp4(data: bytes, rng: random.Random) -> bytes:
    boxes = mp4_boxes(data)
    if not boxes:
        return mutate_bytes(data, rng)
    buf = bytearray(data)
    timing = [b for b in boxes if b[2] in MP4_TIMING]
    at, size, kind, parents = rng.choice(timing) if timing and rng.random() < 0.7 else rng.choice(boxes)
    op = rng.randrange(8)
    if op <= 2 and size > 12:  # a field: timestamps, durations, time scales, sample sizes, offsets, dimensions
        for _ in range(rng.choice([1, 1, 2, 3])):
            width = rng.choice([4, 4, 2, 1])
            where = at + 8 + rng.randrange(0, max(1, size - 8 - width + 1))
            where -= (where - at) % width
            old = int.from_bytes(buf[where : where + width], "big")
            buf[where : where + width] = _interesting(rng, old, 8 * width).to_bytes(width, "big")
    elif op == 3:  # the size field
        buf[at : at + 4] = struct.pack(">I", rng.choice([0, 1, 7, 8, size - 1, size + 1, len(data), 0xFFFFFFFF]))
    elif op == 4:  # the type
        buf[at + 4 : at + 8] = rng.choice([b"free", b"mdat", b"moov", b"trak", b"uuid", rng.randbytes(4)])
    elif op == 5:  # dropped or duplicated, the parents' sizes kept right
        chunk = bytes(buf[at : at + size])
        if rng.random() < 0.5:
            del buf[at : at + size]
            _resize_parents(buf, parents, -size)
        else:
            buf[at + size : at + size] = chunk
            _resize_parents(buf, parents, size)
    elif op == 6 and kind == b"mdat":  # the coded pictures
        buf[at + 8 : at + size] = mutate_bytes(bytes(buf[at + 8 : at + size]), rng)[: size - 8].ljust(size - 8, b"\0")
    else:
        return mutate_bytes(data, rng)
    out = bytes(buf)
    return mutate_bytes(out, rng) if rng.random() < 0.2 else out


_SEEDS: dict[str, list[bytes]] = {}


def seeds(target: str) -> list[bytes]:
    if target not in _SEEDS:
        if target == "png":
            _SEEDS[target] = png_seeds()
        elif target == "jpeg":
            _SEEDS[target] = jpeg_seeds()
        else:
            with tempfile.TemporaryDirectory(prefix="elastictok-fuzz-seeds-") as scratch:
                _SEEDS[target] = mp4_seeds(Path(scratch))
    return _SEEDS[target]


MUTATORS = {"png": mutate_png, "jpeg": mutate_jpeg, "mp4": mutate_mp4}


def make_media(target: str, seed: int, index: int) -> tuple[bytes, dict[str, Any]]:
    rng = random.Random(f"{target}:{seed}:{index}")
    pool = seeds(target)
    data = pool[rng.randrange(len(pool))]
    if rng.random() < 0.03:
        return data, {"expect": "ok"}  # untouched seeds must read
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = MUTATORS[target](data, rng) if rng.random() < 0.75 else mutate_bytes(data, rng, rng.choice(pool))
    return data, {"expect": None, "fps": rng.choice([1.0, 7.5, 24.0, 60.0])}


def make_case(target: str, seed: int, index: int) -> tuple[bytes, dict[str, Any]]:
    return make_etok(seed, index) if target == "etok" else make_media(target, seed, index)


# ---------------------------------------------------------------------------------------------
# Running one case (in a worker)


class Wrong(Exception):
    """The reader returned, but not what it had to (or refused with a message that is not one line)."""


def _one_line(err: Exception) -> None:
    text = str(err)
    if not text or "\n" in text:
        raise Wrong(f"{type(err).__name__} message is not one line: {text[:200]!r}")


def _tensor_ok(x, what: str, frames: int | None = None, size: tuple[int, int] | None = None) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != 4 or x.shape[0] != 3:
        raise Wrong(f"{what}: expected a float32 (3, T, H, W) tensor, got {getattr(x, 'dtype', type(x))} "
                    f"{tuple(getattr(x, 'shape', ()))}")
    if min(x.shape) < 1 or (frames is not None and x.shape[1] != frames) or (size and tuple(x.shape[2:]) != size):
        raise Wrong(f"{what}: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < -1 or float(x.max()) > 1:
        raise Wrong(f"{what}: pixels outside [-1, 1] or not finite")


def check_etok(path: Path, meta: dict[str, Any]) -> str:
    from elastictok.tokenfile.format import TokenFile, TokenFileError

    expect = meta["expect"]
    try:
        with TokenFile(path) as f:
            info = f.info()
            tokens = f.to_tokens()
            if f.num_blocks > 1:
                f.to_tokens(f.num_blocks - 1)
                f.to_tokens(0, (f.num_blocks + 1) // 2)
            repr(f)
    except TokenFileError as err:
        _one_line(err)
        if expect == "exact":
            raise Wrong(f"a valid file was refused: {err}") from None
        return "refused"
    if expect == "refuse":
        raise Wrong(f"accepted a file that must be refused ({', '.join(meta['notes'])})")
    h = info
    json.dumps(info, allow_nan=False)  # info() must be plain JSON
    if h["kind"] == "fsq":
        tokens.check_values(h["codebook_size"])
    spec = meta.get("spec")
    if expect == "exact" and spec:
        if tokens.counts.tolist() != [[b[0] for b in spec["blocks"]]] or tokens.num_frames != spec["num_frames"]:
            raise Wrong("a valid file read back with other counts or frames")
        for j, (count, key, values) in enumerate(spec["blocks"]):
            got = tokens.values[0, j, :count].numpy()
            want = values if h["kind"] == "fsq" else values.astype(np.float32)
            if not np.array_equal(got, want):
                raise Wrong(f"block {j} of a valid file read back with other values")
            if (j in info["keyframes"]) != bool(key):
                raise Wrong(f"block {j}: keyframe flag lost")
    return "ok"


def check_image(path: Path, meta: dict[str, Any]) -> str:
    from elastictok.media.io import MediaError, load_image

    outcome = "ok"
    for kwargs in ({}, {"size": (24, 40)}, {"multiple": 8}):
        try:
            x = load_image(path, **kwargs)
        except MediaError as err:
            _one_line(err)
            if "smaller than one" not in str(err):  # an image under 8 px refused for "multiple" is right
                outcome = "refused"
            continue
        _tensor_ok(x, f"load_image({kwargs})", 1, kwargs.get("size"))
    if meta["expect"] == "ok" and outcome != "ok":
        raise Wrong("an undamaged seed was refused")
    return outcome


def check_video(path: Path, meta: dict[str, Any]) -> str:
    from elastictok.media.io import MediaError, iter_video_frames, load_video, video_info

    outcome = "ok"
    try:
        info = video_info(path)
        if not (math.isfinite(info.fps) and info.fps > 0) or (info.frames is not None and info.frames < 0):
            raise Wrong(f"video_info: {info}")
    except MediaError as err:
        _one_line(err)
        outcome = "refused"
    try:
        x, fps = load_video(path, max_frames=16)
        _tensor_ok(x, "load_video")
        if not (math.isfinite(fps) and fps > 0):
            raise Wrong(f"load_video: fps {fps}")
    except MediaError as err:
        _one_line(err)
        outcome = "refused"
    try:
        for frame in islice(iter_video_frames(path, size=16, fps=meta.get("fps", 7.5)), 24):
            _tensor_ok(frame.unsqueeze(1), "iter_video_frames", 1, (16, 16))
    except MediaError as err:
        _one_line(err)
        outcome = "refused"
    if meta["expect"] == "ok" and outcome != "ok":
        raise Wrong("an undamaged seed was refused")
    return outcome


CHECKS = {"etok": check_etok, "png": check_image, "jpeg": check_image, "mp4": check_video}


def _where(tb) -> list[str]:
    """The innermost frames of a traceback as 'file:line in function' (short paths), the innermost
    frame of the library among them."""
    lines = []
    for fr in traceback.extract_tb(tb):
        name = fr.filename
        for marker in ("site-packages/", "src/", "benchmarks/"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        lines.append(f"{name}:{fr.lineno} in {fr.name}")
    ours = [i for i, line in enumerate(lines) if line.startswith("elastictok/")]
    keep = sorted({*range(max(0, len(lines) - 4), len(lines)), *ours[-1:]})
    return [lines[i] for i in keep]


def run_case(target: str, seed: int, index: int, scratch: Path) -> dict[str, Any]:
    """Build case ``index``, read it, and say how that went (never raises)."""
    from elastictok.media.io import MediaError
    from elastictok.tokenfile.format import TokenFileError

    start = time.perf_counter()
    try:
        data, meta = make_case(target, seed, index)
    except Exception as err:  # noqa: BLE001 - a bug of this script, not of the library
        return {"index": index, "outcome": "harness", "kind": type(err).__name__, "message": str(err)[:300],
                "where": _where(err.__traceback__), "seconds": 0.0}
    path = scratch / f"case{SUFFIX[target]}"
    path.write_bytes(data)
    result: dict[str, Any] = {"index": index}
    try:
        result["outcome"] = CHECKS[target](path, meta)
    except Wrong as err:
        result.update(outcome="wrong", kind="Wrong", message=str(err)[:300], where=[])
    except (TokenFileError, MediaError) as err:  # a documented error the checks did not expect to escape
        result.update(outcome="crash", kind=type(err).__name__, message=f"escaped: {str(err)[:300]}",
                      where=_where(err.__traceback__))
    except BaseException as err:  # noqa: BLE001 - anything else is what the campaign looks for
        result.update(outcome="crash", kind=type(err).__name__, message=str(err)[:300], where=_where(err.__traceback__))
    result["seconds"] = time.perf_counter() - start
    return result


def worker_main(conn, seed: int, targets: list[str], scratch: str, memory_gb: float) -> None:
    """A worker: imports and makes the media seeds once, then runs the cases it is sent, one at a time."""
    import resource
    import warnings

    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")  # Pillow's decompression-bomb and EXIF warnings, PyAV's deprecations
    import torch

    torch.set_num_threads(1)
    from elastictok.media.io import MediaError  # noqa: F401 - imported before the first case is timed
    from elastictok.tokenfile.format import TokenFileError  # noqa: F401

    folder = Path(scratch)
    folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        if target != "etok":
            seeds(target)
    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            break
        target, index = case
        conn.send(run_case(target, seed, index, folder))


# ---------------------------------------------------------------------------------------------
# The campaign (in the parent): a pool of workers, each case under a time limit


@dataclass
class Worker:
    seed: int
    targets: list[str]
    scratch: Path
    memory_gb: float
    process: Any = None
    conn: Any = None
    case: tuple[str, int] | None = None
    deadline: float = 0.0
    ready: bool = False
    started: float = 0.0

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from the parent's threads
        parent, child = ctx.Pipe()
        args = (child, self.seed, self.targets, str(self.scratch), self.memory_gb)
        self.process = ctx.Process(target=worker_main, args=args, daemon=True)
        self.process.start()
        child.close()
        self.conn, self.case, self.ready, self.started = parent, None, False, time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill or not self.ready:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.process.kill()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process = None


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    problems: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # signature -> first case, count
    slowest: tuple[float, int] = (0.0, -1)
    cases: int = 0
    seconds: float = 0.0  # summed over the cases (worker time, not wall time)

    def add(self, target: str, result: dict[str, Any]) -> None:
        self.cases += 1
        outcome = result["outcome"]
        self.counts[outcome] += 1
        self.seconds += result.get("seconds", 0.0)
        if result.get("seconds", 0) > self.slowest[0]:
            self.slowest = (result["seconds"], result["index"])
        if outcome in ("crash", "hang", "wrong", "harness"):
            where = result.get("where") or [""]
            inner = next((w for w in reversed(where) if "elastictok/" in w), where[-1])
            message = "".join("#" if c.isdigit() else c for c in result.get("message", ""))[:60]
            key = (outcome, result.get("kind", ""), inner, message if outcome != "crash" or not inner else "")
            entry = self.problems.setdefault(key, {"count": 0, "first": result, "target": target})
            entry["count"] += 1


def run_campaign(plan: dict[str, int], seed: int, workers: int, timeout: float, scratch: Path, memory_gb: float,
                 progress: bool) -> dict[str, Tally]:
    """Every case of ``plan`` ({target: cases}), interleaved, on ``workers`` processes."""
    targets = [t for t, n in plan.items() if n]
    tallies = {t: Tally() for t in targets}
    # Interleaved, so that the slower media cases share the workers with the .etok ones from the start.
    todo = deque(sorted(((t, i) for t in targets for i in range(plan[t])), key=lambda c: (c[1] / plan[c[0]], c[0])))
    total = len(todo)
    pool = [Worker(seed, targets, scratch / f"w{i}", memory_gb) for i in range(max(1, min(workers, total)))]
    for w in pool:
        w.start()
    start = last = time.monotonic()
    try:
        while todo or any(w.case is not None for w in pool):
            for w in pool:
                if w.ready and w.case is None and todo:
                    w.case = todo.popleft()
                    w.deadline = time.monotonic() + timeout
                    w.conn.send(w.case)
            waits = [w.deadline for w in pool if w.case is not None]
            wait_any([w.conn for w in pool] + [w.process.sentinel for w in pool],
                     timeout=max(0.0, min(waits) - time.monotonic()) if waits else 5.0)
            for w in pool:
                _service(w, tallies, timeout)
            if progress and time.monotonic() - last > 60:
                last = time.monotonic()
                done = sum(t.cases for t in tallies.values())
                summary = ", ".join(f"{t} {dict(v.counts)}" for t, v in tallies.items())
                print(f"  {done:,}/{total:,} cases in {last - start:.0f} s: {summary}", file=sys.stderr, flush=True)
    finally:
        for w in pool:
            w.stop()
    return tallies


def _service(w: Worker, tallies: dict[str, Tally], timeout: float) -> None:
    """Take a worker's answer, or notice that it died or ran out of time (then start a fresh one)."""
    now = time.monotonic()
    try:
        if w.conn.poll():
            message = w.conn.recv()
            if message == "ready":
                w.ready = True
            else:
                tallies[w.case[0]].add(w.case[0], message)
                w.case = None
            return
    except (EOFError, OSError):
        pass
    if not w.process.is_alive():
        code = w.process.exitcode
        if w.case is None and not w.ready:
            raise RuntimeError(f"a worker failed to start (exit code {code})")
        if w.case is not None:
            reason = f"signal {-code}" if code and code < 0 else f"exit code {code}"
            tallies[w.case[0]].add(w.case[0], {"index": w.case[1], "outcome": "crash", "kind": "WorkerDied",
                                               "message": f"the worker process died ({reason})", "where": []})
        w.stop(kill=True)
        w.start()
    elif w.case is not None and now > w.deadline:
        tallies[w.case[0]].add(w.case[0], {"index": w.case[1], "outcome": "hang", "kind": "Timeout",
                                           "message": f"no answer within {timeout:g} s", "where": [],
                                           "seconds": timeout})
        w.stop(kill=True)
        w.start()
    elif not w.ready and now - w.started > 300:
        raise RuntimeError("a worker did not start within 300 s")


def save_case(target: str, seed: int, index: int, folder: Path) -> Path:
    data, _ = make_case(target, seed, index)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target}-{seed}-{index}{SUFFIX[target]}"
    path.write_bytes(data)
    return path


def replay(spec: str, output: str | None) -> int:
    target, seed, index = spec.split(":")
    seed_i, index_i = int(seed), int(index)
    data, meta = make_case(target, seed_i, index_i)
    path = Path(output or f"fuzz-{target}-{seed}-{index}{SUFFIX[target]}")
    path.write_bytes(data)
    print(f"wrote {path} ({len(data)} bytes); expectation: {meta.get('expect')}")
    try:
        print("outcome:", CHECKS[target](path, meta))
    except Wrong as err:
        print("wrong:", err)
        return 1
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for target in TARGETS:
        p.add_argument(f"--{target}", type=int, help=f"{target} cases ({FULL[target]:,}; --quick: {QUICK[target]})")
    p.add_argument("--quick", action="store_true", help="the short version (CI)")
    p.add_argument("--only", choices=TARGETS, nargs="+", help="run these targets only")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take before it counts as a hang")
    p.add_argument("--memory-gb", type=float, default=3.0, help="address-space limit of each worker, GiB (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="folder for inputs that crashed or hung (default: a new temporary folder)")
    p.add_argument("--json", help="also write the counts here as JSON")
    p.add_argument("--replay", metavar="TARGET:SEED:INDEX", help="rebuild one case, write it (-o) and run it here")
    p.add_argument("-o", "--output", help="where --replay writes the case")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.output)
    default = QUICK if args.quick else FULL
    plan = {t: default[t] if getattr(args, t) is None else getattr(args, t) for t in TARGETS}
    if args.only:
        plan = {t: (n if t in args.only else 0) for t, n in plan.items()}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="elastictok-fuzz-") as scratch:
        results = run_campaign(plan, args.seed, args.workers, args.timeout, Path(scratch), args.memory_gb,
                               not args.quiet)
    wall = time.monotonic() - started
    return report(results, args, wall)


def report(results: dict[str, Tally], args, wall: float) -> int:
    print(f"fuzz campaign, seed {args.seed}, {args.workers} workers, {args.timeout:g} s per case")
    print(f"{'target':<7}{'cases':>9}{'ok':>9}{'refused':>9}{'crashes':>9}{'hangs':>7}{'wrong':>7}"
          f"{'slowest':>10}{'busy':>9}")
    for target, t in results.items():
        c = t.counts
        print(f"{target:<7}{t.cases:>9,}{c['ok']:>9,}{c['refused']:>9,}{c['crash']:>9,}{c['hang']:>7,}"
              f"{c['wrong']:>7,}{t.slowest[0]:>9.2f}s{t.seconds:>8.0f}s")
    harness = sum(t.counts["harness"] for t in results.values())
    if harness:
        print(f"{harness} cases could not be built (a bug of this script; listed below)")
    bad = sum(t.counts[k] for t in results.values() for k in ("crash", "hang", "wrong", "harness"))
    save = None
    if bad:
        save = Path(args.save) if args.save else Path(tempfile.mkdtemp(prefix="elastictok-fuzz-found-"))
        print(f"\n{bad} problem cases; distinct problems (the first case of each is saved in {save}):")
        for (outcome, kind, inner, _), entry in sorted(results_problems(results), key=lambda kv: -kv[1]["count"]):
            first, target = entry["first"], entry["target"]
            path = save_case(target, args.seed, first["index"], save)
            print(f"- {entry['count']} x {outcome} {kind}: {first.get('message', '')[:200]}")
            for line in first.get("where", []):
                print(f"      at {line}")
            print(f"      first: {path}  (python benchmarks/fuzz.py --replay {target}:{args.seed}:{first['index']})")
    print(f"wall time {wall:.0f} s; {'no crashes, hangs or wrong results' if not bad else f'{bad} problem cases'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed": args.seed, "wall_seconds": round(wall, 1), "saved": str(save) if save else None,
            "targets": {t: {"cases": r.cases, **{k: r.counts[k] for k in OUTCOMES}, "seconds": round(r.seconds, 1),
                            "slowest": round(r.slowest[0], 2), "problems": [
                                {"outcome": k[0], "kind": k[1], "where": k[2], "count": v["count"],
                                 "first": v["first"]["index"], "message": v["first"].get("message", "")}
                                for k, v in r.problems.items()]}
                        for t, r in results.items()},
        }, indent=2))
    return 1 if bad else 0


def results_problems(results: dict[str, Tally]):
    for t in results.values():
        yield from t.problems.items()


if __name__ == "__main__":
    sys.exit(main())
