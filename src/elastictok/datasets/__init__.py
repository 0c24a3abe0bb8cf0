"""Whole datasets of images and videos as Parquet token shards, and back: tokenize, read, detokenize, train on.

``tokenize`` codes sources on one machine or a Ray cluster into ``DATASET/manifest.json`` and
``DATASET/data/part-NNNNN.parquet`` (one row per clip), resuming where a previous run stopped.
``TokenDataset`` reads it, ``TokenDataset.tokens(key)`` gives the :class:`~elastictok.Tokens` of a
row, ``detokenize`` decodes one to pixels, and ``LMSequences`` serves it to a language model.
The schema and the vocabulary are described in ``docs/datasets.md``.
"""

from elastictok.datasets.build import tokenize
from elastictok.datasets.job import TokenizeJob
from elastictok.datasets.lm import LMSequences, SequenceError, Vocabulary, document_mask, sequence_to_tokens
from elastictok.datasets.manifest import DatasetError
from elastictok.datasets.reader import TokenDataset, decode_row, detokenize, open_dataset
from elastictok.datasets.schema import RowError, row_tokens
from elastictok.datasets.sources import SourceRef, list_sources

__all__ = [
    "DatasetError", "LMSequences", "RowError", "SequenceError", "SourceRef", "TokenDataset", "TokenizeJob",
    "Vocabulary", "decode_row", "detokenize", "document_mask", "list_sources", "open_dataset", "row_tokens",
    "sequence_to_tokens", "tokenize",
]
