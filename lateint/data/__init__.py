"""Data formats and the scenes benchmark.

Every reader returns one in-memory shape, `RegionCorpus` (see `lateint.data.corpus`):
`load_corpus(path, split)` detects the format (SCAN/VSE precomp or TERAN bottom-up features).
The built-in relational benchmark is written by `lateint.data.scenes` in the precomp layout.
"""

from lateint.data.corpus import RegionCorpus, load_corpus

__all__ = ["RegionCorpus", "load_corpus"]
