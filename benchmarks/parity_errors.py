"""Largest differences from the official JAX outputs in ../shared/parity (the README's parity table).

Converts both tiny official checkpoints with the same code as `elastictok convert-official`, runs the
fixed kept-token patterns of the fixtures and prints the maximum absolute error per quantity.

    python benchmarks/parity_errors.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from elastictok import ElasticTok
from elastictok.metrics.pixel import block_mse
from elastictok.weights.official import convert_official_checkpoint, load_official_config

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"


@torch.no_grad()
def main() -> None:
    inputs = np.load(PARITY / "input_video.npz")
    for kind in ["fsq", "vae"]:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_official_config(PARITY / "configs.json", key=kind)
            model = ElasticTok.from_pretrained(convert_official_checkpoint(PARITY / f"params_{kind}.msgpack",
                                                                           config, tmp))
        ref = np.load(PARITY / f"ref_{kind}_fixed.npz")
        x = torch.from_numpy(inputs[f"patches_{kind}_f32"])
        T = config.tokens_per_block()
        keep = model.keep_mask(torch.from_numpy(ref["kept_counts"]).long(), T)
        z_pre, _ = model.encode_patches(x, keep, config.frame_size)
        codes, _, _ = model.quantize(z_pre, keep)
        recon, _ = model.decode_patches(codes, config.frame_size)
        u8 = ((recon.clamp(-1, 1) + 1) * 127.5).numpy().astype(np.uint8)  # the official truncation
        rows = {
            "z_pre": np.abs(z_pre.numpy() - ref["z_pre"]).max(),
            "codes": np.abs(codes.numpy() - ref["codes"]).max(),
            "recon": np.abs(recon.numpy() - ref["recon"]).max(),
            "block MSE": np.abs(block_mse(recon, x, T).numpy() - ref["mse_per_block"]).max(),
            "uint8 values differing": int((u8 != ref["recon_u8"]).sum()),
        }
        if kind == "fsq":
            rows["indices differing"] = int((model.quantizer.codes_to_indices(codes).numpy() != ref["indices"]).sum())
        print(kind, ", ".join(f"{k} {v:.2g}" if isinstance(v, float | np.floating) else f"{k} {v}"
                              for k, v in rows.items()))


if __name__ == "__main__":
    main()
