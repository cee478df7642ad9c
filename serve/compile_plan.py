"""Which shapes the online path compiles, and in which order (lateint.serve.compiled).

A shape is (function, key): ('text', (B, T)), ('maxsim', (B, T, n)) or ('joint', (B, T, K)).
A call runs on the cheapest compiled shape whose every dimension holds it, so at batch 1 the
largest shapes of the three functions hold every request (larger batches are cut into single
queries). Those, and the joint layers' shape of a default request (the shortest length bucket,
default K: padded to the largest it would cost ~15x its time, where the text tower and MaxSim
cost ~2x a millisecond), are compiled before the server reports ready. The rest follow batch
bucket by batch bucket, each batch's largest shapes first (the batch is usable once they are),
then a default request's shapes, then short queries and small counts first.
"""

from __future__ import annotations

import itertools

from lateint.serve.buckets import Buckets, bucket_for

FUNCTIONS = ("text", "maxsim", "joint")


def counts(buckets: Buckets, function: str) -> tuple[int, ...]:
    """The third dimension's buckets: n for 'maxsim', K for 'joint', none for 'text'."""
    return {"text": (), "maxsim": buckets.candidates, "joint": buckets.rerank}[function]


def largest(buckets: Buckets, function: str, batch: int) -> tuple[str, tuple[int, ...]]:
    """The shape of `function` at `batch` that holds every request of that batch size."""
    extent = counts(buckets, function)
    return function, (batch, buckets.max_length) + ((extent[-1],) if extent else ())


def every_shape(buckets: Buckets) -> list[tuple[str, tuple[int, ...]]]:
    """Every bucket combination: B x T text towers, B x T x n MaxSims, B x T x K joints."""
    shapes = []
    for batch, length in itertools.product(buckets.query_batches, buckets.query_lengths):
        for function in FUNCTIONS:
            extent = counts(buckets, function)
            shapes += [
                (function, (batch, length) + tail)
                for tail in ([(count,) for count in extent] if extent else [()])
            ]
    return shapes


def default_shape(buckets: Buckets, function: str, batch: int) -> tuple[str, tuple[int, ...]]:
    """The shape of `function` for `batch` default requests of the shortest length bucket."""
    count = {
        "text": (),
        "maxsim": (bucket_for(buckets.default_n, buckets.candidates, "n"),),
        "joint": (bucket_for(buckets.default_K, buckets.rerank, "K"),),
    }[function]
    return function, (batch, buckets.query_lengths[0]) + count


def first_shapes(buckets: Buckets) -> list[tuple[str, tuple[int, ...]]]:
    """What is compiled before a request is accepted: at batch 1 the largest shapes (they hold
    any request) and a default request's joint layers."""
    shapes = [
        largest(buckets, "joint", 1),
        default_shape(buckets, "joint", 1),
        largest(buckets, "text", 1),
        largest(buckets, "maxsim", 1),
    ]
    return list(dict.fromkeys(shapes))  # the longest compiles first: they overlap best


def later_shapes(buckets: Buckets) -> list[tuple[str, tuple[int, ...]]]:
    """The other shapes in compile order (see the module docstring)."""
    first = set(first_shapes(buckets))

    def priority(shape):
        function, key = shape
        return (
            key[0],
            shape != largest(buckets, function, key[0]),
            shape != default_shape(buckets, function, key[0]),
            key[1:],
            FUNCTIONS.index(function),
        )

    return sorted((shape for shape in every_shape(buckets) if shape not in first), key=priority)
