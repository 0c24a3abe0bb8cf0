"""Reading official ElasticTok checkpoints and configs, checked against the parity fixtures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from elastictok.model.config import PRESETS
from elastictok.weights.official import (
    OfficialCheckpointError,
    config_from_official,
    convert_official_checkpoint,
    expected_official_shapes,
    expected_state_dict_shapes,
    load_official_config,
    official_to_state_dict,
    read_official_params,
)
from helpers import PARITY

pytestmark = pytest.mark.skipif(
    not PARITY.is_dir(), reason="../shared/parity not found: parity fixtures are not available on this machine"
)

KINDS = ("fsq", "vae")


def _npz(kind: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / f"params_{kind}.npz") as z:
        return {k: z[k] for k in z.files}


def _config(kind: str):
    return load_official_config(PARITY / "configs.json", key=kind)


def _records(path: Path) -> list[list]:
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


def _write_stream(path: Path, records: list[list]) -> Path:
    path.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in records))
    return path


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 with round-to-nearest-even, in integer arithmetic."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def _raises(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(OfficialCheckpointError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert "expected" in message
    assert match in message, message
    return message


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_msgpack_equals_npz(kind: str) -> None:
    params = read_official_params(PARITY / f"params_{kind}.msgpack")
    reference = _npz(kind)
    assert set(params) == set(reference)
    for name, value in reference.items():
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_bf16_msgpack_equals_rne_of_npz() -> None:
    params = read_official_params(PARITY / "params_fsq_bf16.msgpack")
    reference = _npz("fsq")
    assert set(params) == set(reference)
    for name, value in reference.items():
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], _bf16_rne(value), err_msg=name)
    # Guard against a vacuous pass: bf16 must actually have changed the values.
    assert not np.array_equal(params["encoder/in_proj/kernel"], reference["encoder/in_proj/kernel"])


def test_trainstate_params_prefix_is_stripped(tmp_path: Path) -> None:
    records = _records(PARITY / "params_fsq.msgpack")
    # A train state also holds a step and optimizer state; the official loader skips them.
    trainstate = [
        [["step"], msgpack.packb(7)],
        *[[["params", "params", *keys], payload] for keys, payload in records],
        [["opt_state", "mu", "x"], b"not an array"],
    ]
    params = read_official_params(_write_stream(tmp_path / "trainstate.msgpack", trainstate))
    reference = _npz("fsq")
    assert set(params) == set(reference)
    np.testing.assert_array_equal(params["decoder/out_proj/kernel"], reference["decoder/out_proj/kernel"])


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "tokens", "patch"), [("fsq", 64, (1, 8, 8)), ("vae", 32, (2, 8, 8))])
def test_config_from_official(kind: str, tokens: int, patch: tuple[int, int, int]) -> None:
    official = json.loads((PARITY / "configs.json").read_text())[kind]
    config = config_from_official(official)
    assert config.frame_size == (32, 32)
    assert config.tokens_per_block() == tokens
    assert config.min_tokens() == 4
    assert config.patch_size == patch
    assert config.bottleneck == kind
    assert (config.hidden_size, config.intermediate_size, config.num_heads) == (64, 128, 4)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 2)
    assert config.rope == "1d" and config.encoder_conditioning == "mask"
    assert config.rope_theta == official["theta"]
    assert config.max_context_blocks == 3
    assert config.latent_dim == (6 if kind == "fsq" else 8)
    assert load_official_config(PARITY / "configs.json", key=kind) == config


def test_config_frame_size_must_match_max_toks() -> None:
    official = json.loads((PARITY / "configs.json").read_text())["fsq"]
    _raises(config_from_official, official, (256, 256), match="max_toks 64")
    flat = {k: v for k, v in official.items() if k != "_derived"}
    _raises(config_from_official, flat, match="256x256")  # falls back to the released 256x256
    assert config_from_official(flat, (32, 32)).tokens_per_block() == 64


def test_load_official_config_selection(tmp_path: Path) -> None:
    _raises(load_official_config, PARITY / "configs.json", match="fsq, vae")
    _raises(load_official_config, PARITY / "configs.json", key="nope", match="fsq, vae")
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(json.loads((PARITY / "configs.json").read_text())["vae"]))
    assert load_official_config(flat) == _config("vae")
    assert load_official_config("fsq-200m") == PRESETS["fsq-200m"]
    assert load_official_config("tiny-fsq", frame_size=(64, 64)).frame_size == (64, 64)
    (tmp_path / "bad.json").write_text("{not json")
    _raises(load_official_config, tmp_path / "bad.json", match="not a JSON file")
    _raises(load_official_config, tmp_path / "absent.json", match="no such file")


# --- mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_shapes_and_values(kind: str) -> None:
    config = _config(kind)
    params = _npz(kind)
    assert expected_official_shapes(config) == {k: v.shape for k, v in params.items()}
    state = official_to_state_dict(params, config)
    expected = expected_state_dict_shapes(config)
    assert list(state) == list(expected)
    for name, tensor in state.items():
        assert tuple(tensor.shape) == expected[name], name
        assert tensor.dtype.is_floating_point and tensor.is_contiguous()
        assert str(tensor.dtype) == "torch.float32"
    p = config.patch_dim
    assert expected["encoder.in_proj.weight"] == (64, p) and expected["decoder.out_proj.weight"] == (p, 64)
    assert expected["encoder.pre_quant.weight"] == ((6, 64) if kind == "fsq" else (16, 64))
    np.testing.assert_array_equal(state["encoder.in_proj.weight"].numpy(), params["encoder/in_proj/kernel"].T)
    np.testing.assert_array_equal(state["encoder.kept_embed"].numpy(), params["encoder/is_kept_embed"][0])
    np.testing.assert_array_equal(state["encoder.masked_embed"].numpy(), params["encoder/is_masked_embed"][0])
    scan = "decoder/decoder_blocks/scan_decoder"
    np.testing.assert_array_equal(
        state["decoder.layers.1.mlp.w2.weight"].numpy(), params[f"{scan}/feed_forward/w2/kernel"][1].T
    )
    np.testing.assert_array_equal(
        state["decoder.layers.0.attn.wo.weight"].numpy(), params[f"{scan}/attention/wo/kernel"][0].T
    )
    np.testing.assert_array_equal(
        state["encoder.layers.1.mlp_norm.weight"].numpy(),
        params["encoder/encoder_blocks/scan_decoder/ffn_norm/kernel"][1],
    )


def test_convert_official_checkpoint(tmp_path: Path) -> None:
    if importlib.util.find_spec("elastictok.model.autoencoder") is None:
        pytest.skip("elastictok.model is not written yet")
    from elastictok.model.autoencoder import ElasticTok

    config = _config("fsq")
    out = convert_official_checkpoint(PARITY / "params_fsq.msgpack", config, tmp_path / "converted")
    assert out.is_dir() and any(out.iterdir())
    model = ElasticTok(config)
    state = official_to_state_dict(_npz("fsq"), config)
    model.load_state_dict(state, strict=True)
    for name, tensor in model.state_dict().items():
        assert (tensor == state[name]).all(), name


# --- errors ---------------------------------------------------------------------------------


def test_truncated_file(tmp_path: Path) -> None:
    data = (PARITY / "params_fsq.msgpack").read_bytes()
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes(data[: len(data) // 2])
    _raises(read_official_params, cut, match="truncated after")


FOREIGN = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00",
    "json": json.dumps({"hidden_size": 64, "patch_size": [1, 8, 8]}).encode(),
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "empty": b"",
}


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(FOREIGN[name])
    _raises(read_official_params, path, match=str(path))


def test_missing_file(tmp_path: Path) -> None:
    _raises(read_official_params, tmp_path / "nope.msgpack", match="no such file")


def test_missing_record(tmp_path: Path) -> None:
    records = [r for r in _records(PARITY / "params_fsq.msgpack") if r[0] != ["encoder", "ln_f", "kernel"]]
    params = read_official_params(_write_stream(tmp_path / "missing.msgpack", records))
    _raises(official_to_state_dict, params, _config("fsq"), match="missing parameter encoder/ln_f/kernel")


def test_unexpected_param() -> None:
    params = {**_npz("fsq"), "encoder/extra/kernel": np.zeros((2, 2), np.float32)}
    _raises(official_to_state_dict, params, _config("fsq"), match="unexpected parameter encoder/extra/kernel")


def test_shape_mismatch() -> None:
    params = read_official_params(PARITY / "params_vae.msgpack")
    _raises(
        official_to_state_dict,
        params,
        _config("fsq"),
        match="encoder/in_proj/kernel has shape (384, 64); expected (192, 64)",
    )


def test_unsupported_dtype(tmp_path: Path) -> None:
    array = msgpack.packb([[2], "int32", b"\x00" * 8], use_bin_type=True)
    payload = msgpack.packb(msgpack.ExtType(1, array), use_bin_type=True)
    path = _write_stream(tmp_path / "int.msgpack", [[["encoder", "ln_f", "kernel"], payload]])
    _raises(read_official_params, path, match="'int32'")


def test_damaged_weights_are_refused_by_their_checksum(tmp_path):
    from elastictok import ElasticTok, ElasticTokConfig

    directory = ElasticTok(ElasticTokConfig.from_preset("tiny-fsq")).save_pretrained(tmp_path / "m")
    ElasticTok.from_pretrained(directory)  # intact: loads
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])  # still a valid file
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        ElasticTok.from_pretrained(directory)
