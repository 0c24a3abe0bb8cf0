"""Read the official (JAX/Flax) ElasticTok checkpoints and configs, and map them onto our modules.

The official code stores parameters in tux's streaming msgpack format: a bare concatenation of
``[path, payload]`` records, where ``payload`` is the Flax ``to_bytes`` serialisation of one array
(an ExtType(1) wrapping ``[shape, dtype_name, buffer]``). See ``shared/parity/README.md`` §4-§5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import torch

from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import PRESETS, ElasticTokConfig

__all__ = [
    "OfficialCheckpointError",
    "read_official_params",
    "config_from_official",
    "load_official_config",
    "expected_official_shapes",
    "expected_state_dict_shapes",
    "official_to_state_dict",
    "convert_official_checkpoint",
]


class OfficialCheckpointError(ValueError):
    """An official checkpoint or config could not be read or does not fit the requested model."""


# --------------------------------------------------------------------------------------------
# Streaming msgpack reader
# --------------------------------------------------------------------------------------------

# Flax splits arrays over 1 GiB into chunks, so no single record is larger than this; the cap
# keeps a corrupt length field from making the unpacker wait for gigabytes.
_MAX_RECORD_BYTES = (1 << 30) + (1 << 24)
_READ_SIZE = 1 << 22
_EXT_NDARRAY = 1
_EXT_NPSCALAR = 3  # Flax packs NumPy scalars with the same [shape, dtype, buffer] layout.
_TRAINSTATE_PREFIX = ("params", "params")
_FORMAT_HINT = "expected a msgpack stream of [path, array] records"


def _one_line(text: object) -> str:
    line = re.sub(r"\s+", " ", str(text)).strip()
    # Some msgpack errors carry no text; their class name is still a reason.
    return line or type(text).__name__


def _kind(value: object) -> str:
    """'a dict', 'an int', ... for messages about what arrived."""
    name = {type(None): "nil", bytes: "bin", msgpack.ExtType: "msgpack extension"}.get(type(value))
    name = name or type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _unpacker(f: BinaryIO) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        f,
        raw=False,
        read_size=_READ_SIZE,
        max_buffer_size=_MAX_RECORD_BYTES,
        max_bin_len=_MAX_RECORD_BYTES,
        max_ext_len=_MAX_RECORD_BYTES,
        max_str_len=1 << 20,
        max_array_len=1 << 16,
        max_map_len=1 << 16,
    )


def _iter_records(path: Path) -> Iterator[tuple[int, object]]:
    """Yield (index, top-level msgpack value) until a clean end of file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise OfficialCheckpointError(
            f"{path}: no such file (expected an official ElasticTok params .msgpack file)"
        ) from None
    except OSError as e:
        raise OfficialCheckpointError(
            f"{path}: cannot be opened ({_one_line(e.strerror or e)}; expected a readable params file)"
        ) from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise OfficialCheckpointError(f"{path}: file is empty ({_FORMAT_HINT})")
        unpacker = _unpacker(f)
        index = 0
        # tell() counts consumed bytes, so "consumed everything" separates a clean end from a
        # record cut short; iterating the unpacker alone would hide truncation.
        while unpacker.tell() < size:
            try:
                value = unpacker.unpack()
            except msgpack.OutOfData:
                if index == 0:
                    raise OfficialCheckpointError(
                        f"{path}: file ends inside record 0 (expected a complete msgpack record); "
                        "it is truncated or not an official ElasticTok params file"
                    ) from None
                records = "record" if index == 1 else "records"
                raise OfficialCheckpointError(
                    f"{path}: file is truncated after {index} {records} (expected a complete msgpack record)"
                ) from None
            except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as e:
                raise OfficialCheckpointError(
                    f"{path}: not an official ElasticTok params file ({_FORMAT_HINT}; "
                    f"record {index} is not valid msgpack: {_one_line(e)})"
                ) from e
            yield index, value
            index += 1


def _split_record(path: Path, index: int, value: object) -> tuple[tuple[str, ...], bytes]:
    if not (isinstance(value, list) and len(value) == 2):
        what = f"a {len(value)}-element array" if isinstance(value, list) else _kind(value)
        raise OfficialCheckpointError(
            f"{path}: not an official ElasticTok params file ({_FORMAT_HINT}; record {index} is {what})"
        )
    keys, payload = value
    if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        raise OfficialCheckpointError(
            f"{path}: not an official ElasticTok params file ({_FORMAT_HINT}; "
            f"record {index} has a path that is {_kind(keys)}, not a list of strings)"
        )
    if not isinstance(payload, bytes):
        raise OfficialCheckpointError(
            f"{path}: record {index} ({'/'.join(keys)}) holds {_kind(payload)}; "
            "expected a msgpack bin with a Flax-serialised array"
        )
    return tuple(keys), payload


def _decode_array(payload: bytes) -> np.ndarray:
    """Flax ``from_bytes`` for one array, upcast to float32. Raises ValueError with a short reason."""
    try:
        ext = msgpack.unpackb(payload, raw=False)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"payload is not valid msgpack ({_one_line(e)}; expected a Flax-serialised array)") from e
    if isinstance(ext, dict) and "__msgpack_chunked_array__" in ext:
        raise ValueError("payload is a Flax chunked array (over 1 GiB); expected a single ndarray")
    if not (isinstance(ext, msgpack.ExtType) and ext.code in (_EXT_NDARRAY, _EXT_NPSCALAR)):
        what = f"a msgpack extension of type {ext.code}" if isinstance(ext, msgpack.ExtType) else _kind(ext)
        raise ValueError(f"payload is {what}; expected a Flax ndarray (msgpack extension type 1)")
    try:
        triple = msgpack.unpackb(ext.data, raw=False)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as e:
        reason = _one_line(e)
        raise ValueError(f"ndarray header is not valid msgpack ({reason}; expected [shape, dtype, buffer])") from e
    if not (isinstance(triple, list) and len(triple) == 3):
        raise ValueError(f"ndarray header is {_kind(triple)}; expected [shape, dtype, buffer]")
    shape, dtype, buffer = triple
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ValueError(f"ndarray shape is {shape!r}; expected a list of non-negative ints")
    if not isinstance(buffer, bytes):
        raise ValueError(f"ndarray buffer is {_kind(buffer)}; expected a msgpack bin")
    itemsize = {"float32": 4, "bfloat16": 2}.get(dtype) if isinstance(dtype, str) else None
    if itemsize is None:
        raise ValueError(f"ndarray dtype is {dtype!r}; expected 'float32' or 'bfloat16'")
    count = math.prod(shape)
    if len(buffer) != count * itemsize:
        raise ValueError(
            f"ndarray buffer has {len(buffer)} bytes; expected {count * itemsize} for {dtype} {tuple(shape)}"
        )
    if dtype == "float32":
        # frombuffer on bytes is read-only; callers get arrays they own.
        return np.frombuffer(buffer, dtype="<f4").astype(np.float32).reshape(shape)
    # bfloat16 is the upper half of a float32 bit pattern, so the upcast is exact.
    bits = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(shape)


def read_official_params(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a tux streaming-msgpack params file into ``{"encoder/in_proj/kernel": float32 array}``.

    Accepts the ``params::`` layout and the ``trainstate_params::`` layout (a full train state
    whose parameters live under ``params/params/``; other train-state entries are skipped, as the
    official loader does). A lone leading ``params/`` is stripped as well.
    """
    path = Path(path)
    params: dict[str, np.ndarray] = {}
    # Records outside params/params are only meaningful when the file is not a train state, which
    # is known once a prefixed record shows up; keep them undecoded until then.
    plain: list[tuple[int, tuple[str, ...], bytes]] = []
    is_trainstate = False
    for index, value in _iter_records(path):
        keys, payload = _split_record(path, index, value)
        if keys[:2] == _TRAINSTATE_PREFIX and len(keys) > 2:
            is_trainstate = True
            plain.clear()
            _add_param(path, params, index, keys[2:], payload)
        elif not is_trainstate:
            plain.append((index, keys, payload))
    if not is_trainstate:
        for index, keys, payload in plain:
            _add_param(path, params, index, keys[1:] if keys[0] == "params" and len(keys) > 1 else keys, payload)
    if not params:
        raise OfficialCheckpointError(f"{path}: holds no parameter records ({_FORMAT_HINT})")
    return params


def _add_param(
    path: Path, params: dict[str, np.ndarray], index: int, keys: tuple[str, ...], payload: bytes
) -> None:
    name = "/".join(keys)
    if name in params:
        raise OfficialCheckpointError(f"{path}: record {index} repeats parameter {name} (expected each path once)")
    try:
        params[name] = _decode_array(payload)
    except ValueError as e:
        raise OfficialCheckpointError(f"{path}: record {index} ({name}): {e}") from e


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

# official field -> our field, for the fields that carry over unchanged in meaning
_RENAMED_FIELDS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_encoder_layers": "num_encoder_layers",
    "num_decoder_layers": "num_decoder_layers",
    "num_attention_heads": "num_heads",
    "frames_per_block": "frames_per_block",
    "theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "initializer_range": "initializer_range",
}
_INT_FIELDS = {
    "hidden_size", "intermediate_size", "num_encoder_layers", "num_decoder_layers", "num_heads", "frames_per_block",
}  # fmt: skip
_DEFAULT_FRAME = 256  # the released checkpoints' resolution


def _square(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _official_frame_size(d: Mapping[str, Any], frame_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if frame_size is not None:
        return _square(frame_size)
    derived = d.get("_derived")
    if isinstance(derived, Mapping) and derived.get("resolution") is not None:
        return _square(derived["resolution"])
    return _DEFAULT_FRAME, _DEFAULT_FRAME


def config_from_official(
    d: Mapping[str, Any], frame_size: int | tuple[int, int] | None = None
) -> ElasticTokConfig:
    """Build our config from an official ``ElasticTokConfig`` dict (fields as in ``configs.json``).

    Fields the dict lacks keep our defaults, which are the official 200M values. The frame size is
    not part of the official config, so it comes from ``frame_size``, else ``_derived.resolution``,
    else 256; it is checked against ``max_toks``.
    """
    if not isinstance(d, Mapping):
        raise OfficialCheckpointError(f"official config is {_kind(d)}; expected a dict of ElasticTokConfig fields")
    try:
        config = ElasticTokConfig(**_config_kwargs(d, _official_frame_size(d, frame_size)))
        _check_max_toks(config, d.get("max_toks"))
        if d.get("max_sequence_length") is not None:
            blocks = max(1, int(d["max_sequence_length"]) // max(1, config.tokens_per_block()))
            config = dataclasses.replace(config, max_context_blocks=blocks)
    except OfficialCheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise OfficialCheckpointError(
            f"official config cannot be converted (expected values our ElasticTokConfig accepts): {_one_line(e)}"
        ) from e
    return config


def _check_max_toks(config: ElasticTokConfig, max_toks: Any) -> None:
    tokens = config.tokens_per_block()
    if max_toks is None or int(max_toks) == tokens:
        return
    h, w = config.frame_size
    patch = ",".join(str(p) for p in config.patch_size)
    raise OfficialCheckpointError(
        f"max_toks {max_toks} does not match frame size {h}x{w} with patch ({patch}) and "
        f"{config.frames_per_block} frames per block -> {tokens} tokens per block (expected {max_toks}); "
        "pass the frame size the checkpoint was trained at"
    )


def _config_kwargs(d: Mapping[str, Any], frame_size: tuple[int, int]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"frame_size": frame_size, "rope": "1d", "encoder_conditioning": "mask"}
    for theirs, ours in _RENAMED_FIELDS.items():
        if d.get(theirs) is not None:
            kwargs[ours] = int(d[theirs]) if ours in _INT_FIELDS else float(d[theirs])
    if d.get("patch_size") is not None:
        kwargs["patch_size"] = tuple(int(v) for v in d["patch_size"])
    if d.get("bottleneck_type") is not None:
        kwargs["bottleneck"] = str(d["bottleneck_type"])
    if d.get("fsq_quant_levels") is not None:
        kwargs["fsq_levels"] = tuple(int(v) for v in d["fsq_quant_levels"])
    if kwargs.get("bottleneck") == "vae":
        # The official config never stores vae_bottleneck_dim unless it was passed as an update.
        dim = d.get("vae_bottleneck_dim")
        kwargs["vae_latent_dim"] = int(dim) if dim is not None else 8
    if d.get("min_toks") is not None and d.get("max_toks") is not None:
        kwargs["min_token_fraction"] = int(d["min_toks"]) / int(d["max_toks"])
    return kwargs


def _is_flat_official(d: Mapping[str, Any]) -> bool:
    return "hidden_size" in d or "bottleneck_type" in d


def load_official_config(
    path: str | os.PathLike[str],
    key: str | None = None,
    frame_size: int | tuple[int, int] | None = None,
) -> ElasticTokConfig:
    """Load an official config JSON (flat, or a dict of named configs picked by ``key``).

    ``path`` may also be one of our preset names (``elastictok.config.PRESETS``).
    """
    if isinstance(path, str) and path in PRESETS:
        try:
            overrides = {"frame_size": _square(frame_size)} if frame_size is not None else {}
            return ElasticTokConfig.from_preset(path, **overrides)
        except (ValueError, TypeError) as e:
            raise OfficialCheckpointError(f"preset {path!r}: {_one_line(e)}") from e

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        presets = ", ".join(sorted(PRESETS))
        raise OfficialCheckpointError(
            f"{path}: no such file (expected an official config JSON or a preset name: {presets})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfficialCheckpointError(
            f"{path}: not a JSON file ({_one_line(e)}; expected an official config JSON)"
        ) from e
    if not isinstance(data, dict):
        raise OfficialCheckpointError(
            f"{path}: holds {_kind(data)}; expected a JSON object with ElasticTokConfig fields"
        )
    return config_from_official(_select_config(path, data, key), frame_size)


def _select_config(path: Path, data: dict[str, Any], key: str | None) -> Mapping[str, Any]:
    if _is_flat_official(data):
        if key is not None:
            raise OfficialCheckpointError(
                f"{path}: holds a single config, so key {key!r} cannot select one (expected key=None)"
            )
        return data
    named = {k: v for k, v in data.items() if isinstance(v, dict) and _is_flat_official(v)}
    names = ", ".join(sorted(named))
    if not named:
        raise OfficialCheckpointError(
            f"{path}: no official config found (expected ElasticTokConfig fields such as hidden_size, "
            "or an object of named configs)"
        )
    if key is None:
        if len(named) == 1:
            return next(iter(named.values()))
        raise OfficialCheckpointError(f"{path}: holds several configs (expected key= one of {names})")
    if key not in named:
        raise OfficialCheckpointError(f"{path}: no config named {key!r} (expected one of {names})")
    return named[key]


# --------------------------------------------------------------------------------------------
# Parameter mapping
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One of our tensors and where it comes from in the official tree."""

    ours: str
    theirs: str
    layer: int | None  # index into the scan axis of a stacked official tensor
    transpose: bool  # Flax Dense kernels are (in, out); torch Linear weights are (out, in)
    shape: tuple[int, ...]  # our shape


_BLOCK_LINEARS = (
    ("attn.wq", "attention/wq"),
    ("attn.wk", "attention/wk"),
    ("attn.wv", "attention/wv"),
    ("attn.wo", "attention/wo"),
    ("mlp.w1", "feed_forward/w1"),
    ("mlp.w2", "feed_forward/w2"),
    ("mlp.w3", "feed_forward/w3"),
)


def _block_entries(config: ElasticTokConfig, side: str, num_layers: int) -> Iterator[_Entry]:
    h, i = config.hidden_size, config.intermediate_size
    out_in = {"attn.wq": (h, h), "attn.wk": (h, h), "attn.wv": (h, h), "attn.wo": (h, h),
              "mlp.w1": (i, h), "mlp.w2": (h, i), "mlp.w3": (i, h)}  # fmt: skip
    scan = f"{side}/{side}_blocks/scan_decoder"
    for k in range(num_layers):
        prefix = f"{side}.layers.{k}"
        yield _Entry(f"{prefix}.attn_norm.weight", f"{scan}/attention_norm/kernel", k, False, (h,))
        for ours, theirs in _BLOCK_LINEARS[:4]:
            yield _Entry(f"{prefix}.{ours}.weight", f"{scan}/{theirs}/kernel", k, True, out_in[ours])
        yield _Entry(f"{prefix}.mlp_norm.weight", f"{scan}/ffn_norm/kernel", k, False, (h,))
        for ours, theirs in _BLOCK_LINEARS[4:]:
            yield _Entry(f"{prefix}.{ours}.weight", f"{scan}/{theirs}/kernel", k, True, out_in[ours])


def _pre_quant_width(config: ElasticTokConfig) -> int:
    # The VAE encoder emits mean and log-variance side by side.
    return config.latent_dim if config.bottleneck == "fsq" else 2 * config.vae_latent_dim


def _entries(config: ElasticTokConfig) -> list[_Entry]:
    h, p = config.hidden_size, config.patch_dim
    return [
        _Entry("encoder.in_proj.weight", "encoder/in_proj/kernel", None, True, (h, p)),
        _Entry("encoder.kept_embed", "encoder/is_kept_embed", None, False, (h,)),
        _Entry("encoder.masked_embed", "encoder/is_masked_embed", None, False, (h,)),
        *_block_entries(config, "encoder", config.num_encoder_layers),
        _Entry("encoder.norm.weight", "encoder/ln_f/kernel", None, False, (h,)),
        _Entry("encoder.pre_quant.weight", "encoder/pre_quant/kernel", None, True, (_pre_quant_width(config), h)),
        _Entry("decoder.post_quant.weight", "decoder/post_quant/kernel", None, True, (h, config.latent_dim)),
        *_block_entries(config, "decoder", config.num_decoder_layers),
        _Entry("decoder.norm.weight", "decoder/ln_f/kernel", None, False, (h,)),
        _Entry("decoder.out_proj.weight", "decoder/out_proj/kernel", None, True, (p, h)),
    ]


def expected_state_dict_shapes(config: ElasticTokConfig) -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for ``config``, in module order."""
    return {e.ours: e.shape for e in _entries(config)}


def expected_official_shapes(config: ElasticTokConfig) -> dict[str, tuple[int, ...]]:
    """The official parameter paths and shapes for ``config`` (stacked over layers where scanned)."""
    layers = {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers}
    shapes: dict[str, tuple[int, ...]] = {}
    for e in _entries(config):
        if e.theirs in shapes:
            continue
        shape = e.shape[::-1] if e.transpose else e.shape
        if e.layer is not None:
            shape = (layers[e.theirs.split("/", 1)[0]], *shape)
        elif e.theirs.endswith("_embed"):
            shape = (1, *shape)  # Flax keeps the embeddings as (1, hidden) for broadcasting
        shapes[e.theirs] = shape
    return shapes


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _check_params(
    params: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], config: ElasticTokConfig
) -> None:
    missing = [k for k in expected if k not in params]
    if missing:
        noun = "parameter" if len(missing) == 1 else "parameters"
        raise OfficialCheckpointError(
            f"missing {noun} {_listing(missing)} (expected {len(expected)} official parameters for this config, "
            f"found {len(params)})"
        )
    extra = sorted(k for k in params if k not in expected)
    if extra:
        noun = "parameter" if len(extra) == 1 else "parameters"
        raise OfficialCheckpointError(
            f"unexpected {noun} {_listing(extra)} (expected only the {len(expected)} ElasticTok parameters "
            f"of a {config.bottleneck.upper()} model)"
        )
    wrong = [
        f"{k} has shape {tuple(np.shape(params[k]))}; expected {shape}"
        for k, shape in expected.items()
        if tuple(np.shape(params[k])) != shape
    ]
    if wrong:
        more = f" (and {len(wrong) - 1} more mismatches)" if len(wrong) > 1 else ""
        raise OfficialCheckpointError(f"{wrong[0]} for this config{more}")


def official_to_state_dict(params: Mapping[str, np.ndarray], config: ElasticTokConfig) -> dict[str, torch.Tensor]:
    """Map official parameters (``read_official_params`` output, or the parity npz) to our state dict.

    Every official tensor must be present with the shape ``config`` implies, and nothing else may be.
    """
    _check_params(params, expected_official_shapes(config), config)
    state: dict[str, torch.Tensor] = {}
    for e in _entries(config):
        value = np.asarray(params[e.theirs])
        if e.layer is not None:
            value = value[e.layer]
        if e.transpose:
            value = value.T
        # A copy in C order: independent of the caller's arrays and of read-only msgpack buffers.
        array = np.array(value.reshape(e.shape), dtype=np.float32, order="C", copy=True)
        state[e.ours] = torch.from_numpy(array)
    return state


def convert_official_checkpoint(
    params_path: str | os.PathLike[str], config: ElasticTokConfig, out_dir: str | os.PathLike[str]
) -> Path:
    """Read an official params file, load it strictly into ``ElasticTok(config)`` and save it to ``out_dir``."""
    state = official_to_state_dict(read_official_params(params_path), config)
    model = ElasticTok(config)
    ours = set(model.state_dict())
    missing, extra = sorted(ours - set(state)), sorted(set(state) - ours)
    if missing or extra:
        # Our mapping and our module disagree: a bug here, not a problem with the file.
        raise OfficialCheckpointError(
            f"ElasticTok({config.bottleneck}) has tensors {_listing(missing) or 'none'} that the official mapping "
            f"does not fill and lacks {_listing(extra) or 'none'} that it fills (expected identical key sets)"
        )
    model.load_state_dict(state, strict=True)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
