"""train-predictor end to end on a tiny model, and the predict search coding through it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from elastictok import ElasticTok
from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.media.io import save_image, save_video
from elastictok.model.predictor import CountPredictor, PredictorConfig
from elastictok.train import predictor as predictor_training
from elastictok.train.predictor import PredictorTraining, crossing_count, load_curves, train_predictor
from elastictok.utils.pretrained import read_checksums, weights_digest
from helpers import random_video, tiny

FAST = dict(max_images=3, max_videos=1, blocks_per_video=2, counts_per_block=4, epochs=3, hidden_size=8,
            still_clips=0)


def smooth_video(frames: int, size=(32, 32), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, frames, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(frames, *size), mode="trilinear")[0]  # (3, T, H, W)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "images" / "a").mkdir(parents=True)
    (root / "videos" / "s").mkdir(parents=True)
    for i in range(3):
        save_image(smooth_video(1, seed=i)[:, 0], root / "images" / "a" / f"{i}.png")
    save_video(smooth_video(8, seed=9), root / "videos" / "s" / "clip.mp4", fps=8)
    return root


def test_train_predictor_writes_a_model_directory_with_a_predictor(tmp_path, model_dir, data):
    model = ElasticTok.from_pretrained(model_dir)
    out, curves = tmp_path / "with", tmp_path / "curves.pt"
    summary = train_predictor(model, model_dir, [data / "images"], [data / "videos"], out,
                              PredictorTraining(resolutions=(32,), **FAST), curves, log=lambda s: None)
    assert summary["blocks"] == 3 + 2 and summary["video_blocks"] == 2
    loaded = ElasticTok.from_pretrained(out)
    assert loaded.predictor is not None and loaded.predictor.config.for_weights == weights_digest(model_dir)
    assert loaded.predictor.config.extra["blocks"] == 5
    assert (out / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    # The curves are reused on a second run, and refused for other weights.
    assert len(load_curves(curves, weights_digest(model_dir))[0]) == 5
    with pytest.raises(ValueError, match="other model weights"):
        load_curves(curves, "0" * 64)


def test_still_clips_repeat_an_image_and_leave_the_other_curves_as_they_were(tmp_path, model_dir, data):
    model = ElasticTok.from_pretrained(model_dir)
    plain = PredictorTraining(resolutions=(32,), **FAST)
    stills = PredictorTraining(resolutions=(32,), **dict(FAST, still_clips=2), still_blocks=3)
    train_predictor(model, model_dir, [data / "images"], [data / "videos"], tmp_path / "a", plain,
                    tmp_path / "a.pt", log=lambda s: None)
    summary = train_predictor(model, model_dir, [data / "images"], [data / "videos"], tmp_path / "b", stills,
                              tmp_path / "b.pt", log=lambda s: None)
    assert summary["blocks"] == 5 + 2 * 3 and summary["video_blocks"] == 2 + 2 * 3
    before = load_curves(tmp_path / "a.pt", weights_digest(model_dir))[0]
    after = load_curves(tmp_path / "b.pt", weights_digest(model_dir))[0]
    assert all(torch.equal(x.mse, y.mse) and torch.equal(x.counts, y.counts) for x, y in zip(before, after))
    clip = after[5:8]  # the first still clip: one image three times; each block after the first has a past
    assert all(torch.equal(c.patches, clip[0].patches) for c in clip) and clip[0].previous is None
    assert all(c.previous is not None and torch.equal(c.previous_source, clip[0].patches[-c.previous.shape[0]:])
               for c in clip[1:])
    with pytest.raises(ValueError, match="--still-blocks"):
        PredictorTraining(still_blocks=0)


def test_focused_counts_land_where_the_measured_curve_crosses_the_level(tmp_path, model_dir, data, monkeypatch):
    counts, mse = [10, 20, 40, 80], [0.1, 0.05, 0.02, 0.01]
    assert crossing_count(counts, mse, 0.05) == 20 and crossing_count(counts, mse, 0.03) in range(20, 41)
    # Linear in log-log: halfway down (in log MSE) between 20 and 40 is their geometric mean.
    assert crossing_count(counts, mse, (0.05 * 0.02) ** 0.5) == round((20 * 40) ** 0.5)
    assert crossing_count(counts, mse, 0.005) is None and crossing_count(counts, mse, 0.2) is None
    model = ElasticTok.from_pretrained(model_dir)
    levels = []

    def spy(counts, mse, level):  # the crossing is measured on the block's own curve, in range
        levels.append(level)
        assert len(counts) == len(mse) and counts == sorted(counts)
        return 3

    monkeypatch.setattr(predictor_training, "crossing_count", spy)
    opts = PredictorTraining(resolutions=(32,), **dict(FAST, counts_per_block=5), focus_counts=2,
                             focus_mse=(0.02, 0.2))
    summary = train_predictor(model, model_dir, [data / "images"], [], tmp_path / "m", opts, tmp_path / "c.pt",
                              log=lambda s: None)
    assert summary["focus_counts"] == 2
    curves = load_curves(tmp_path / "c.pt", weights_digest(model_dir))[0]
    # Every block still measures every token and at most counts_per_block counts, in ascending order.
    lo, _, T = model.config.token_bounds((32, 32))
    assert len(levels) == 3 * 2 and all(0.02 <= v <= 0.2 for v in levels)
    assert len(curves) == 3 and all(c.counts[-1] == T and len(c.counts) <= 5 and bool((c.counts.diff() > 0).all())
                                    for c in curves)
    # The spy's crossing (3), give or take two tokens, was measured in every block.
    assert all(any(max(lo, 1) <= n <= 5 for n in c.counts.tolist()) for c in curves)
    with pytest.raises(ValueError, match="--focus-counts"):
        PredictorTraining(counts_per_block=4, focus_counts=3)
    with pytest.raises(ValueError, match="--focus-mse"):
        PredictorTraining(focus_mse=(0.05, 0.01))


def predicted(model: ElasticTok, tmp_path) -> ElasticTok:
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model.predictor = CountPredictor(PredictorConfig(hidden_size=8, for_weights=read_checksums(tmp_path)[
        "model.safetensors"]))
    return model


@pytest.mark.parametrize("conditioning", ["mask", "none"])
@pytest.mark.parametrize("metric,threshold", [("mse", 0.3), ("psnr", 14.0)])
def test_predict_meets_the_target_like_binary_with_either_encoder(tmp_path, conditioning, metric, threshold):
    model = predicted(tiny("tiny-axial", encoder_conditioning=conditioning), tmp_path)
    video = random_video(1, 12, (32, 32))
    target = Target(metric, threshold)
    found = encode_adaptive(model, video, CodingOptions(target=target, search="predict", tolerance=0))
    exact = encode_adaptive(model, video, CodingOptions(target=target, search="binary"))
    assert found.tokens.counts.tolist() == exact.tokens.counts.tolist()
    assert found.options.search == "predict"


def test_predict_is_the_default_search_only_with_a_predictor(tmp_path):
    video = random_video(1, 8, (32, 32))
    plain = tiny("tiny-axial")
    assert encode_adaptive(plain, video, CodingOptions(target=Target("mse", 0.3))).options.search == "fast"
    model = predicted(tiny("tiny-axial"), tmp_path)
    result = encode_adaptive(model, video, CodingOptions(target=Target("mse", 0.3)))
    assert result.options.search == "predict" and result.options.search_tolerance == 1 / 64
    # Metrics it does not predict fall back to fast; asking for predict there is refused.
    assert encode_adaptive(model, video, CodingOptions(target=Target("ssim", 0.1))).options.search == "fast"
    with pytest.raises(ValueError, match="predicts MSE and PSNR"):
        encode_adaptive(model, video, CodingOptions(target=Target("ssim", 0.1), search="predict"))
    with pytest.raises(ValueError, match="token-count predictor"):
        encode_adaptive(plain, video, CodingOptions(target=Target("mse", 0.3), search="predict"))


def test_the_verb_trains_and_refuses_bad_input_in_one_line(tmp_path, model_dir, data):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "elastictok", "train-predictor", "--model", str(model_dir), "--images",
           str(data / "images"), "--videos", str(data / "videos"), "-o", str(out), "--resolution", "32",
           "--max-images", "2", "--max-videos", "1", "--blocks-per-video", "1", "--counts-per-block", "3",
           "--epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{"):])["blocks"] == 3 + 2 * 3  # and the images as still clips
    assert ElasticTok.from_pretrained(out).predictor is not None
    # A predictor that no longer loads (made for other weights, say) is replaced in place, not refused.
    config = json.loads((out / "predictor.json").read_text())
    (out / "predictor.json").write_text(json.dumps(dict(config, for_weights="0" * 64)))
    with pytest.raises(ValueError, match="other"):
        ElasticTok.from_pretrained(out)
    again = subprocess.run([*cmd[:cmd.index("--model")], "--model", str(out), *cmd[cmd.index("--model") + 2:-2],
                            "--still-clips", "0", "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert ElasticTok.from_pretrained(out).predictor.config.for_weights == weights_digest(model_dir)
    image = data / "images" / "a" / "0.png"
    encoded = subprocess.run([sys.executable, "-m", "elastictok", "encode", str(image), "--model", str(out),
                              "--metric", "mse", "--threshold", "0.2", "-o", str(tmp_path / "a.etok")],
                             capture_output=True, text=True)
    assert encoded.returncode == 0, encoded.stderr
    bad = subprocess.run([*cmd[:-2], "--epochs", "0", "-o", str(tmp_path / "never")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--epochs" in bad.stderr
    assert not (tmp_path / "never").exists()
    missing = subprocess.run([sys.executable, "-m", "elastictok", "encode", str(image), "--model", str(model_dir),
                              "--search", "predict", "-o", str(tmp_path / "b.etok")], capture_output=True, text=True)
    assert missing.returncode == 2 and "train-predictor" in missing.stderr and missing.stderr.count("\n") == 1
