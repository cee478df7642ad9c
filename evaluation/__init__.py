"""Offline measurement: the harness binary, distractor corpora, per-stage latency,
reports and plots (installed as lateint.evaluation)."""

if __name__ != "lateint.evaluation":  # e.g. `import evaluation` from the repository root
    raise ImportError(f"{__name__!r}: this folder is the package lateint.evaluation; import that")
