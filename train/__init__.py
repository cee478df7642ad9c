"""Training (lateint.train): the absl binary, trainer, steps, batches, dev recall; configs/."""

if __name__ != "lateint.train":  # e.g. `import train` from the repository root
    raise ImportError(f"{__name__!r}: this folder is the package lateint.train; import that")
