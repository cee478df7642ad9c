"""WordPiece tokenization from a HuggingFace BERT directory, padded to a few length buckets.

Fixed buckets keep the online path's shapes static (contract 5): a query is padded to the
smallest bucket that holds it, so each bucket is compiled once at start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import tokenizers

DEFAULT_BUCKETS = (16, 32, 64)


class WordPieceTokenizer:
    """Text -> ([B, T] int32 ids, [B, T] bool mask) with T a bucket length, or any length the
    caller asks for up to the model's positions.

    Sequences are `[CLS] tokens [SEP]`, truncated to the largest bucket, or to an explicit
    `length` above it (keeping `[SEP]`).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_positions: int | None = None,
    ):
        """max_positions: the model's position embeddings (None: unbounded); an explicit
        `length` above it is refused."""
        buckets = tuple(sorted(int(b) for b in buckets))
        if not buckets or buckets[0] < 3:
            raise ValueError(f"buckets must be non-empty lengths >= 3, got {buckets}")
        self.buckets = buckets
        self.max_length = buckets[-1]
        self.max_positions = max_positions
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # cut here, at the largest bucket or `length`
        self.pad_id = self._token_id("[PAD]")
        self.cls_id = self._token_id("[CLS]")
        self.sep_id = self._token_id("[SEP]")

    def _token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer vocabulary has no {token} token")
        return token_id

    @classmethod
    def from_directory(
        cls, directory: str, buckets: Sequence[int] = DEFAULT_BUCKETS
    ) -> WordPieceTokenizer:
        """Loads tokenizer.json if present, else builds WordPiece from vocab.txt; the model's
        positions come from config.json's max_position_embeddings when there is one."""
        tokenizer_json = os.path.join(directory, "tokenizer.json")
        vocab_txt = os.path.join(directory, "vocab.txt")
        if os.path.exists(tokenizer_json):
            tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
        elif os.path.exists(vocab_txt):
            lowercase = True
            config_path = os.path.join(directory, "tokenizer_config.json")
            if os.path.exists(config_path):
                with open(config_path) as f:
                    lowercase = bool(json.load(f).get("do_lower_case", True))
            tokenizer = tokenizers.BertWordPieceTokenizer(vocab_txt, lowercase=lowercase)
            tokenizer = tokenizer._tokenizer  # the underlying tokenizers.Tokenizer
        else:
            raise FileNotFoundError(
                f"{directory}: no tokenizer.json or vocab.txt (a HuggingFace BERT directory "
                "holds one of them)"
            )
        max_positions = None
        config_json = os.path.join(directory, "config.json")
        if os.path.exists(config_json):
            with open(config_json) as f:
                max_positions = json.load(f).get("max_position_embeddings")
        return cls(tokenizer, buckets, max_positions)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def bucket_for(self, length: int) -> int:
        """Smallest bucket >= length (lengths above the largest are truncated to it)."""
        for bucket in self.buckets:
            if length <= bucket:
                return bucket
        return self.max_length

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """[B] int: tokens of each text with [CLS] and [SEP], before any cut."""
        return np.array([len(e.ids) for e in self._tokenizer.encode_batch(list(texts))], np.int64)

    def encode(
        self, texts: Sequence[str], length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """texts: B strings. Returns (ids [B, T] int32, mask [B, T] bool).

        T is `length` if given (one of the buckets or larger, up to max_positions: texts are then
        cut at max(length, largest bucket) tokens), else the smallest bucket that holds the
        longest text (texts cut at the largest bucket). Raises ValueError for an empty batch,
        non-str items, texts with no tokens, a length beyond max_positions, or a length shorter
        than a text that the largest bucket would hold.
        """
        if length is not None and self.max_positions and length > self.max_positions:
            raise ValueError(
                f"length {length} exceeds the model's {self.max_positions} "
                "positions (max_position_embeddings)"
            )
        if isinstance(texts, str):
            raise ValueError("encode takes a sequence of strings, got a single str")
        texts = list(texts)
        if not texts:
            raise ValueError("encode got an empty batch of texts")
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {position} is {type(text).__name__}, expected str")
            if not text.strip():
                raise ValueError(f"text {position} is empty or whitespace only")
        encodings = self._tokenizer.encode_batch(texts)
        cut = self.max_length if length is None else max(int(length), self.max_length)
        lengths = [min(len(encoding.ids), cut) for encoding in encodings]
        for position, count in enumerate(lengths):
            if count <= 2:
                raise ValueError(f"text {position} ({texts[position][:40]!r}) has no tokens")
        width = length if length is not None else self.bucket_for(max(lengths))
        if width < min(max(lengths), self.max_length):
            raise ValueError(f"length {width} is shorter than the longest text ({max(lengths)})")
        ids = np.full((len(texts), width), self.pad_id, np.int32)
        for row, encoding in enumerate(encodings):
            token_ids = encoding.ids
            if len(token_ids) > cut:  # keep [SEP] last
                token_ids = token_ids[: cut - 1] + [self.sep_id]
            token_ids = token_ids[:width]
            if token_ids[-1] != self.sep_id:  # cut by a `length` below the largest bucket
                token_ids = token_ids[:-1] + [self.sep_id]
            ids[row, : len(token_ids)] = token_ids
        return ids, ids != self.pad_id
