"""WordPiece tokenization from a HuggingFace BERT directory, padded to a few length buckets.

Fixed buckets keep the online path's shapes static (contract 5): a query is padded to the
smallest bucket that holds it, so each bucket is compiled once at start-up.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tokenizers

DEFAULT_BUCKETS = (16, 32, 64)


class WordPieceTokenizer:
    """Text -> ([B, T] int32 ids, [B, T] bool mask) with T a bucket length.

    Sequences are `[CLS] tokens [SEP]`, truncated to the largest bucket (keeping `[SEP]`).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, buckets: Sequence[int] = DEFAULT_BUCKETS):
        buckets = tuple(sorted(int(b) for b in buckets))
        if not buckets or buckets[0] < 3:
            raise ValueError(f"buckets must be non-empty lengths >= 3, got {buckets}")
        self.buckets = buckets
        self.max_length = buckets[-1]
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = self._token_id("[PAD]")
        self.cls_id = self._token_id("[CLS]")
        self.sep_id = self._token_id("[SEP]")

    def _token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer vocabulary has no {token} token")
        return token_id

    @classmethod
    def from_directory(cls, directory: str,
                       buckets: Sequence[int] = DEFAULT_BUCKETS) -> "WordPieceTokenizer":
        """Loads tokenizer.json if present, else builds WordPiece from vocab.txt."""
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
                "holds one of them)")
        return cls(tokenizer, buckets)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def bucket_for(self, length: int) -> int:
        """Smallest bucket >= length (lengths above the largest are truncated to it)."""
        for bucket in self.buckets:
            if length <= bucket:
                return bucket
        return self.max_length

    def encode(self, texts: Sequence[str], length: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """texts: B strings. Returns (ids [B, T] int32, mask [B, T] bool).

        T is `length` if given (one of the buckets or larger), else the smallest bucket that
        holds the longest text. Raises ValueError for an empty batch, non-str items, or texts
        with no tokens.
        """
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
        lengths = [len(encoding.ids) for encoding in encodings]
        for position, count in enumerate(lengths):
            if count <= 2:
                raise ValueError(f"text {position} ({texts[position][:40]!r}) has no tokens")
        width = length if length is not None else self.bucket_for(max(lengths))
        if width < min(max(lengths), self.max_length):
            raise ValueError(f"length {width} is shorter than the longest text ({max(lengths)})")
        ids = np.full((len(texts), width), self.pad_id, np.int32)
        for row, encoding in enumerate(encodings):
            token_ids = encoding.ids[:width]
            if token_ids[-1] != self.sep_id:  # truncated by `length`: keep [SEP] last
                token_ids = token_ids[:-1] + [self.sep_id]
            ids[row, :len(token_ids)] = token_ids
        return ids, ids != self.pad_id
