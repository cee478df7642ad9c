"""train_and_evaluate(config, workdir): the training loop with Orbax resume and dev recall."""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lateint import atomic, checkpoint, pretrained
from lateint.config import ModelConfig
from lateint.data import options as data_options
from lateint.data import scenes
from lateint.data.corpus import load_corpus
from lateint.fingerprint import model_fingerprint
from lateint.inference import Inference
from lateint.model import SplitEncoder
from lateint.progress import Progress, format_seconds
from lateint.tokenizer import WordPieceTokenizer
from lateint.train import dev_recall, steps
from lateint.train.data import CaptionSemantics, TrainBatches
from lateint.train.writer import MetricWriter


def resolve_pretrained(name: str) -> str:
    """'' -> '' (random init), 'minilm' -> the packaged MiniLM, else a directory."""
    if name == "minilm":
        return pretrained.default_minilm_directory()
    if name and not os.path.isdir(name):
        raise FileNotFoundError(
            f"config.pretrained={name!r}: not a directory holding a "
            "HuggingFace BERT checkpoint (config.json, model.safetensors)"
        )
    return name


def build_model_config(config: ml_collections.ConfigDict, bert_dir: str, corpus) -> ModelConfig:
    """Sizes from the pretrained checkpoint (if any), the data, then config.model."""
    overrides = dict(config.model.to_dict())
    overrides.update(
        region_feature_dim=corpus.feature_dim,
        max_regions=corpus.max_regions,
        max_text_length=config.text_length,
    )
    if bert_dir:
        return pretrained.config_from_bert(bert_dir, **overrides)
    return ModelConfig(**overrides)


def _check_same_model(workdir: str, model_config: ModelConfig) -> None:
    path = os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE)
    if os.path.exists(path):
        existing = checkpoint.read_model_config(workdir)
        if existing != model_config:
            raise ValueError(
                f"{path} describes a different model than this config; use a new "
                f"--workdir. existing: {existing.to_dict()} new: "
                f"{model_config.to_dict()}"
            )


def _tokenizer(bert_dir: str, text_length: int) -> WordPieceTokenizer:
    vocabulary_dir = bert_dir or pretrained.default_minilm_directory()
    return WordPieceTokenizer.from_directory(vocabulary_dir, buckets=(text_length,))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from WORKDIR's latest checkpoint), evaluates on dev every
    config.eval_every steps and at the end. Returns the final dev recall results."""
    logging.info("devices: %s", jax.devices())
    os.makedirs(workdir, exist_ok=True)
    bert_dir = resolve_pretrained(config.pretrained)
    data = data_options.from_config(config.data)  # config.data.path + its reader options
    train_corpus = load_corpus(data, config.data.train_split)
    dev_corpus = dev_recall.subset(load_corpus(data, config.data.dev_split), config.eval_images)
    dev_records = None
    if config.data.get("semantics", False):
        dev_records = scenes.read_records(
            config.data.path, config.data.dev_split, dev_corpus.image_ids
        )
    model_config = build_model_config(config, bert_dir, train_corpus)
    _check_same_model(workdir, model_config)
    tokenizer = _tokenizer(bert_dir, config.text_length)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {tokenizer.vocab_size} exceeds the model's "
            f"vocab_size {model_config.vocab_size}"
        )

    model = SplitEncoder(model_config, nnx.Rngs(config.seed))
    if bert_dir:
        unused = pretrained.import_bert(model, bert_dir)
        logging.info("initialised from %s (unused tensors: %d)", bert_dir, len(unused))
    word_embeddings = config.get("word_embeddings", "")
    if word_embeddings:
        found = pretrained.import_word_embeddings(model, resolve_pretrained(word_embeddings))
        logging.info(
            "word embeddings: PCA of %s to H=%d (%.1f%% of the variance)",
            word_embeddings,
            model_config.hidden_size,
            100 * found["explained_variance"],
        )
    graph, params = nnx.split(model)
    frozen = None
    if config.get("freeze_word_embeddings", False):
        frozen = jax.tree_util.tree_map_with_path(
            lambda path, _: (
                "text_embeddings/word" in "/".join(str(getattr(key, "key", key)) for key in path)
            ),
            params,
        )
    tx, schedule = steps.make_optimizer(config.optimizer, config.num_steps, frozen)
    opt_state = tx.init(params)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    if config.batch_size % mesh.size:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the "
            f"{mesh.size} devices of the data mesh"
        )

    store = checkpoint.CheckpointStore(workdir, max_to_keep=config.keep_checkpoints)
    start_step = store.latest_step() or 0
    if start_step:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            (params, opt_state),
        )
        params, opt_state, meta = store.restore(start_step, *abstract)
        logging.info("resumed from step %d (fingerprint %s)", start_step, meta.get("fingerprint"))
    else:
        checkpoint.write_model_config(workdir, model_config)
        atomic.write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2))
    params, opt_state = jax.device_put((params, opt_state), replicated)

    groups = None
    if config.data.group_batches:
        groups = scenes.read_groups(
            config.data.path, config.data.train_split, train_corpus.image_ids
        )
    caption_semantics = None
    if config.data.get("semantics", False):
        began = time.perf_counter()
        caption_semantics = CaptionSemantics(
            train_corpus,
            scenes.read_records(config.data.path, config.data.train_split, train_corpus.image_ids),
            config.loss.get("text_negatives", 0),
            config.seed,
            config.data.get("paraphrases", 0),
            config.data.get("attribute_negatives", 0),
        )
        logging.info(
            "caption semantics: %d captions parsed, %d rewrites in %.1f s",
            train_corpus.num_captions,
            sum(len(texts) for texts in caption_semantics.negatives),
            time.perf_counter() - began,
        )
    batches = TrainBatches(
        train_corpus,
        tokenizer,
        config.text_length,
        config.batch_size,
        config.seed,
        groups,
        caption_semantics,
        config.loss.get("text_negatives", 0),
        config.data.get("paraphrase_prob", 0.0),
    )
    train_step = steps.make_train_step(graph, tx, config.loss)
    writer = MetricWriter(workdir, resume_step=start_step)
    progress = Progress(config.num_steps, start_step, "steps", config.batch_size, "examples")
    results = {}

    def save(step):
        fingerprint = model_fingerprint(nnx.merge(graph, params))
        store.save(step, params, opt_state, {"step": step, "fingerprint": fingerprint})

    def run_eval(step):
        started = time.perf_counter()
        inference = Inference(nnx.merge(graph, jax.device_get(params)))
        found = dev_recall.dev_recall(
            inference,
            dev_corpus,
            tokenizer,
            config.text_length,
            config.rerank_k,
            records=dev_records,
        )
        writer.write(
            step,
            {
                f"dev/{scorer}/{key}": value
                for scorer, summary in found.items()
                for key, value in summary.items()
            },
        )
        logging.info(
            "dev recall at step %d (%d images, %.1fs):\n%s",
            step,
            dev_corpus.num_images,
            time.perf_counter() - started,
            dev_recall.format_table(found),
        )
        return found

    for step in range(start_step, config.num_steps):
        batch = jax.device_put(batches.batch(step), batch_sharding)
        params, opt_state, parts = train_step(params, opt_state, batch)
        done = step + 1
        loss = float(parts["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {done} (parts: "
                f"{ {k: float(v) for k, v in parts.items()} }); lower optimizer.learning_rate or "
                f"check the data for NaN features. Last checkpoint: {store.latest_step()}"
            )
        if done % config.log_every == 0 or done == config.num_steps:
            scalars = {k: float(v) for k, v in parts.items()}
            scalars.update(
                learning_rate=float(schedule(step)),
                steps_per_second=progress.rate(done),
                examples_per_second=progress.rate(done) * config.batch_size,
            )
            writer.write(done, scalars)
            progress.log(
                done,
                f"loss {loss:.4f} joint_acc {scalars['joint_accuracy']:.2f}"
                + (
                    f" text_neg_acc {scalars['text_negative_accuracy']:.2f}"
                    if "text_negative_accuracy" in scalars
                    else ""
                ),
            )
        if done % config.checkpoint_every == 0 or done == config.num_steps:
            save(done)
        if done % config.eval_every == 0 and done != config.num_steps:
            run_eval(done)

    store.wait()
    results = run_eval(config.num_steps)
    if jax.process_index() == 0:
        atomic.write_json(
            os.path.join(workdir, "dev_recall.json"),  # marks training done
            {"step": config.num_steps, "results": results},
            indent=2,
        )
    store.close()
    writer.close()
    logging.info(
        "trained %d steps in %s; dev rsum global %.1f / maxsim %.1f / rerank %.1f",
        config.num_steps - start_step,
        format_seconds(progress.elapsed),
        results["global"]["rsum"],
        results["maxsim"]["rsum"],
        results["rerank"]["rsum"],
    )
    return results
