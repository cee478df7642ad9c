"""The loss and the jitted training step (pure functions over the nnx.split state).

Loss = w_g * contrastive(global) + w_c * contrastive(MaxSim)
     + w_j * listwise CE of the joint score over [positive, hardest MaxSim negatives],
so the joint layers learn to rerank the candidates the first stages will hand them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from lateint import scoring


def _contrastive(
    scores: jax.Array, loss_config, temperature: float, positives: jax.Array | None
) -> jax.Array:
    if loss_config.kind == "infonce":
        return scoring.info_nce(scores, temperature, positives)
    if loss_config.kind == "hinge":
        return scoring.max_violation_hinge(scores, loss_config.margin, positives)
    raise ValueError(f"loss.kind must be 'infonce' or 'hinge', got {loss_config.kind!r}")


def _text_negative_loss(model, positive, stored, image, batch, loss_config) -> dict:
    """Listwise CE over [caption b, its relational rewrites] against image b: the joint score
    must prefer the true caption to texts with the same words and another relation.
    positive: [B] joint scores of (caption b, image b); stored: [B, R, H'];
    batch: negative_token_ids / negative_token_mask [B, n, T], negative_valid [B, n]."""
    batch_size, count, length = batch["negative_token_ids"].shape
    negative = model.encode_text(
        batch["negative_token_ids"].reshape(-1, length),
        batch["negative_token_mask"].reshape(-1, length),
    )
    joint = model.joint_score(
        negative.activations,
        negative.mask,
        jnp.repeat(stored, count, axis=0),
        jnp.repeat(image.mask, count, axis=0),
    ).reshape(batch_size, count)
    valid = batch["negative_valid"].astype(bool)
    scores = jnp.concatenate([positive[:, None], joint], axis=1)  # [B, 1+n]
    rows = jnp.any(valid, axis=1)  # [B]
    logits = jnp.where(
        jnp.concatenate([jnp.ones_like(rows)[:, None], valid], axis=1),
        scores / loss_config.joint_temperature,
        -jnp.inf,
    )
    per_row = jax.nn.logsumexp(logits, axis=1) - logits[:, 0]
    loss = jnp.sum(jnp.where(rows, per_row, 0.0)) / jnp.maximum(jnp.sum(rows), 1)
    correct = jnp.all(jnp.where(valid, joint < positive[:, None], True), axis=1)
    accuracy = jnp.sum(correct & rows) / jnp.maximum(jnp.sum(rows), 1)
    return {"text_negative_loss": loss, "text_negative_accuracy": accuracy}


def compute_losses(model, batch: dict, loss_config: ml_collections.ConfigDict) -> dict:
    """batch: token_ids [B, T], token_mask [B, T], regions [B, R, F], boxes [B, R, 5],
    region_mask [B, R]; caption b describes image b. Optional: positives [B, B] bool (caption i
    is true of image j: kept out of every negative), and relational text negatives
    (negative_token_ids [B, n, T], negative_token_mask, negative_valid [B, n]).
    Returns scalar loss parts."""
    positives = batch.get("positives")
    text = model.encode_text(batch["token_ids"], batch["token_mask"])
    image = model.encode_image(batch["regions"], batch["boxes"], batch["region_mask"])
    global_scores = scoring.global_scores(text.global_vector, image.global_vector)  # [B, B]
    maxsim_scores = scoring.maxsim(text.concepts, text.mask, image.concepts, image.mask)  # [B, B]
    global_loss = _contrastive(
        global_scores, loss_config, loss_config.global_temperature, positives
    )
    maxsim_loss = _contrastive(
        maxsim_scores, loss_config, loss_config.maxsim_temperature, positives
    )

    batch_size = maxsim_scores.shape[0]
    negatives = scoring.mine_hard_negatives(
        maxsim_scores, loss_config.num_hard_negatives, positives
    )
    candidates = jnp.concatenate([jnp.arange(batch_size)[:, None], negatives], axis=1)
    per_query = candidates.shape[1]  # 1 + n
    stored = model.compress(image.activations)  # [B, R, H']
    flat = candidates.reshape(-1)
    joint = model.joint_score(
        text.activations,
        text.mask,
        stored[flat],
        image.mask[flat],
        text_index=jnp.repeat(jnp.arange(batch_size), per_query),
    ).reshape(batch_size, per_query)
    real = None if positives is None else ~jnp.take_along_axis(positives, negatives, axis=1)
    joint_loss = scoring.listwise_ce(joint, loss_config.joint_temperature, real)
    loss = (
        loss_config.global_weight * global_loss
        + loss_config.maxsim_weight * maxsim_loss
        + loss_config.joint_weight * joint_loss
    )
    parts = {
        "global_loss": global_loss,
        "maxsim_loss": maxsim_loss,
        "joint_loss": joint_loss,
        "joint_accuracy": jnp.mean(jnp.argmax(joint, axis=1) == 0),
    }
    if model.relation is not None:  # the stored activations must keep each region's box
        parts["box_loss"] = model.relation.box_loss(
            model.decompress(stored), image.mask, batch["boxes"]
        )
        loss = loss + loss_config.get("box_weight", 10.0) * parts["box_loss"]
    if "negative_token_ids" in batch:
        parts.update(_text_negative_loss(model, joint[:, 0], stored, image, batch, loss_config))
        loss = loss + loss_config.get("text_negative_weight", 1.0) * parts["text_negative_loss"]
    parts["loss"] = loss
    return parts


def make_optimizer(optimizer_config: ml_collections.ConfigDict, num_steps: int, frozen=None):
    """AdamW with linear warmup then cosine decay, after global-norm clipping. frozen: None or
    a pytree of bools like the params; True leaves are never updated (no decay either)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optimizer_config.learning_rate,
        warmup_steps=optimizer_config.warmup_steps,
        decay_steps=max(num_steps, optimizer_config.warmup_steps + 1),
        end_value=0.0,
    )
    adamw = optax.adamw(schedule, weight_decay=optimizer_config.weight_decay)
    if frozen is None:
        return optax.chain(
            optax.clip_by_global_norm(optimizer_config.grad_clip_norm), adamw
        ), schedule
    trainable = jax.tree.map(lambda leaf: not leaf, frozen)
    # Frozen gradients are zeroed first, so they neither count in the clipping norm nor reach
    # AdamW (whose decoupled weight decay would otherwise still move them).
    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen),
        optax.clip_by_global_norm(optimizer_config.grad_clip_norm),
        optax.masked(adamw, trainable),
    ), schedule


def make_train_step(graph, tx, loss_config):
    """Returns step(params, opt_state, batch) -> (params, opt_state, metrics), jitted with the
    state donated. Shardings follow the inputs: replicated state, batch split over 'data'."""

    def loss_fn(params, batch):
        parts = compute_losses(nnx.merge(graph, params), batch, loss_config)
        return parts["loss"], parts

    def step(params, opt_state, batch):
        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        parts["grad_norm"] = optax.tree.norm(grads)
        return params, opt_state, parts

    return jax.jit(step, donate_argnums=(0, 1))
