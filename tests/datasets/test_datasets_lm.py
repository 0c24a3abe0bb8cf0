"""Token datasets as language-model sequences: the vocabulary, packing, and generated sequences back to Tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_datasets import OPTIONS, assert_same_tokens, write_corpus

from elastictok.coding.options import CodingOptions
from elastictok.datasets import (
    LMSequences,
    SequenceError,
    TokenDataset,
    TokenizeJob,
    Vocabulary,
    document_mask,
    sequence_to_tokens,
    tokenize,
)
from elastictok.files.coding import encode_file
from elastictok.files.source import Source
from elastictok.tokenfile.format import read_tokens
from helpers import tiny

V = 64000
VOCAB = Vocabulary(V)
BOC, EOC, BOB, BOK, PAD = V, V + 1, V + 2, V + 3, V + 4


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny("tiny-fsq")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("ds") / "tokens"
    tokenize(model, [corpus], out, TokenizeJob(OPTIONS, max_clip_frames=12), progress=False)
    return TokenDataset(out)


def test_the_vocabulary_layout():
    assert (VOCAB.boc, VOCAB.eoc, VOCAB.bob, VOCAB.bok, VOCAB.pad, VOCAB.size) == (BOC, EOC, BOB, BOK, PAD, V + 5)
    ids = VOCAB.clip_ids([2, 1, 3], np.array([5, 6, 7, 8, 9, 10]), [True, False, True])
    assert ids.tolist() == [BOC, BOK, 5, 6, BOB, 7, BOK, 8, 9, 10, EOC] and ids.dtype == np.uint16
    counts, tokens, keys = VOCAB.parse(list(ids) + [PAD, PAD])
    assert (counts, tokens.tolist(), keys) == ([2, 1, 3], [5, 6, 7, 8, 9, 10], [True, False, True])


def test_every_clip_round_trips_through_its_sequence(dataset, model):
    sequences = LMSequences(dataset)
    rows = list(dataset.rows())
    assert len(sequences) == len(rows) == 4
    for i, row in enumerate(rows):
        item = sequences[i]
        ids = item["input_ids"]
        assert len(ids) == 2 + row["num_blocks"] + row["total_tokens"] and (item["document_ids"] == i).all()
        back = sequence_to_tokens(ids, model.config, (row["height"], row["width"]), row["num_frames"],
                                  dataset.context_blocks)
        assert_same_tokens(back, dataset.tokens(row))
        assert torch.equal(model.decode(back), model.decode(dataset.tokens(row)))


def test_packing_keeps_every_id_and_marks_documents(dataset):
    clips = LMSequences(dataset)
    whole = torch.cat([clips[i]["input_ids"] for i in range(len(clips))])
    packed = LMSequences(dataset, seq_len=50)
    assert len(packed) == -(-len(whole) // 50)
    items = [packed[i] for i in range(len(packed))]
    ids = torch.cat([it["input_ids"] for it in items])
    docs = torch.cat([it["document_ids"] for it in items])
    pad = len(ids) - len(whole)
    assert torch.equal(ids[: len(whole)], whole) and (ids[len(whole):] == PAD).all() and (docs[len(whole):] == -1).all()
    assert torch.equal(docs[: len(whole)], torch.cat([clips[i]["document_ids"] for i in range(len(clips))]))
    positions = torch.cat([it["position_ids"] for it in items])[: len(whole)]
    assert torch.equal(positions, torch.cat([torch.arange(len(clips[i]["input_ids"])) for i in range(len(clips))]))
    assert pad < 50 and all(it["input_ids"].shape == (50,) for it in items)
    shuffled = LMSequences(dataset, seq_len=50, seed=3)
    assert sorted(shuffled.order.tolist()) == [0, 1, 2, 3] and len(shuffled) == len(packed)


def test_document_mask_is_causal_within_documents():
    mask = document_mask(torch.tensor([0, 0, 1, 1, -1]))
    assert mask.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, False, False, True],
    ]


@pytest.mark.parametrize("ids, words", [
    ([], "position 0: expected begin-of-clip"),
    ([BOK, 1, EOC], "position 0: expected begin-of-clip"),
    ([BOC, BOK, 1, 2], "no end-of-clip"),
    ([BOC, BOB, 1, EOC], "first block must begin with BOK"),
    ([BOC, 1, EOC], "position 1: expected a block marker"),
    ([BOC, EOC], "position 1: expected a block marker"),
    ([BOC, BOK, 1, BOB, EOC], "position 3: block 1 has no tokens"),
    ([BOC, BOK, 1, PAD, 2, EOC], "position 3: PAD"),
    ([BOC, BOK, 1, BOC, 2, EOC], "position 3: BOC"),
    ([BOC, BOK, V + 9, EOC], "position 2: id 64009"),
    ([BOC, BOK, -1, EOC], "position 2: id -1"),
    ([BOC, BOK, 1, EOC, 5], "position 4: id 5 after end-of-clip"),
    ([[BOC, BOK, 1, EOC]], "1-D sequence"),
    ([0.5, 1.5], "1-D sequence of integer ids"),
])
def test_malformed_sequences_are_refused(ids, words, model):
    with pytest.raises(SequenceError, match=words) as err:
        sequence_to_tokens(np.array(ids), model.config)
    assert "\n" not in str(err.value)


def test_sequences_that_do_not_fit_the_model_are_refused(model):
    too_long = [BOC, BOK, *range(65), EOC]  # 64 tokens per 32x32 block
    with pytest.raises(SequenceError, match="block 0 has 65 tokens"):
        sequence_to_tokens(too_long, model.config)
    with pytest.raises(SequenceError, match="not 9"):
        sequence_to_tokens([BOC, BOK, 1, EOC], model.config, num_frames=9)
    tokens = sequence_to_tokens(torch.tensor([BOC, BOK, 1, 2, BOB, 3, EOC]), model.config)
    assert tokens.counts.tolist() == [[2, 1]] and tokens.num_frames == 8 and tokens.keyframes is None
    assert tokens.context_blocks == model.config.context_window(None)


def test_vae_datasets_have_no_lm_vocabulary():
    with pytest.raises(ValueError, match="need discrete"):
        Vocabulary.for_config(tiny("tiny-vae").config)


def test_vae_rows_hold_float16_latents_as_etok_files_do(tmp_path):
    vae = tiny("tiny-vae")
    corpus = write_corpus(tmp_path / "corpus")
    options = CodingOptions(num_tokens=8)
    tokenize(vae, [corpus / "still.png"], tmp_path / "v", TokenizeJob(options), progress=False)
    ds = TokenDataset(tmp_path / "v")
    row = next(ds.rows())
    assert len(row["tokens"]) == 8 * vae.config.latent_dim
    assert str(next(ds.batches(["tokens"])).column("tokens").type) == "list<element: halffloat>"
    encode_file(vae, Source.open(corpus / "still.png", vae), tmp_path / "s.etok", options)
    etok = read_tokens(tmp_path / "s.etok")
    assert torch.equal(ds.tokens(row).values, etok.values) and torch.equal(vae.decode(ds.tokens(row)), vae.decode(etok))
