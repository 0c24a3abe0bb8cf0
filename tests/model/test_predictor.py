"""The token-count predictor: features, shapes, and its place in a pretrained directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from elastictok import ElasticTok
from elastictok.model.predictor import (
    BLOCK_FEATURES,
    TOKEN_FEATURES,
    CountPredictor,
    PastSlice,
    PredictorConfig,
    block_features,
)
from elastictok.utils.pretrained import read_checksums
from helpers import random_video, tiny


def test_features_see_change_only_where_there_is_a_reference():
    model = tiny("tiny-axial")
    video = random_video(1, 4, (32, 48))
    patches = model.patchify(video)
    grid = model.config.grid((32, 48))
    tokens, block = block_features(patches, model.config.patch_size, grid)
    assert tokens.shape == (1, patches.shape[1], TOKEN_FEATURES) and block.shape == (1, BLOCK_FEATURES)
    per_slice = grid[1] * grid[2]
    change, has_ref = 6, 7  # feature columns
    assert (tokens[0, :per_slice, has_ref] == 0).all() and (tokens[0, per_slice:, has_ref] == 1).all()
    assert (tokens[0, :per_slice, change] == 0).all()  # no reference, no change
    previous = patches[:, -per_slice:]
    with_past, block_past = block_features(patches, model.config.patch_size, grid, PastSlice(previous, previous))
    assert (with_past[0, :, has_ref] == 1).all() and block_past[0, 3] == 1
    # A still block repeats its first slice: the least change after it.
    still = model.patchify(video[:, :, :1].expand(-1, -1, 4, -1, -1))
    t, _ = block_features(still, model.config.patch_size, grid)
    assert torch.allclose(t[0, per_slice:, change], t[0, per_slice:, change].min())
    assert (t[0, per_slice:, change] < tokens[0, per_slice:, change]).all()


def test_the_context_error_is_read_at_each_place_for_every_slice():
    model = tiny("tiny-axial")
    patches = model.patchify(random_video(1, 4, (32, 48)))
    grid = model.config.grid((32, 48))
    per_slice, context_error = grid[1] * grid[2], 9  # feature column
    source = patches[:, -per_slice:]
    recon = source.clone()
    recon[:, 0] += 0.5  # the context is wrong at the first place only
    tokens, block = block_features(patches, model.config.patch_size, grid, PastSlice(recon, source))
    errors = tokens[0, :, context_error].reshape(-1, per_slice)  # (slices, places)
    assert (errors[:, 0] > errors[:, 1]).all() and (errors == errors[:1]).all()
    exact, exact_block = block_features(patches, model.config.patch_size, grid, PastSlice(source, source))
    assert block[0, 5] > exact_block[0, 5]
    none, _ = block_features(patches, model.config.patch_size, grid)
    assert (none[0, :, context_error] == 0).all()


def test_prediction_shapes_and_more_tokens_can_be_read_at_any_count():
    predictor = CountPredictor(PredictorConfig(hidden_size=16))
    model = tiny("tiny-axial")
    patches = model.patchify(random_video(1, 4, (32, 32)))
    tokens, block = block_features(patches, model.config.patch_size, model.config.grid((32, 32)))
    log_mse, log_spread = predictor(tokens, block, torch.tensor([4, 20, 64]), 16, False)
    assert log_mse.shape == log_spread.shape == (1, 3)
    assert torch.isfinite(log_mse).all() and (log_spread >= -5).all() and (log_spread <= 2).all()


def with_predictor(path, seed=0):
    model = tiny("tiny-axial", seed=seed)
    model.save_pretrained(path)
    torch.manual_seed(seed)
    digest = read_checksums(path)["model.safetensors"]
    model.predictor = CountPredictor(PredictorConfig(hidden_size=16, for_weights=digest, extra={"blocks": 3}))
    model.save_pretrained(path)
    return model


def test_a_predictor_round_trips_through_a_pretrained_directory(tmp_path):
    model = with_predictor(tmp_path / "m")
    assert {"predictor.json", "predictor.safetensors"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert "predictor.safetensors" in read_checksums(tmp_path / "m")
    loaded = ElasticTok.from_pretrained(tmp_path / "m")
    assert loaded.predictor is not None and loaded.predictor.config == model.predictor.config
    for (name, a), (_, b) in zip(model.predictor.state_dict().items(), loaded.predictor.state_dict().items()):
        assert torch.equal(a, b), name
    assert not loaded.predictor.training
    # The model's own weights file holds no predictor tensors.
    assert set(ElasticTok.from_pretrained(tmp_path / "m").state_dict()) - {
        k for k in loaded.state_dict() if k.startswith("predictor.")} == set(tiny("tiny-axial").state_dict())


def test_a_model_without_a_predictor_loads_as_before(model_dir):
    assert ElasticTok.from_pretrained(model_dir).predictor is None


def test_a_damaged_predictor_is_refused(tmp_path):
    with_predictor(tmp_path / "m")
    weights = tmp_path / "m" / "predictor.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        ElasticTok.from_pretrained(tmp_path / "m")


def test_a_predictor_of_another_shape_is_refused_with_what_to_do(tmp_path):
    from safetensors.torch import load_file, save_file

    from elastictok.utils.pretrained import record_checksums

    with_predictor(tmp_path / "m")
    weights = tmp_path / "m" / "predictor.safetensors"
    state = load_file(weights)
    state["token_in.weight"] = state["token_in.weight"][:, :-1].contiguous()  # one token feature fewer
    save_file(state, weights)
    record_checksums(tmp_path / "m", ["predictor.safetensors"])
    with pytest.raises(ValueError, match="does not match its config.*make it again or remove it"):
        ElasticTok.from_pretrained(tmp_path / "m")


def test_a_predictor_made_for_other_weights_is_refused(tmp_path):
    with_predictor(tmp_path / "m")
    other = tmp_path / "other"
    tiny("tiny-axial", seed=1).save_pretrained(other)
    for name in ("predictor.json", "predictor.safetensors"):
        (other / name).write_bytes((tmp_path / "m" / name).read_bytes())
    sums = read_checksums(other) | {"predictor.safetensors": read_checksums(tmp_path / "m")["predictor.safetensors"]}
    (other / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ValueError, match="made for other weights"):
        ElasticTok.from_pretrained(other)


def test_a_broken_predictor_config_is_one_line_on_the_command_line(tmp_path):
    with_predictor(tmp_path / "m")
    (tmp_path / "m" / "predictor.json").write_text('{"hidden": 3}')
    image = tmp_path / "a.png"
    from elastictok.media.io import save_image

    save_image(random_video(1, 1, (32, 32))[0, :, 0], image)
    out = subprocess.run([sys.executable, "-m", "elastictok", "encode", str(image), "--model", str(tmp_path / "m"),
                          "-o", str(tmp_path / "a.etok")], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "predictor.json" in out.stderr
    assert not (tmp_path / "a.etok").exists()


def test_fine_tuned_weights_drop_a_stale_predictor(tmp_path):
    model = with_predictor(tmp_path / "m")
    with torch.no_grad():
        model.encoder.in_proj.weight.add_(0.01)
    model.save_pretrained(tmp_path / "tuned")
    assert not (tmp_path / "tuned" / "predictor.json").exists()
    assert ElasticTok.from_pretrained(tmp_path / "tuned").predictor is None
