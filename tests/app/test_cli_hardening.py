"""Hostile command lines (issue 15): each gets one line on stderr and exit 2, or a signal's exit status,
and leaves no file and no folder behind; a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from elastictok.app import cli
from elastictok.app.cli import main
from elastictok.media.io import save_video
from helpers import REPO

av = pytest.importorskip("av", reason="the video cases need PyAV: pip install 'elastictok[video]'")


def _png(path: Path, size=(64, 48)) -> Path:
    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


def _clip(path: Path, frames: int = 8, size=(32, 32)) -> Path:
    g = torch.Generator().manual_seed(0)
    return save_video(torch.rand(3, frames, *size, generator=g) * 2 - 1, path, fps=24.0)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model (the check must come first)."""
    def refuse(args):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(cli, "load_model", refuse)


@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be written into: immutable for root (chattr +i), read-only for others."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a folder unwritable")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)])
    else:
        folder.chmod(0o755)


# Rows 1 and 2: absurd sizes are refused before anything is allocated ----------------------------


@pytest.mark.parametrize("size", [(10, 10000), (10000, 10)])
@pytest.mark.parametrize("verb", ["reconstruct", "encode"])
def test_extreme_aspect_ratio_is_refused(tmp_path, model_dir, capsys, size, verb):
    image = _png(tmp_path / "thin.png", size)
    out = tmp_path / "new" / ("o.etok" if verb == "encode" else "o")
    if verb == "encode":
        out.parent.mkdir()
    assert main([verb, str(image), "-o", str(out), "--model", str(model_dir)]) == 2
    line = _one_error_line(capsys)
    assert "aspect ratio of 1,000:1" in line and "--limit-aspect" in line and str(image) in line
    assert _listing(tmp_path) == (["new"] if verb == "encode" else []) + ["thin.png"]


def test_huge_resolution_is_refused(tmp_path, model_dir, capsys):
    image = _png(tmp_path / "in.png")
    assert main(["reconstruct", str(image), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                 "--resolution", "100000"]) == 2
    line = _one_error_line(capsys)
    assert "--resolution 100000" in line and "--limit-resolution" in line
    assert _listing(tmp_path) == ["in.png"]


def test_frame_pixel_limit_and_raising_the_limits(tmp_path, model_dir, capsys):
    image = _png(tmp_path / "in.png", (40, 20))  # 1:2, so --resolution 1080 gives 1080x2160 pixels
    base = ["encode", str(image), "-o", str(tmp_path / "o.etok"), "--model", str(model_dir)]
    assert main([*base, "--resolution", "1080"]) == 2
    line = _one_error_line(capsys)
    assert "1080x2160 = 2,332,800 pixels" in line and "--limit-pixels" in line
    # Limits can be lowered and raised: a 64x48 image at --resolution 40 is 40x48 pixels.
    small = ["encode", str(_png(tmp_path / "s.png")), "-o", str(tmp_path / "o.etok"), "--model", str(model_dir),
             "--resolution", "40", "--num-tokens", "4"]
    assert main([*small, "--limit-resolution", "32"]) == 2
    assert "--limit-resolution" in _one_error_line(capsys)
    assert main([*small, "--limit-pixels", "1000"]) == 2
    assert "above the limit of 1,000" in _one_error_line(capsys)
    assert main([*small, "--limit-aspect", "1.1"]) == 2
    assert "--limit-aspect" in _one_error_line(capsys)
    assert main(small) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "o.etok", "s.png"]


@pytest.mark.parametrize("value", ["0", "-5", "0.5"])
def test_bad_limit_values_name_the_option(tmp_path, capsys, no_model, value):
    image = _png(tmp_path / "in.png")
    assert main(["encode", str(image), "-o", str(tmp_path / "o.etok"), "--limit-aspect", value]) == 2
    assert "--limit-aspect" in _one_error_line(capsys)


def test_frame_limit_counts_the_resampled_frames(tmp_path, model_dir, capsys):
    clip = _clip(tmp_path / "c.mp4", frames=8)  # 1/3 s
    base = ["encode", str(clip), "-o", str(tmp_path / "o.etok"), "--model", str(model_dir), "--num-tokens", "4"]
    assert main([*base, "--fps", "1000000"]) == 2  # 333,333 frames
    line = _one_error_line(capsys)
    assert "333,333 frames at 1,000,000 fps" in line and "--limit-frames" in line
    assert main([*base, "--limit-frames", "5"]) == 2
    assert "8 frames are above the limit of 5" in _one_error_line(capsys)
    assert main([*base, "--limit-frames", "5", "--max-frames", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "o.etok"]


# Row 3: an EXIF-rotated photo is sized as it is read ----------------------------------------------


def test_exif_rotated_jpeg_is_sized_upright(tmp_path, model_dir):
    upright = Image.linear_gradient("L").resize((512, 400)).convert("RGB")  # displayed 512 wide, 400 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: 400 wide, 512 tall; the viewer rotates it 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (400, 512)
    out = tmp_path / "o"
    assert main(["reconstruct", str(path), "-o", str(out), "--model", str(model_dir), "--resolution", "32",
                 "--num-tokens", "4"]) == 0
    assert json.loads((out / "stats.json").read_text())["frame_size"] == [32, 40]  # was [40, 32]: 37% cut away


# Rows 4-7: outputs are checked before any work, with the user's path --------------------------------


@pytest.mark.parametrize("verb, target", [("reconstruct", "."), ("reconstruct", "sub"), ("encode", "x.etok"),
                                          ("decode", "x.png")])
def test_unwritable_output_folder(tmp_path, model_dir, capsys, unwritable, no_model, verb, target):
    source = _png(tmp_path / "in.png")
    if verb == "decode":
        source = tmp_path / "in.etok"
        source.write_bytes(b"ETOK")
    out = unwritable / target
    assert main([verb, str(source), "-o", str(out), "--model", str(model_dir)]) == 2
    line = _one_error_line(capsys)
    assert "not writable" in line and repr(str(out)) in line
    assert ".tmp" not in line and list(unwritable.iterdir()) == []


def test_reconstruct_into_an_existing_file(tmp_path, capsys, no_model):
    image = _png(tmp_path / "in.png")
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    assert main(["reconstruct", str(image), "-o", str(existing)]) == 2
    assert f"cannot write to {str(existing)!r}: it is a file" in _one_error_line(capsys)
    assert existing.read_text() == "keep me"


def test_encode_into_an_existing_folder_fails_at_once(tmp_path, capsys, no_model):
    image = _png(tmp_path / "in.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["encode", str(image), "-o", str(folder)]) == 2
    assert f"cannot write {str(folder)!r}: it is a folder" in _one_error_line(capsys)
    assert list(folder.iterdir()) == []


def test_encode_into_a_missing_folder_names_the_users_path(tmp_path, capsys, no_model):
    image = _png(tmp_path / "in.png")
    target = tmp_path / "missing" / "dir" / "x.etok"
    assert main(["encode", str(image), "-o", str(target)]) == 2
    line = _one_error_line(capsys)
    assert repr(str(target)) in line and "does not exist" in line and ".tmp" not in line
    assert _listing(tmp_path) == ["in.png"]


def test_outputs_never_overwrite_the_input(tmp_path, capsys, no_model):
    image = _png(tmp_path / "in.png")
    before = image.read_bytes()
    assert main(["encode", str(image), "-o", str(image)]) == 2
    assert "it is the input file" in _one_error_line(capsys)
    assert image.read_bytes() == before


def test_library_encode_names_the_users_path(tmp_path, model_dir):
    from elastictok import ElasticTok
    from elastictok.coding.options import CodingOptions
    from elastictok.files.coding import encode_file
    from elastictok.files.source import Source
    from elastictok.utils.files import OutputError

    model = ElasticTok.from_pretrained(model_dir)
    source = Source.open(_png(tmp_path / "in.png"), model, resolution=32)
    with pytest.raises(OutputError, match=r"'.*missing/x\.etok'.*does not exist"):
        encode_file(model, source, tmp_path / "missing" / "x.etok", CodingOptions(num_tokens=4))
    with pytest.raises(OutputError, match="it is a folder"):
        encode_file(model, source, tmp_path, CodingOptions(num_tokens=4))


# Rows 8 and 9: --device is checked before the model is loaded ---------------------------------------


def test_cuda_on_a_machine_without_it(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = _png(tmp_path / "in.png")
    assert main(["encode", str(image), "-o", str(tmp_path / "o.etok"), "--device", "cuda"]) == 2
    line = _one_error_line(capsys)
    assert "--device 'cuda'" in line and "not available" in line


@pytest.mark.parametrize("device", ["banana", "cuda:x", ""])
def test_unknown_device_names_the_option_not_the_model(tmp_path, model_dir, capsys, no_model, device):
    image = _png(tmp_path / "in.png")
    code = main(["reconstruct", str(image), "-o", str(tmp_path / "o"), "--model", str(model_dir), "--device", device])
    assert code == 2
    line = _one_error_line(capsys)
    assert "--device" in line and "safetensors" not in line and str(model_dir) not in line
    assert _listing(tmp_path) == ["in.png"]


# Rows 10 and 11: bad frame options name the option ----------------------------------------------------


@pytest.mark.parametrize("extra, option", [
    (["--fps", "0"], "--fps"), (["--fps", "-24"], "--fps"), (["--fps", "nan"], "--fps"), (["--fps", "inf"], "--fps"),
    (["--max-frames", "0"], "--max-frames"), (["--max-frames", "-1"], "--max-frames"),
    (["--resolution", "-8"], "--resolution"),
])
@pytest.mark.parametrize("verb", ["reconstruct", "encode"])
def test_bad_frame_options_name_the_option(tmp_path, capsys, no_model, extra, option, verb):
    clip = _clip(tmp_path / "clip.mp4")
    out = tmp_path / ("o.etok" if verb == "encode" else "o")
    assert main([verb, str(clip), "-o", str(out), *extra]) == 2
    line = _one_error_line(capsys)
    assert option in line and "cannot write" not in line and "no blocks" not in line
    assert _listing(tmp_path) == ["clip.mp4"]


def test_library_source_names_bad_frame_options(tmp_path, model_dir):
    from elastictok import ElasticTok
    from elastictok.files.source import Source

    model = ElasticTok.from_pretrained(model_dir)
    clip = _clip(tmp_path / "clip.mp4")
    with pytest.raises(ValueError, match="--fps"):
        Source.open(clip, model, fps=0)
    with pytest.raises(ValueError, match="--max-frames"):
        Source.open(clip, model, max_frames=0)


# Row 13: a video cut short is coded with a one-line warning --------------------------------------------


def _cut_short_mp4(folder: Path) -> Path:
    """32 frames with the index (moov) at the front, cut after the 13th frame's data."""
    full = folder / "full.mp4"
    g = torch.Generator().manual_seed(0)
    frames = ((torch.rand(3, 32, 32, generator=g) * 255).to(torch.uint8) for _ in range(32))
    with av.open(str(full), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(full)) as src:
        packets = [(p.pos, p.size) for p in src.demux(src.streams.video[0]) if p.size]
    pos, size = sorted(packets)[12]
    cut = folder / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: pos + size])
    full.unlink()
    return cut


def test_video_cut_short_warns_in_one_line(tmp_path, model_dir, capsys):
    cut = _cut_short_mp4(tmp_path)
    out = tmp_path / "o"
    assert main(["reconstruct", str(cut), "-o", str(out), "--model", str(model_dir), "--num-tokens", "4"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "cut short" in err[0], err
    assert "declares 32 frames" in err[0] and str(cut) in err[0]
    assert json.loads((out / "stats.json").read_text())["frames"] < 32


def test_whole_video_does_not_warn(tmp_path, model_dir, capsys):
    clip = _clip(tmp_path / "clip.mp4")
    assert main(["encode", str(clip), "-o", str(tmp_path / "o.etok"), "--model", str(model_dir),
                 "--num-tokens", "4"]) == 0
    assert capsys.readouterr().err == ""


# Row 14 and a missing input: --sample and INPUT are exclusive; no input is an input error ---------------


def test_sample_and_input_together_are_refused(tmp_path, capsys, no_model):
    image = _png(tmp_path / "in.png")
    assert main(["reconstruct", str(image), "--sample", "-o", str(tmp_path / "o")]) == 2
    assert "not both" in _one_error_line(capsys)
    assert _listing(tmp_path) == ["in.png"]


def test_missing_input_exits_2_naming_it(tmp_path, capsys, no_model):
    assert main(["reconstruct", "-o", str(tmp_path / "o")]) == 2
    assert "give an INPUT" in _one_error_line(capsys)
    for verb, name, out in [("reconstruct", "gone.png", "o"), ("encode", "gone.mp4", "o.etok"),
                            ("decode", "gone.etok", "o.png")]:
        assert main([verb, str(tmp_path / name), "-o", str(tmp_path / out)]) == 2
        assert f"cannot read {str(tmp_path / name)!r}: no such file" in _one_error_line(capsys)
    assert main(["encode", str(tmp_path), "-o", str(tmp_path / "o.etok")]) == 2
    assert "it is a folder" in _one_error_line(capsys)
    assert _listing(tmp_path) == []


# Failed runs leave nothing: no file, no folder they made; what existed before stays ---------------------


def test_failed_reconstruct_removes_what_it_made(tmp_path, model_dir, capsys, monkeypatch):
    import elastictok.files.coding as coding

    def fail(*args, **kwargs):
        raise ValueError("cannot plot")  # after tokens.etok, recon.png and compare.png are written

    monkeypatch.setattr(coding, "plot_blocks", fail)
    image = _png(tmp_path / "in.png")
    argv = ["reconstruct", str(image), "--model", str(model_dir), "--resolution", "32", "--num-tokens", "4"]
    assert main([*argv, "-o", str(tmp_path / "new" / "deeper")]) == 2
    assert _one_error_line(capsys) == "error: cannot plot"
    assert _listing(tmp_path) == ["in.png"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "recon.png").write_text("an older result")
    (existing / "notes.txt").write_text("mine")
    assert main([*argv, "-o", str(existing)]) == 2
    capsys.readouterr()
    assert _listing(existing) == ["notes.txt", "recon.png"]  # what the run added is gone, nothing else
    assert (existing / "notes.txt").read_text() == "mine"


def test_bug_keeps_its_traceback(tmp_path, model_dir, monkeypatch):
    import elastictok.files.coding as coding

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(coding, "plot_blocks", bug)
    image = _png(tmp_path / "in.png")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["reconstruct", str(image), "-o", str(tmp_path / "o"), "--model", str(model_dir), "--resolution", "32",
              "--num-tokens", "4"])
    assert _listing(tmp_path) == ["in.png"]


def test_interrupt_in_process_prints_one_line(tmp_path, model_dir, capsys, monkeypatch):
    import elastictok.files.coding as coding

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(coding, "plot_blocks", interrupt)
    image = _png(tmp_path / "in.png")
    assert main(["reconstruct", str(image), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                 "--resolution", "32", "--num-tokens", "4"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert _listing(tmp_path) == ["in.png"]


# Row 15: SIGTERM and SIGINT during an encode ------------------------------------------------------------


@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_in_process_runs_the_cleanup(tmp_path, model_dir, capsys, monkeypatch, sig, code, line):
    import elastictok.files.coding as coding

    stats = coding.block_stats

    def signal_after_first_block(*args):
        assert list(tmp_path.glob(".x.etok.*.tmp"))  # the token file is being written
        os.kill(os.getpid(), sig)
        return stats(*args)

    monkeypatch.setattr(coding, "block_stats", signal_after_first_block)
    clip = _clip(tmp_path / "clip.mp4")
    # A shell without job control starts background jobs with SIGINT ignored, and so this test with it:
    # give Ctrl-C its usual meaning here, and put back what was inherited afterwards.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["encode", str(clip), "-o", str(tmp_path / "x.etok"), "--model", str(model_dir),
                     "--num-tokens", "4"]) == code
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert capsys.readouterr().err == f"{line}\n"
    assert _listing(tmp_path) == ["clip.mp4"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main() put the handler back


def test_sigterm_during_encode_leaves_nothing(tmp_path, model_dir):
    clip = _clip(tmp_path / "clip.mp4", frames=400)  # 100 blocks: far longer than the wait below
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastictok", "encode", str(clip), "-o", str(work / "x.etok"), "--model",
         str(model_dir), "--num-tokens", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob(".x.etok.*.tmp")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the temporary token file never appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err == "terminated\n" and out == ""
    assert list(work.iterdir()) == []


def test_argparse_errors_are_one_line_too(capsys):
    for argv in (["encode", "in.png", "-o", "o.etok", "--fps", "abc"], ["encode"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "--help" in _one_error_line(capsys)
