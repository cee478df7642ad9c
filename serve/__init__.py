"""Online serving (lateint.serve): Searcher, micro-batcher, HTTP app and binary, demo page."""

if __name__ != "lateint.serve":  # e.g. `import serve` from the repository root
    raise ImportError(f"{__name__!r}: this folder is the package lateint.serve; import that")
