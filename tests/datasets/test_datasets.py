"""Token datasets with the local engine: sources, shards and manifest, resume, failures, readers, back to pixels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from elastictok.app.tokenize import add_parsers
from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.datasets import (
    DatasetError,
    TokenDataset,
    TokenizeJob,
    decode_row,
    engines,
    list_sources,
    tokenize,
)
from elastictok.datasets.manifest import model_entry
from elastictok.datasets.store import DatasetWriter
from elastictok.files.coding import encode_file
from elastictok.files.source import Source
from elastictok.media import io
from elastictok.tokenfile.format import read_tokens
from helpers import tiny

# A loose target, so that the search picks different counts per block even on an untrained model, and
# keyframes inside clips.
OPTIONS = CodingOptions(target=Target("mse", 0.12), search="binary", keyframe_interval=2)


def write_corpus(root: Path) -> Path:
    """A 14-frame and a 6-frame video, an image (not 32x32, so it is resized) and a corrupt video."""
    g = torch.Generator().manual_seed(0)
    (root / "sub").mkdir(parents=True)
    t = torch.linspace(0, 1, 14)[None, :, None, None]
    base = torch.rand(3, 1, 32, 32, generator=g) * 1.2 - 0.6
    io.save_video((base + 0.3 * torch.sin(6 * t)).clamp(-1, 1), root / "clip.mp4", 8.0)
    io.save_video(torch.rand(3, 6, 32, 32, generator=g) * 2 - 1, root / "sub" / "noise.mp4", 10.0)
    io.save_image(torch.rand(3, 40, 48, generator=g) * 2 - 1, root / "still.png")
    (root / "broken.mp4").write_bytes(b"\x00not a video at all")
    (root / "notes.md").write_text("not media")  # ignored by the folder listing
    return root


def sorted_rows(path) -> list[dict]:
    return sorted(TokenDataset(path).rows(), key=lambda r: r["key"])


def run_tokenize(model, sources, out, job=TokenizeJob(OPTIONS, max_clip_frames=12), **kw):
    return tokenize(model, [str(s) for s in sources], out, job, progress=False, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # as each Ray worker runs; keeps the CPU share of parallel test runs fair
    return tiny("tiny-fsq")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus, model):
    """The corpus tokenized in one go, two clips per shard."""
    out = tmp_path_factory.mktemp("ds") / "tokens"
    summary = run_tokenize(model, [corpus], out, shard_rows=2)
    return out, summary


# Sources ------------------------------------------------------------------------------------------
def test_sources_from_folders_files_and_lists(tmp_path, corpus):
    assert [r.name for r in list_sources([corpus])] == ["broken.mp4", "clip.mp4", "still.png", "sub/noise.mp4"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{corpus / 'clip.mp4'}\n\nmissing.png\n")
    refs = list_sources([listing, corpus / "still.png"])
    assert [r.name for r in refs] == [str(corpus / "clip.mp4"), "missing.png", "still.png"]
    assert refs[1].path == tmp_path / "missing.png"  # relative entries are read beside the list
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["still.png", "clip.mp4"], "label": ["a", "b"]}), corpus.parent / "list.parquet")
    assert [r.path for r in list_sources([corpus.parent / "list.parquet"])] == [
        corpus.parent / "still.png", corpus.parent / "clip.mp4"]


@pytest.mark.parametrize("spec, error, words", [
    ("nowhere", FileNotFoundError, "does not exist"),
    ("notes.md", ValueError, "not an image, a video"),
])
def test_bad_sources_are_one_line_errors(corpus, spec, error, words):
    with pytest.raises(error, match=words) as err:
        list_sources([corpus / spec])
    assert "\n" not in str(err.value)


def test_two_sources_with_one_name_are_refused(tmp_path, corpus):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "still.png").write_bytes((corpus / "still.png").read_bytes())
    with pytest.raises(ValueError, match="share the name 'still.png'"):
        list_sources([corpus / "still.png", tmp_path / "other"])


# The dataset --------------------------------------------------------------------------------------
def test_manifest_shards_and_rows(dataset, corpus, model):
    out, summary = dataset
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["model"]["kind"] == "fsq"
    assert manifest["coding"]["max_clip_frames"] == 12 and manifest["coding"]["context_blocks"] == 3
    assert manifest["coding"]["threshold"] == 0.12 and manifest["software"].startswith("elastictok ")
    assert [f["source"] for f in manifest["failures"]] == ["broken.mp4"]
    assert "broken.mp4" in manifest["failures"][0]["reason"] and "\n" not in manifest["failures"][0]["reason"]
    assert manifest["totals"] == {"rows": 4, "sources": 3, "frames": 21, "blocks": 7,
                                  "tokens": summary["tokens"], "failed": 1}
    assert [s["rows"] for s in manifest["shards"]] == [2, 2]  # clip.mp4's two clips stay together
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet"]  # nothing half-written left
    rows = {r["key"]: r for r in TokenDataset(out).rows()}
    assert sorted(rows) == ["clip.mp4#0", "clip.mp4#1", "still.png#0", "sub/noise.mp4#0"]
    a, b = rows["clip.mp4#0"], rows["clip.mp4#1"]
    assert (a["start_frame"], a["num_frames"], b["start_frame"], b["num_frames"]) == (0, 12, 12, 2)
    assert b["start_time"] == pytest.approx(1.5) and b["fps"] == pytest.approx(8.0) and b["keyframes"] == [True]
    assert a["keyframes"] == [True, False, True] and len(set(a["counts"])) > 1
    still = rows["still.png#0"]
    assert still["fps"] is None and (still["height"], still["width"], still["num_frames"]) == (32, 32, 1)
    for r in rows.values():
        assert len(r["tokens"]) == sum(r["counts"]) == r["total_tokens"] and len(r["mse"]) == r["num_blocks"]
        assert r["keyframes"][0] and max(r["tokens"]) < model.config.codebook_size


def test_pyarrow_and_hugging_face_datasets_read_the_shards(dataset, tmp_path, monkeypatch):
    out, _ = dataset
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pads = pytest.importorskip("pyarrow.dataset")
    table = pads.dataset(out / "data", format="parquet").to_table()
    assert table.num_rows == 4 and str(table.schema.field("tokens").type) == "list<element: uint16>"
    hf = pytest.importorskip("datasets")
    ds = hf.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                         cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 4 and set(ds.column_names) >= {"key", "tokens", "counts", "keyframes", "psnr"}
    row = next(r for r in ds if r["key"] == "clip.mp4#0")
    assert row["tokens"] == next(r for r in TokenDataset(out).rows() if r["key"] == "clip.mp4#0")["tokens"]


def test_row_tokens_are_what_encode_file_writes(dataset, corpus, model, tmp_path):
    out, _ = dataset
    ds = TokenDataset(out)
    etok = tmp_path / "still.etok"
    encode_file(model, Source.open(corpus / "still.png", model), etok, OPTIONS)
    assert_same_tokens(ds.tokens("still.png#0"), read_tokens(etok))
    assert torch.equal(ds.tokens("still.png#0").values, read_tokens(etok).values)  # zero padding too
    # A later clip is coded as a video of its own, from a keyframe.
    frames = list(Source.open(corpus / "clip.mp4", model).frames())
    whole = encode_adaptive(model, torch.stack(frames[12:], 1)[None], OPTIONS)
    got = ds.tokens("clip.mp4#1")
    assert_same_tokens(got, whole.tokens)
    assert torch.equal(model.decode(got), model.decode(whole.tokens))
    with pytest.raises(DatasetError, match="tokenized with model"):
        ds.check_model(tiny("tiny-fsq", seed=1))


def assert_same_tokens(a, b):
    """Equal counts, kept values and context (values past a block's count are padding)."""
    assert torch.equal(a.counts, b.counts) and [t.tolist() for t in a.to_list()] == [t.tolist() for t in b.to_list()]
    assert (a.kind, a.num_frames, a.frame_size, a.context_blocks, a.start_block) == (
        b.kind, b.num_frames, b.frame_size, b.context_blocks, b.start_block)
    assert (a.keyframes is None and b.keyframes is None) or torch.equal(a.keyframes, b.keyframes)


def test_detokenized_frames_equal_the_encoders_reconstruction(dataset, corpus, model):
    out, _ = dataset
    frames = list(Source.open(corpus / "clip.mp4", model).frames())
    first = encode_adaptive(model, torch.stack(frames[:12], 1)[None], OPTIONS)
    ds = TokenDataset(out)
    assert_same_tokens(ds.tokens("clip.mp4#0"), first.tokens)  # keyframes [T, F, T] included
    decoded = torch.stack(list(decode_row(model, ds, "clip.mp4#0")), 1)
    assert decoded.shape == (3, 12, 32, 32) and torch.equal(decoded, first.recon[0])


# Resume, appending, refusals -----------------------------------------------------------------------
def test_resume_after_an_interruption_gives_the_uninterrupted_rows(dataset, corpus, model, tmp_path, monkeypatch):
    full, _ = dataset
    out = tmp_path / "tokens"
    calls = []

    def code_then_stop(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1].name)
        return real(*args)

    real = engines.code_source
    monkeypatch.setattr(engines, "code_source", code_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_tokenize(model, [corpus], out, shard_rows=1)
    monkeypatch.undo()
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["totals"]["sources"] == 1 and partial["failures"][0]["source"] == "broken.mp4"
    # A run killed between renaming a shard and listing it, and one killed while writing.
    (out / "data" / "part-00007.parquet").write_bytes(b"unlisted")
    (out / "data" / ".part-00008.parquet.1234.tmp.parquet").write_bytes(b"half")
    summary = run_tokenize(model, [corpus], out, shard_rows=1)
    assert summary["skipped"] == 1 and summary["coded"] == 2 and summary["failed"] == 1
    assert sorted_rows(out) == sorted_rows(full)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet",
                                                                 "part-00002.parquet"]
    again = run_tokenize(model, [corpus], out)
    assert again["skipped"] == 3 and again["coded"] == 0 and sorted_rows(out) == sorted_rows(full)


def test_appending_new_sources_and_a_fixed_failure(tmp_path, corpus, model):
    out = tmp_path / "tokens"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((corpus / "still.png").read_bytes())
    (src / "b.png").write_bytes(b"broken")
    job = TokenizeJob(CodingOptions(num_tokens=20))
    first = run_tokenize(model, [src], out, job=job)
    assert first["manifest"]["totals"]["failed"] == 1
    (src / "b.png").write_bytes((corpus / "still.png").read_bytes())
    second = run_tokenize(model, [src], out, job=job)
    assert second["skipped"] == 1 and second["coded"] == 1
    assert second["manifest"]["failures"] == [] and second["manifest"]["totals"]["rows"] == 2


@pytest.mark.parametrize("change, words", [
    ({"model": 1}, "tokenized with model"),
    ({"job": TokenizeJob(CodingOptions(num_tokens=20), max_clip_frames=12)}, "other coding options"),
    ({"job": TokenizeJob(OPTIONS, max_clip_frames=4)}, "max_clip_frames 12 -> 4"),
])
def test_appending_with_another_model_or_options_is_refused(dataset, corpus, change, words):
    out, _ = dataset
    before = (out / "manifest.json").read_text()
    change = dict(change)
    model = tiny("tiny-fsq", seed=change.pop("model", 0))
    with pytest.raises(DatasetError, match=words) as err:
        run_tokenize(model, [corpus / "still.png"], out, **change)
    assert "\n" not in str(err.value) and (out / "manifest.json").read_text() == before


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path, corpus, model):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        run_tokenize(model, [corpus / "still.png"], tmp_path)


def test_two_runs_cannot_write_one_dataset_at_once(tmp_path, model):
    entry = model_entry(model, "f" * 64)
    with DatasetWriter(tmp_path / "d", entry, {}):
        with pytest.raises(DatasetError, match="being written by another tokenize run"):
            DatasetWriter(tmp_path / "d", entry, {})
    DatasetWriter(tmp_path / "d", entry, {}).close()  # free again once the first has finished


def test_bad_engine_settings_are_one_line_errors(tmp_path, corpus, model):
    with pytest.raises(ValueError, match="--engine"):
        run_tokenize(model, [corpus], tmp_path / "a", engine="spark")
    with pytest.raises(ValueError, match="--workers"):
        run_tokenize(model, [corpus], tmp_path / "a", engine="ray", workers=0)
    with pytest.raises(ValueError, match="need --engine ray"):
        run_tokenize(model, [corpus], tmp_path / "a", workers=2)
    with pytest.raises(ValueError, match="--max-clip-frames"):
        TokenizeJob(max_clip_frames=0)
    with pytest.raises(ValueError, match="--num-tokens"):
        run_tokenize(model, [corpus], tmp_path / "a", job=TokenizeJob(CodingOptions(num_tokens=10_000)))
    assert not (tmp_path / "a").exists()


# The CLI verbs -----------------------------------------------------------------------------------
def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_tokenize_and_detokenize(tmp_path, corpus, model_dir, capsys):
    out = tmp_path / "tokens"
    common = ["--model", model_dir, "--device", "cpu"]
    assert cli("tokenize", corpus / "clip.mp4", corpus / "still.png", "-o", out, "--num-tokens", "16",
               "--max-clip-frames", "8", "--no-progress", *common) == 0
    said = capsys.readouterr().out
    assert "2 sources coded (3 clips, 80 tokens)" in said and "holds 3 clips from 2 sources" in said
    assert cli("detokenize", out, "--key", "clip.mp4#0", "-o", tmp_path / "c.mp4", *common) == 0
    assert io.video_info(tmp_path / "c.mp4").frames == 8
    assert cli("detokenize", out, "--key", "still.png#0", "-o", tmp_path / "s.png", *common) == 0
    assert io.load_image(tmp_path / "s.png").shape == (3, 1, 32, 32)
    with pytest.raises(DatasetError, match="no row with key 'clip.mp4#7'.*clip.mp4#0"):
        cli("detokenize", out, "--key", "clip.mp4#7", "-o", tmp_path / "x.mp4", *common)
    with pytest.raises(ValueError, match="holds 8 frames"):
        cli("detokenize", out, "--key", "clip.mp4#0", "-o", tmp_path / "x.png", *common)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.mp4").exists()


def test_the_ray_engine_without_ray_installed_is_a_one_line_error(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray.data", None)  # what a missing package looks like to import
    assert cli("tokenize", corpus / "still.png", "-o", tmp_path / "t", "--engine", "ray", "--no-progress") == 2
    assert "pip install 'elastictok[ray]'" in capsys.readouterr().err and not (tmp_path / "t").exists()
