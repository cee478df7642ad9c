"""Benchmark: what precomputation saves. Prints one JSON object.

Measures, in one run and on the same MiniLM-sized model:
  * text tower (layers 0..l-1) for one query,
  * joint layers (l..L-1) for K candidates from stored activations, the query's text-only
    parts run once (joint_score(text_index=), as the server does),
  * the same joint scores with the query's rows repeated per candidate (the baseline: every
    text-only part, e.g. the relation head's [T, T] claims, runs K times),
  * the same K pairs scored by the full L-layer fused forward (the cross-encoder),
and reports speedup = full / (text tower + joint); the ideal is about L / (L - l).

  python bench/encoder.py --split_layer=4 --num_candidates=100
  python bench/encoder.py --num_layers=4 --split_layer=2 --hidden_size=128 --num_heads=4 \
      --mlp_dim=256 --regions=8 --feature_dim=64 --text_length=32 --num_candidates=32 \
      --relation_head --count_head          # the scenes model's shapes
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from lateint.config import ModelConfig  # noqa: E402
from lateint.model import SplitEncoder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_layers", 6, "L")
flags.DEFINE_integer("split_layer", 4, "l")
flags.DEFINE_integer("num_candidates", 100, "K")
flags.DEFINE_integer("text_length", 16, "query tokens T")
flags.DEFINE_integer("regions", 36, "regions per image R")
flags.DEFINE_integer("feature_dim", 2048, "region feature dim F")
flags.DEFINE_integer("hidden_size", 384, "H")
flags.DEFINE_integer("num_heads", 12, "attention heads")
flags.DEFINE_integer("mlp_dim", 1536, "MLP width")
flags.DEFINE_bool("relation_head", False, "the relation head in the joint score")
flags.DEFINE_bool("count_head", False, "the count head in the joint score")
flags.DEFINE_integer("repeats", 10, "timed calls per measurement (median reported)")


def _median_ms(function, *args, repeats: int) -> float:
    jax.block_until_ready(function(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    # Shared tower weights: the fused forward is then exactly L layers over [T + R] tokens, the
    # cost of a cross-encoder (with separate towers it would run both towers everywhere).
    config = ModelConfig(
        num_layers=FLAGS.num_layers,
        split_layer=FLAGS.split_layer,
        region_feature_dim=FLAGS.feature_dim,
        max_regions=FLAGS.regions,
        share_tower_weights=True,
        hidden_size=FLAGS.hidden_size,
        num_heads=FLAGS.num_heads,
        mlp_dim=FLAGS.mlp_dim,
        relation_head=FLAGS.relation_head,
        count_head=FLAGS.count_head,
    )
    model = SplitEncoder(config, nnx.Rngs(0))
    for head in (model.relation, model.count):  # their claim layers start at zero
        if head is not None:
            head.claim.kernel[...] = jax.random.normal(jax.random.key(1), head.claim.kernel.shape)
    graph, state = nnx.split(model)
    rng = np.random.default_rng(0)
    k, t, r = FLAGS.num_candidates, FLAGS.text_length, FLAGS.regions
    token_ids = jnp.asarray(rng.integers(1000, 5000, (1, t)), jnp.int32)
    token_mask = jnp.ones((1, t), bool)
    regions = jnp.asarray(rng.normal(size=(k, r, FLAGS.feature_dim)), jnp.float32)
    boxes = jnp.asarray(rng.uniform(size=(k, r, 5)), jnp.float32)
    region_mask = jnp.ones((k, r), bool)

    @jax.jit
    def text_tower(state, ids, mask):
        return nnx.merge(graph, state).encode_text(ids, mask).activations

    @jax.jit
    def joint(state, text_acts, text_mask, stored, image_mask):
        count = stored.shape[0]
        return nnx.merge(graph, state).joint_score(
            text_acts, text_mask, stored, image_mask, text_index=jnp.zeros(count, jnp.int32)
        )

    @jax.jit
    def joint_repeated(state, text_acts, text_mask, stored, image_mask):
        model = nnx.merge(graph, state)
        count = stored.shape[0]
        return model.joint_score(
            jnp.broadcast_to(text_acts, (count,) + text_acts.shape[1:]),
            jnp.broadcast_to(text_mask, (count, text_mask.shape[1])),
            stored,
            image_mask,
        )

    @jax.jit
    def full(state, ids, mask, regions, boxes, region_mask):
        count = regions.shape[0]
        return nnx.merge(graph, state).fused_score(
            jnp.broadcast_to(ids, (count, ids.shape[1])),
            jnp.broadcast_to(mask, (count, mask.shape[1])),
            regions,
            boxes,
            region_mask,
        )

    stored = model.compress(model.encode_image(regions, boxes, region_mask).activations)
    text_acts = text_tower(state, token_ids, token_mask)
    repeats = FLAGS.repeats
    text_ms = _median_ms(text_tower, state, token_ids, token_mask, repeats=repeats)
    joint_args = (state, text_acts, token_mask, stored, region_mask)
    np.testing.assert_allclose(
        joint(*joint_args), joint_repeated(*joint_args), rtol=1e-4, atol=1e-4
    )
    joint_ms = _median_ms(joint, *joint_args, repeats=repeats)
    repeated_ms = _median_ms(joint_repeated, *joint_args, repeats=repeats)
    full_ms = _median_ms(
        full, state, token_ids, token_mask, regions, boxes, region_mask, repeats=repeats
    )
    layers, split = config.num_layers, config.split_layer
    print(
        json.dumps(
            {
                "bench": "encoder",
                "devices": [str(d) for d in jax.devices()],
                "config": {
                    "L": layers,
                    "l": split,
                    "K": k,
                    "T": t,
                    "R": r,
                    "H": config.hidden_size,
                    "relation_head": config.relation_head,
                    "count_head": config.count_head,
                },
                "text_tower_ms": round(text_ms, 3),
                "joint_ms": round(joint_ms, 3),
                "joint_repeated_text_ms": round(repeated_ms, 3),
                "shared_text_speedup": round(repeated_ms / joint_ms, 3),
                "full_forward_ms": round(full_ms, 3),
                "speedup_full_over_split": round(full_ms / (text_ms + joint_ms), 3),
                "ideal_speedup": round(layers / max(layers - split, 1e-9), 3)
                if split < layers
                else None,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
