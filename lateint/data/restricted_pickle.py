"""Loads pickles that may only hold NumPy arrays and plain containers, never arbitrary objects.

`pickle.load` runs whatever callables a file names. The animal silhouettes ship as gzip pickles
(made by `pickle.dump(ndarray)`), and TERAN's Flickr `sizes.pkl` is a pickled list of tuples. This
unpickler resolves only the three globals that rebuild an ndarray (`_reconstruct`, `ndarray`,
`dtype`) — or none at all — and refuses everything else before it can run.
"""

import gzip
import pickle

import numpy as np

# The callable numpy itself pickles ndarrays with; numpy 1.x names it numpy.core.multiarray and
# numpy 2.x numpy._core.multiarray, so take it from a live array instead of importing either.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]

_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` only returns allowlisted globals."""

    def __init__(self, file, source: str, allow_arrays: bool):
        super().__init__(file)
        self._source = source
        self._allowed = _ARRAY_GLOBALS if allow_arrays else {}

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            allowed = sorted(f"{m}.{n}" for m, n in self._allowed) or ["none"]
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load global {module}.{name}; "
                f"allowed: {', '.join(allowed)}"
            )
        return found


def load_restricted(path: str, allow_arrays: bool = True):
    """Unpickles `path` (gzip if it ends in .gz) allowing only ndarray reconstruction.

    With allow_arrays=False no global at all may be named: only lists, tuples, dicts, strings and
    numbers load. Object-dtype arrays are refused, since their items would be arbitrary objects.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as file:
        value = RestrictedUnpickler(file, path, allow_arrays).load()
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise pickle.UnpicklingError(f"{path}: refusing an object-dtype array")
    return value
