"""Offline side: the INDEX directory (activation store, manifest, storage modes), precompute and
first stages."""

if __name__ != "lateint.index":  # e.g. `import index` from the repository root
    raise ImportError(f"{__name__!r}: this folder is the package lateint.index; import that")
