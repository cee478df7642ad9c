"""Model fingerprint: a hash of everything that determines what the index stores.

An INDEX is only valid for the image side that wrote it: the region embeddings, the image tower
(or the shared tower), the image concept head, the compressor's down-projection, and the model
config. Serving compares the fingerprint in `manifest.json` with the loaded checkpoint's.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flax import nnx


def _image_side_modules(model) -> dict:
    modules = {
        "region_embeddings": model.region_embeddings,
        "image_tower": model.image_tower_layers,
        "image_concepts": model.image_concepts,
    }
    if model.compressor is not None:
        modules["compressor_down"] = model.compressor.down
    return modules


def model_fingerprint(model) -> str:
    """Returns a 16-hex-digit sha256 prefix over the config and the image-side parameters."""
    digest = hashlib.sha256(model.config.fingerprint_json().encode())
    for name, module in _image_side_modules(model).items():
        state = nnx.state(module, nnx.Param)
        for path, leaf in sorted(nnx.to_flat_state(state), key=lambda item: str(item[0])):
            array = np.ascontiguousarray(
                np.asarray(leaf.get_value() if hasattr(leaf, "get_value") else leaf)
            )
            digest.update(f"{name}/{'/'.join(map(str, path))}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]
