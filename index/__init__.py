"""Offline side: the INDEX directory (activation store, manifest, storage modes), precompute and
first stages."""
