"""Parity with the official JAX code on the fixtures in ../shared/parity (see its README)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elastictok import ElasticTok
from elastictok.app.cli import main as cli_main
from elastictok.metrics.pixel import block_mse
from helpers import PARITY, need_dir

ATOL = 1e-5  # the fixtures' README: float32 ports agree to ~1e-6


@pytest.fixture(scope="module", params=["fsq", "vae"])
def case(request, tmp_path_factory):
    kind = request.param
    parity = need_dir(PARITY, "the official parity fixtures")
    out = tmp_path_factory.mktemp(kind)
    assert cli_main(["convert-official", str(parity / f"params_{kind}.msgpack"),
                     "--config", str(parity / "configs.json"), "--config-key", kind, "-o", str(out)]) == 0
    model = ElasticTok.from_pretrained(out)
    inputs = np.load(parity / "input_video.npz")
    x = torch.from_numpy(inputs[f"patches_{kind}_f32"])
    return kind, model, x, np.load(parity / f"ref_{kind}_fixed.npz"), np.load(parity / f"ref_{kind}_search.npz")


def run(model: ElasticTok, x: torch.Tensor, counts: np.ndarray):
    T = model.config.tokens_per_block()
    keep = model.keep_mask(torch.from_numpy(counts).long(), T)
    with torch.no_grad():
        z_pre, _ = model.encode_patches(x, keep, model.config.frame_size)
        codes, _, _ = model.quantize(z_pre, keep)
        recon, _ = model.decode_patches(codes, model.config.frame_size)
    return keep, z_pre, codes, recon


def official_u8(recon: torch.Tensor) -> np.ndarray:
    # The official code truncates toward zero rather than rounding.
    return ((recon.clamp(-1, 1) + 1) * 127.5).numpy().astype(np.uint8)


def assert_u8_close(ours: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_fixed_masks_match(case):
    kind, model, x, ref, _ = case
    keep, z_pre, codes, recon = run(model, x, ref["kept_counts"])
    assert torch.equal(keep, torch.from_numpy(ref["encoding_mask"]))
    np.testing.assert_allclose(z_pre.numpy(), ref["z_pre"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(recon.numpy(), ref["recon"], rtol=0, atol=ATOL)
    T = model.config.tokens_per_block()
    np.testing.assert_allclose(block_mse(recon, x, T).numpy(), ref["mse_per_block"], rtol=0, atol=1e-6)
    assert_u8_close(official_u8(recon), ref["recon_u8"])
    frames = model.unpatchify(recon, 12, model.config.frame_size)
    assert_u8_close(official_u8(frames.permute(0, 2, 3, 4, 1)), ref["recon_frames_u8"])
    if kind == "fsq":
        assert np.array_equal(codes.numpy(), ref["codes"])
        assert np.array_equal(model.quantizer(z_pre).numpy(), ref["codes_unmasked"])
        assert np.array_equal(model.quantizer.codes_to_indices(codes).numpy(), ref["indices"].astype(np.int64))
    else:
        mean, logvar = model.quantizer.split(z_pre)
        np.testing.assert_allclose(mean.numpy(), ref["vae_mean"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(logvar.numpy(), ref["vae_logvar_clipped"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(codes.numpy(), ref["codes"], rtol=0, atol=ATOL)
        out = model(model.unpatchify(x, 12, model.config.frame_size), torch.from_numpy(ref["kept_counts"]).long())
        np.testing.assert_allclose(1e-8 * out.kl.item(), float(ref["kl_aux_loss"]), rtol=1e-5)


def test_public_api_matches_search_outcome(case):
    """encode/decode at the official search's final counts reproduce its codes and reconstruction."""
    kind, model, x, _, ref = case
    video = model.unpatchify(x, 12, model.config.frame_size)
    tokens = model.encode(video, torch.from_numpy(ref["kept_counts"]).long())
    recon = model.decode(tokens)
    T = model.config.tokens_per_block()
    patches = model.patchify(recon)
    np.testing.assert_allclose(block_mse(patches, x, T).numpy(), ref["mse_per_block"], rtol=0, atol=1e-6)
    assert_u8_close(official_u8(patches), ref["recon_u8"])
    counts = ref["kept_counts"]
    padded = ref["codes_padded"]
    for b in range(counts.shape[0]):
        for i in range(counts.shape[1]):
            n = counts[b, i]
            if kind == "fsq":
                assert np.array_equal(tokens.block(b, i).numpy(), padded[b, i, :n].astype(np.int64))
            else:
                np.testing.assert_allclose(tokens.block(b, i).numpy(), padded[b, i, :n], rtol=0, atol=ATOL)


def test_cached_block_passes_match_search_trace(case):
    """Every candidate pass of the official search, replayed through our KV-cached block path."""
    kind, model, x, _, ref = case
    T = model.config.tokens_per_block()
    state = model.new_state()
    losses = []
    for blk, kept, commit in zip(ref["trace_block"], ref["trace_kept"], ref["trace_is_commit"]):
        assert blk == state.next_block
        with torch.no_grad():
            step = model.code_block(x[:, blk * T : (blk + 1) * T], torch.from_numpy(kept).long(), state)
        losses.append(block_mse(step.recon, x[:, blk * T : (blk + 1) * T], T)[:, 0])
        if commit:
            model.commit(state, step)
    np.testing.assert_allclose(torch.stack(losses).numpy(), ref["trace_loss"], rtol=0, atol=1e-6)


def test_bf16_checkpoint_reads_and_runs(tmp_path):
    parity = need_dir(PARITY, "the official parity fixtures")
    assert cli_main(["convert-official", str(parity / "params_fsq_bf16.msgpack"),
                     "--config", str(parity / "configs.json"), "--config-key", "fsq", "-o", str(tmp_path)]) == 0
    model = ElasticTok.from_pretrained(tmp_path)
    ref = np.load(parity / "ref_fsq_fixed.npz")
    x = torch.from_numpy(np.load(parity / "input_video.npz")["patches_fsq_f32"])
    _, z_pre, _, recon = run(model, x, ref["kept_counts"])
    # bf16 weights: close, not exact (an FSQ code may flip, so compare the encoder output tightly).
    assert np.abs(z_pre.numpy() - ref["z_pre"]).max() < 2e-2
    assert np.abs(recon.numpy() - ref["recon"]).mean() < 1e-2
