from __future__ import annotations

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig, Tokens
from elastictok.model.bottleneck import FSQ, GaussianBottleneck
from helpers import random_video, tiny

ALL_TINY = ["tiny-fsq", "tiny-vae", "tiny-axial"]


def test_fsq_value_grid_and_round_trip():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    codes = fsq(torch.randn(4096, 6) * 3)
    assert set(codes[:, 0].unique().tolist()) <= {v / 4 for v in range(-4, 4)}
    assert set(codes[:, 5].unique().tolist()) <= {v / 2 for v in range(-2, 3)}
    all_idx = torch.arange(fsq.codebook_size)
    assert fsq.codebook_size == 64000
    grid = fsq.indices_to_codes(all_idx)
    assert torch.equal(fsq.codes_to_indices(grid), all_idx)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(codes)), codes)
    # The official index of the all-zero code (what dropped positions hold there).
    assert fsq.codes_to_indices(torch.zeros(6)).item() == 32036


def test_fsq_is_fp32_under_autocast_and_passes_gradients():
    fsq = FSQ((8, 5))
    z = torch.randn(10, 2, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(z)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vae_mode_sample_and_kl():
    vae = GaussianBottleneck(4)
    z_pre = torch.cat([torch.randn(2, 8, 4), torch.full((2, 8, 4), 50.0)], -1)
    z, mean, logvar = vae(z_pre)
    assert torch.equal(z, mean) and logvar.max() == 20.0  # clipped
    zs, _, _ = vae(torch.zeros(2, 8, 8), sample=True, generator=torch.Generator().manual_seed(0))
    assert zs.std() > 0.5
    # Standard normal posteriors cost nothing; the KL only counts kept tokens.
    keep = torch.zeros(2, 8, dtype=torch.bool)
    keep[:, :3] = True
    assert vae.kl(torch.zeros(2, 8, 4), torch.zeros(2, 8, 4), keep, 4).item() == 0.0
    mean = torch.ones(2, 8, 4)
    # Per token 0.5 * 4 = 2; kept 3 tokens in block 0, 0 in block 1 -> mean over blocks = 3.
    assert vae.kl(mean, torch.zeros(2, 8, 4), keep, 4).item() == pytest.approx(3.0)


@pytest.mark.parametrize("preset", ["tiny-fsq", "tiny-vae"])
def test_patchify_inverse(preset):
    m = tiny(preset)
    video = random_video(frames=8)
    patches = m.patchify(video)
    assert patches.shape == (2, 2 * m.config.tokens_per_block(), m.config.patch_dim)
    assert torch.equal(m.unpatchify(patches, 8, (32, 32)), video)
    # Token 1 is the second patch of the first row; its first value is pixel (t=0, y=0, x=8, red).
    assert patches[0, 1, 0] == video[0, 0, 0, 0, 8]


@pytest.mark.parametrize("preset", ALL_TINY)
def test_block_causality(preset):
    m = tiny(preset)
    T = m.config.tokens_per_block()
    video = random_video(frames=12)
    counts = torch.tensor([[T, T // 2, 5], [7, T, T]])
    changed = video.clone()
    changed[:, :, 8:] = -changed[:, :, 8:]  # only block 2 differs
    with torch.no_grad():
        a, b = m(video, counts), m(changed, counts)
    assert torch.equal(a.z_pre[:, : 2 * T], b.z_pre[:, : 2 * T])  # encoder
    assert torch.equal(a.recon[:, :, :8], b.recon[:, :, :8])  # decoder
    assert not torch.allclose(a.recon[:, :, 8:], b.recon[:, :, 8:])


@pytest.mark.parametrize("preset", ALL_TINY)
def test_decoder_ignores_dropped_tail(preset):
    m = tiny(preset)
    tokens = m.encode(random_video(), num_tokens=5)
    junk = tokens.values.clone()
    pad = ~tokens.keep_mask()
    junk[pad] = junk[pad].flip(0) + (1 if tokens.kind == "fsq" else 0.7)
    other = Tokens(tokens.counts, junk, tokens.kind, tokens.num_frames, tokens.frame_size)
    assert torch.equal(m.decode(tokens), m.decode(other))


@pytest.mark.parametrize("preset", ALL_TINY + ["tiny-unconditioned"])
def test_incremental_path_equals_whole_sequence(preset):
    if preset == "tiny-unconditioned":
        m = tiny("tiny-fsq", encoder_conditioning="none")
    else:
        m = tiny(preset)
    T = m.config.tokens_per_block()
    video = random_video(frames=12)
    counts = torch.tensor([[T, 3, 9], [T // 2, T, 1]])
    with torch.no_grad():
        whole = m(video, counts)
        state, recons, codes = m.new_state(), [], []
        patches = m.patchify(video)
        for i in range(3):
            step = m.code_block(patches[:, i * T : (i + 1) * T], counts[:, i], state)
            m.commit(state, step)
            recons.append(step.recon)
            codes.append(step.codes)
    torch.testing.assert_close(torch.cat(codes, 1), whole.codes, rtol=0, atol=1e-5)
    inc = m.unpatchify(torch.cat(recons, 1), 12, (32, 32))
    torch.testing.assert_close(inc, whole.recon, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-fsq", "tiny-axial"])
def test_windowed_whole_sequence_equals_sliding_kv_cache(preset):
    m = tiny(preset)
    T = m.config.tokens_per_block()
    video = random_video(batch=1, frames=20)  # 5 blocks
    counts = torch.tensor([[T, 3, 9, T // 2, 7]])
    tokens = m.encode(video, counts, context_blocks=1)
    assert tokens.context_blocks == 1
    with torch.no_grad():
        state, recons, codes = m.new_state(), [], []
        patches = m.patchify(video)
        for i in range(5):
            step = m.code_block(patches[:, i * T : (i + 1) * T], counts[:, i], state)
            m.commit(state, step, context_blocks=1)
            recons.append(step.recon)
            codes.append(step.codes)
    torch.testing.assert_close(torch.cat(codes, 1), m.tokens_to_codes(tokens), rtol=0, atol=1e-5)
    torch.testing.assert_close(m.decode(tokens), m.unpatchify(torch.cat(recons, 1), 20, (32, 32)), rtol=0, atol=1e-5)
    # The window matters from the third block on, and only there.
    wide = m.encode(video, counts, context_blocks=4)
    assert torch.equal(wide.values[:, :2], tokens.values[:, :2])
    assert not torch.equal(m.decode(wide)[:, :, 8:], m.decode(tokens)[:, :, 8:])


def test_encode_defaults_to_the_trained_window():
    m = tiny("tiny-fsq", max_context_blocks=2)
    video = random_video(batch=1, frames=12)
    tokens = m.encode(video, 5)
    assert tokens.context_blocks == m.config.default_context_blocks == 1
    assert torch.equal(tokens.values, m.encode(video, 5, context_blocks=1).values)
    with pytest.raises(ValueError, match="context_blocks to be an int >= 1"):
        m.encode(video, 5, context_blocks=0)
    with pytest.raises(ValueError, match="context_blocks must be None or an int >= 1"):
        Tokens(tokens.counts, tokens.values, tokens.kind, 12, (32, 32), context_blocks=0)


def test_unconditioned_encoder_encodes_once():
    m = tiny("tiny-fsq", encoder_conditioning="none")
    assert not hasattr(m.encoder, "kept_embed")
    video = random_video()
    with torch.no_grad():
        a, b = m(video, torch.full((2, 3), 64)), m(video, torch.full((2, 3), 4))
    assert torch.equal(a.z_pre, b.z_pre)


def test_axial_model_takes_any_multiple_of_patch_size():
    m = tiny("tiny-axial")
    for size in [(32, 32), (16, 48), (40, 24)]:
        video = random_video(batch=1, frames=4, size=size)
        tokens = m.encode(video, num_tokens=3)
        assert tokens.values.shape[2] == 4 * size[0] // 8 * size[1] // 8
        assert m.decode(tokens).shape == video.shape


def test_encode_decode_api_pads_frames_and_keeps_counts():
    m = tiny("tiny-fsq")
    video = random_video(batch=1, frames=5)
    counts = torch.tensor([[10, 64]])
    tokens = m.encode(video, counts)
    assert tokens.num_blocks == 2 and tokens.num_frames == 5
    assert torch.equal(tokens.counts, counts)
    assert [t.shape for t in tokens.to_list()] == [(74,)]
    assert tokens.values.dtype == torch.long
    out = m.decode(tokens)
    assert out.shape == video.shape and out.abs().max() <= 1
    # An image is a one-frame video: the static block reconstructs every frame the same way.
    image = random_video(batch=1, frames=1)
    recon = m.decode(m.encode(image))
    assert recon.shape == image.shape


def test_vae_tokens_are_latents():
    m = tiny("tiny-vae")
    tokens = m.encode(random_video(), 7)
    assert tokens.values.shape == (2, 3, 32, 8) and tokens.values.is_floating_point()
    assert tokens.to_list()[0].shape == (21, 8)


def test_config_json_round_trip():
    for name in ["fsq-200m", "vae-200m", "small", "tiny-axial"]:
        c = ElasticTokConfig.from_preset(name)
        back = ElasticTokConfig.from_json(c.to_json())
        assert back == c and isinstance(back.patch_size, tuple) and isinstance(back.fsq_levels, tuple)
    assert ElasticTokConfig.from_preset("fsq-200m").tokens_per_block() == 4096
    assert ElasticTokConfig.from_preset("fsq-200m").min_tokens() == 256
    assert ElasticTokConfig.from_preset("vae-200m").tokens_per_block() == 2048
    with pytest.raises(ValueError, match="unknown ElasticTokConfig fields"):
        ElasticTokConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        ElasticTokConfig.from_preset("huge")


def test_official_presets_have_paper_parameter_counts():
    with torch.device("meta"):
        fsq = ElasticTok(ElasticTokConfig.from_preset("fsq-200m"))
        vae = ElasticTok(ElasticTokConfig.from_preset("vae-200m"))
    assert sum(p.numel() for p in fsq.parameters()) / 1e6 == pytest.approx(210.17, abs=0.01)
    assert sum(p.numel() for p in vae.parameters()) / 1e6 == pytest.approx(210.57, abs=0.01)


@pytest.mark.parametrize("preset", ["tiny-fsq", "tiny-vae"])
def test_save_load_round_trip(tmp_path, preset):
    m = tiny(preset)
    m.save_pretrained(tmp_path / "m")
    back = ElasticTok.from_pretrained(tmp_path / "m")
    assert back.config == m.config and not back.training
    video = random_video()
    assert torch.equal(back.decode(back.encode(video, 9)), m.decode(m.encode(video, 9)))


def test_load_rejects_missing_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["decoder.norm.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing.*decoder.norm.weight"):
        ElasticTok.from_pretrained(tmp_path)


def test_load_rejects_config_mismatch_and_garbage(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(ElasticTokConfig.from_preset("tiny-fsq", hidden_size=32).to_json())
    with pytest.raises(ValueError, match="does not match its config"):
        ElasticTok.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    (tmp_path / "config.json").write_text(ElasticTokConfig.from_preset("tiny-fsq").to_json())
    with pytest.raises(ValueError, match="not a readable safetensors"):
        ElasticTok.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a pretrained directory"):
        ElasticTok.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize(
    "video, match",
    [
        (torch.zeros(2, 3, 32, 32), r"\(B, 3, T, H, W\).*unsqueeze"),
        (torch.zeros(1, 4, 4, 32, 32), "3 RGB channels"),
        (torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8), "floating-point"),
        (torch.full((1, 3, 4, 32, 32), 200.0), r"in \[-1, 1\]"),
        (torch.full((1, 3, 4, 32, 32), float("nan")), "finite"),
        (torch.zeros(1, 3, 0, 32, 32), "non-empty"),
        (torch.zeros(1, 3, 4, 64, 64), "expected frames of 32x32"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_video_inputs(video, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny().encode(video)


def test_axial_rejects_frame_size_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny("tiny-axial").encode(random_video(batch=1, frames=4, size=(30, 32)))


@pytest.mark.parametrize(
    "num_tokens, match",
    [
        (0, r"in \[1, 64\]"),
        (65, r"in \[1, 64\]"),
        (torch.ones(2, 2), r"shape \(B, n_blocks\)"),
        (torch.full((2, 3), 2.5), "integer"),
    ],
)
def test_bad_token_counts(num_tokens, match):
    with pytest.raises(ValueError, match=match):
        tiny().encode(random_video(), num_tokens)


def test_decode_rejects_foreign_tokens():
    fsq_tokens = tiny("tiny-fsq").encode(random_video(), 4)
    with pytest.raises(ValueError, match="fsq tokens but the model has a vae"):
        tiny("tiny-vae").decode(fsq_tokens)


def test_out_of_range_fsq_indices_are_refused_by_tokens_and_decode():
    m = tiny("tiny-fsq")
    tokens = m.encode(random_video(1, 4), num_tokens=5)
    values = tokens.values.clone()
    values[0, 0, 0] = -1
    with pytest.raises(ValueError, match="FSQ indices >= 0"):
        Tokens(tokens.counts, values, "fsq", tokens.num_frames, tokens.frame_size)
    values[0, 0, 0] = m.config.codebook_size  # one past the codebook: would wrap around silently
    bad = Tokens(tokens.counts, values, "fsq", tokens.num_frames, tokens.frame_size, tokens.context_blocks)
    with pytest.raises(ValueError, match="below the codebook size"):
        m.decode(bad)
    values[0, 0, 0] = 0
    values[0, 0, 10] = 10**6  # past the kept count: padding, never read
    m.decode(Tokens(tokens.counts, values, "fsq", tokens.num_frames, tokens.frame_size, tokens.context_blocks))


def test_non_finite_vae_latents_are_refused():
    m = tiny("tiny-vae")
    tokens = m.encode(random_video(1, 4), num_tokens=5)
    values = tokens.values.clone()
    values[0, 0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite VAE latents"):
        Tokens(tokens.counts, values, "vae", tokens.num_frames, tokens.frame_size)
