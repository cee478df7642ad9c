"""Benchmarks: each file a binary that prints JSON lines (python bench/<name>.py --help)."""
