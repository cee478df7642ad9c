"""lateint: precomputed late-interaction image-text retrieval in JAX."""
