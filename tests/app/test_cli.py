"""End-to-end runs of the command line on tiny models and real media."""

from __future__ import annotations

import json

import pytest
import torch

from elastictok import ElasticTok
from elastictok.app.cli import main
from elastictok.tokenfile.format import read_tokens
from helpers import DATA, need_dir, tiny


def _image():
    return need_dir(DATA / "images" / "kodak", "the real test images") / "05.png"


def _clip():
    return need_dir(DATA / "video" / "dev" / "sam2", "the real dev clips") / "bedroom.mp4"


def test_reconstruct_image_writes_outputs_and_stats(tmp_path, model_dir):
    out = tmp_path / "img"
    assert main(["reconstruct", str(_image()), "-o", str(out), "--model", str(model_dir), "--metric", "psnr",
                 "--threshold", "12", "--resolution", "48"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert {"blocks", "total_tokens", "max_total_tokens", "settings", "seconds"} <= stats.keys()
    block = stats["blocks"][0]
    assert {"tokens", "max_tokens", "mse", "psnr"} <= block.keys()
    assert stats["frame_size"] == [48, 72]  # Kodak is 3:2, kept with the short side at 48
    assert stats["settings"]["metric"] == "psnr"
    for name in ["recon.png", "compare.png", "blocks.png"]:
        assert (out / name).stat().st_size > 0


def test_reconstruct_clip_fixed_count(tmp_path, model_dir):
    out = tmp_path / "clip"
    assert main(["reconstruct", str(_clip()), "-o", str(out), "--model", str(model_dir), "--num-tokens", "20",
                 "--max-frames", "6", "--resolution", "32"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert [b["tokens"] for b in stats["blocks"]] == [20, 20] and stats["frames"] == 6
    assert (out / "recon.mp4").stat().st_size > 0 and (out / "compare.mp4").stat().st_size > 0


def test_encode_info_decode_round_trip(tmp_path, model_dir, capsys):
    etok = tmp_path / "c.etok"
    assert main(["encode", str(_clip()), "-o", str(etok), "--model", str(model_dir), "--max-frames", "8",
                 "--resolution", "32", "--metric", "mse", "--threshold", "0.2", "--search", "binary"]) == 0
    capsys.readouterr()
    assert main(["info", str(etok)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_blocks"] == 2 and info["num_frames"] == 8 and info["settings"]["search"] == "binary"
    assert main(["decode", str(etok), "-o", str(tmp_path / "c.mp4"), "--model", str(model_dir)]) == 0
    model = ElasticTok.from_pretrained(model_dir)
    tokens = read_tokens(etok, model)
    assert torch.equal(model.decode(tokens), model.decode(read_tokens(etok, model)))


def test_decode_refuses_another_model(tmp_path, model_dir, capsys):
    etok = tmp_path / "i.etok"
    assert main(["encode", str(_image()), "-o", str(etok), "--model", str(model_dir), "--resolution", "32",
                 "--num-tokens", "8"]) == 0
    other = tmp_path / "other"
    tiny("tiny-axial", seed=1).save_pretrained(other)
    assert main(["decode", str(etok), "-o", str(tmp_path / "x.png"), "--model", str(other)]) == 2
    assert "pass the model that encoded it" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_get_one_line_errors(tmp_path, model_dir, capsys):
    missing = tmp_path / "missing.png"
    assert main(["reconstruct", str(missing), "-o", str(tmp_path / "o"), "--model", str(model_dir)]) == 2
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["encode", str(bad), "-o", str(tmp_path / "b.etok"), "--model", str(model_dir)]) == 2
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "b.etok").exists()


def test_main_job_on_the_default_model(tmp_path, capsys):
    assert main(["reconstruct", "--sample", "-o", str(tmp_path), "--num-tokens", "64"]) == 0
    for name in ["sample_image", "sample_clip"]:
        assert (tmp_path / name / "stats.json").exists()
    assert not (tmp_path / "_sample_clip.mp4").exists()


def _tiny_png(path, size):
    from PIL import Image

    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metric", "ssim", "--threshold", "1.5"], "ssim threshold must be in"),
        (["--metric", "mse", "--threshold", "-1"], "mse threshold must be in"),
        (["--min-tokens", "30", "--max-tokens", "10"], "min tokens (30) <= max tokens (10)"),
        (["--num-tokens", "999"], "--num-tokens in"),
        (["--budget", "1"], "below the minimum"),
        (["--num-tokens", "5", "--budget", "8"], "not both"),
        (["--context-blocks", "0"], "context_blocks >= 1"),
    ],
)
def test_bad_settings_exit_2_and_write_nothing(tmp_path, model_dir, capsys, extra, message):
    image = _tiny_png(tmp_path / "in.png", (64, 48))
    for verb, out in [("encode", tmp_path / "o.etok"), ("reconstruct", tmp_path / "outdir")]:
        assert main([verb, str(image), "-o", str(out), "--model", str(model_dir), "--resolution", "32", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_bad_media_and_token_files_exit_2(tmp_path, model_dir, capsys):
    small = _tiny_png(tmp_path / "small.png", (5, 5))
    assert main(["encode", str(small), "-o", str(tmp_path / "s.etok"), "--model", str(model_dir)]) == 2
    assert "smaller than one 8x8 patch" in capsys.readouterr().err
    trunc = tmp_path / "trunc.etok"
    assert main(["encode", str(_image()), "-o", str(trunc), "--model", str(model_dir), "--resolution", "32",
                 "--num-tokens", "8"]) == 0
    trunc.write_bytes(trunc.read_bytes()[:-30])
    decode = ["decode", str(trunc), "-o", str(tmp_path / "t.png"), "--model", str(model_dir)]
    for argv in (decode, ["info", str(trunc)]):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "t.png").exists()
