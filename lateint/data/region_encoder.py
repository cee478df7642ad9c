"""A frozen region encoder for the scenes benchmark, in the role of a bottom-up detector.

Real users feed the towers detector features (a CNN pretrained on object labels); the scenes
benchmark's raw 16 x 16 crops carry weak object evidence through one linear layer. This module
trains a small Flax NNX CNN on the *train split's* region crops only (labels: the sprite's class,
or "none" for a distractor region, and its size), then encodes every split with it; its
penultimate layer is what `{split}_ims.npy` holds.

    encoder, report = train_encoder(pixels [N, R, P], boxes [N, R, 5], counts [N], labels ...)
    features = encoder.encode(pixels, boxes)          # [N, R, D] float32
    encoder.save(directory); RegionEncoder.load(directory)

Deterministic: the same inputs and seed give bit-identical parameters and features on CPU.
Shapes: N images, R region slots, P = side * side pixels, D feature dim.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lateint import atomic
from lateint.data.sprites import CLASS_NAMES

log = logging.getLogger(__name__)
NONE_CLASS = len(CLASS_NAMES)  # label of distractor regions (no object)
PARAMS_FILE = "params.npz"
INFO_FILE = "encoder.json"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    side: int = 16  # crops are side x side
    channels: tuple = (32, 64)
    feature_dim: int = 128  # D
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 0
    # crops of each train-split sprite drawn alone, added to the scene regions
    # (lateint.data.sprite_renders): the scenes show only ~60% of the train sprites
    sprite_copies: int = 1


class _Network(nnx.Module):
    """Two conv blocks over the crop, then a dense layer that also sees the box's width, height
    and area (a detector knows its box size); heads for class (+ none) and size."""

    def __init__(self, config: EncoderConfig, rngs: nnx.Rngs):
        first, second = config.channels
        self.conv1 = nnx.Conv(1, first, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(first, second, (3, 3), rngs=rngs)
        flat = (config.side // 4) ** 2 * second
        self.dense = nnx.Linear(flat + 3, config.feature_dim, rngs=rngs)
        self.classes = nnx.Linear(config.feature_dim, NONE_CLASS + 1, rngs=rngs)
        self.sizes = nnx.Linear(config.feature_dim, 2, rngs=rngs)
        self.side = config.side

    def features(self, pixels: jax.Array, boxes: jax.Array) -> jax.Array:
        """pixels [B, P] in [0, 1], boxes [B, 5] -> [B, D] (ReLU features)."""
        x = pixels.reshape(-1, self.side, self.side, 1)
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), (2, 2))
        shape = (
            jnp.stack(
                [boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], jnp.sqrt(boxes[:, 4])],
                axis=-1,
            )
            * 4.0
        )
        return jax.nn.relu(self.dense(jnp.concatenate([x.reshape(x.shape[0], -1), shape], -1)))

    def __call__(self, pixels, boxes):
        """-> (class logits [B, 21], size logits [B, 2])."""
        h = self.features(pixels, boxes)
        return self.classes(h), self.sizes(h)


def region_labels(records: list, max_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """From scene layouts: class [N, R] (NONE_CLASS for distractors, -1 for padding) and size
    [N, R] (0 small, 1 large, -1 where no object)."""
    classes = np.full((len(records), max_regions), -1, np.int32)
    sizes = np.full((len(records), max_regions), -1, np.int32)
    for row, record in enumerate(records):
        for item in record["objects"]:
            classes[row, item["region"]] = CLASS_NAMES.index(item["class"])
            sizes[row, item["region"]] = ("small", "large").index(item["size"])
        for item in record["distractors"]:
            classes[row, item["region"]] = NONE_CLASS
    return classes, sizes


class RegionEncoder:
    """A trained network with encode/save/load; parameters are frozen."""

    def __init__(self, config: EncoderConfig, network: _Network, report: dict | None = None):
        self.config = config
        self.report = report or {}
        self._graph, self._params = nnx.split(network)
        self._features = jax.jit(lambda params, p, b: nnx.merge(self._graph, params).features(p, b))

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def fingerprint(self) -> str:
        """A digest of the parameters: two corpora share features only under the same one."""
        digest = hashlib.sha256()
        for path, value in nnx.to_flat_state(self._params):
            digest.update("/".join(map(str, path)).encode())
            digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
        return "cnn-" + digest.hexdigest()[:16]

    def network(self) -> _Network:
        return nnx.merge(self._graph, self._params)

    def encode(self, pixels: np.ndarray, boxes: np.ndarray, block: int = 4096) -> np.ndarray:
        """pixels [N, R, P], boxes [N, R, 5] -> features [N, R, D] float32 (padding slots are
        encoded too; their masks keep them out of every score)."""
        num, regions, _ = pixels.shape
        flat_pixels = np.asarray(pixels, np.float32).reshape(num * regions, -1)
        flat_boxes = np.asarray(boxes, np.float32).reshape(num * regions, 5)
        out = np.empty((num * regions, self.feature_dim), np.float32)
        for start in range(0, num * regions, block):
            stop = min(start + block, num * regions)
            pad = ((0, block - (stop - start)), (0, 0))  # one fixed shape: one compile
            out[start:stop] = np.asarray(
                self._features(
                    self._params,
                    np.pad(flat_pixels[start:stop], pad),
                    np.pad(flat_boxes[start:stop], pad),
                )
            )[: stop - start]
        return out.reshape(num, regions, self.feature_dim)

    def save(self, directory: str) -> None:
        """Parameters and config+report in `directory`; the training time is left out, so the
        same inputs give byte-identical files."""
        os.makedirs(directory, exist_ok=True)
        leaves = {
            "/".join(map(str, path)): np.asarray(value)
            for path, value in nnx.to_flat_state(self._params)
        }
        np.savez(os.path.join(directory, PARAMS_FILE + ".partial.npz"), **leaves)
        os.replace(
            os.path.join(directory, PARAMS_FILE + ".partial.npz"),
            os.path.join(directory, PARAMS_FILE),
        )
        report = {key: value for key, value in self.report.items() if key != "train_seconds"}
        info = {"config": dataclasses.asdict(self.config), "report": report}
        atomic.write_json(os.path.join(directory, INFO_FILE), info, indent=2)

    @classmethod
    def load(cls, directory: str) -> RegionEncoder:
        info_path = os.path.join(directory, INFO_FILE)
        if not os.path.exists(info_path):
            raise FileNotFoundError(f"{info_path}: missing (no region encoder was saved here)")
        with open(info_path, encoding="utf-8") as file:
            info = json.load(file)
        values = dict(info["config"])
        values["channels"] = tuple(values["channels"])
        values.setdefault("sprite_copies", 0)  # saved before the field existed: scene crops only
        config = EncoderConfig(**values)
        network = _Network(config, nnx.Rngs(config.seed))
        graph, params = nnx.split(network)
        stored = np.load(os.path.join(directory, PARAMS_FILE))
        flat = []
        for path, value in nnx.to_flat_state(params):
            key = "/".join(map(str, path))
            if key not in stored or stored[key].shape != value.shape:
                raise ValueError(
                    f"{directory}/{PARAMS_FILE}: parameter {key}: expected shape "
                    f"{value.shape}, got "
                    f"{stored[key].shape if key in stored else 'nothing'}"
                )
            flat.append((path, jnp.asarray(stored[key])))
        params = nnx.from_flat_state(flat)
        return cls(config, nnx.merge(graph, params), info.get("report"))


def _batches(count: int, config: EncoderConfig):
    rng = np.random.default_rng(config.seed)
    order = np.empty(0, np.int64)
    for _ in range(config.steps):
        if order.size < config.batch_size:
            order = np.concatenate([order, rng.permutation(count)])
        yield order[: config.batch_size]
        order = order[config.batch_size :]


def train_encoder(
    pixels: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    sizes: np.ndarray,
    config: EncoderConfig = EncoderConfig(),
    held_out: float = 0.1,
    extra: tuple | None = None,
) -> RegionEncoder:
    """Trains on the real regions of the train split. pixels [N, R, P], boxes [N, R, 5],
    classes/sizes [N, R] from `region_labels` (-1 = padding). The last `held_out` of the
    images are kept out of training to report accuracy (the report is saved with the encoder).
    extra: more training-only crops (pixels [n, P], boxes [n, 5], classes [n], sizes [n]),
    e.g. lateint.data.sprite_renders.isolated_crops; never held out.
    """
    keep = classes.reshape(-1) >= 0
    flat_pixels = np.asarray(pixels, np.float32).reshape(-1, pixels.shape[-1])[keep]
    flat_boxes = np.asarray(boxes, np.float32).reshape(-1, 5)[keep]
    flat_classes, flat_sizes = classes.reshape(-1)[keep], sizes.reshape(-1)[keep]
    image_of = np.repeat(np.arange(classes.shape[0]), classes.shape[1])[keep]
    held = image_of >= int(round(classes.shape[0] * (1.0 - held_out)))
    scene_rows = int((~held).sum())
    if extra is not None:
        extra_pixels, extra_boxes, extra_classes, extra_sizes = extra
        if extra_pixels.shape[-1] != flat_pixels.shape[-1]:
            raise ValueError(
                f"extra crops: expected {flat_pixels.shape[-1]} pixels each, got "
                f"{extra_pixels.shape[-1]}"
            )
        flat_pixels = np.concatenate([flat_pixels, np.asarray(extra_pixels, np.float32)])
        flat_boxes = np.concatenate([flat_boxes, np.asarray(extra_boxes, np.float32)])
        flat_classes = np.concatenate([flat_classes, extra_classes])
        flat_sizes = np.concatenate([flat_sizes, extra_sizes])
        held = np.concatenate([held, np.zeros(len(extra_classes), bool)])
    train_rows = np.flatnonzero(~held)
    network = _Network(config, nnx.Rngs(config.seed))
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
    optimizer = nnx.Optimizer(network, optax.adam(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(network, optimizer, pixels, boxes, labels, size_labels):
        def loss_fn(network):
            class_logits, size_logits = network(pixels, boxes)
            class_loss = optax.softmax_cross_entropy_with_integer_labels(class_logits, labels)
            has_size = size_labels >= 0
            size_loss = optax.softmax_cross_entropy_with_integer_labels(
                size_logits, jnp.maximum(size_labels, 0)
            )
            return class_loss.mean() + jnp.sum(size_loss * has_size) / jnp.maximum(
                has_size.sum(), 1
            )

        loss, grads = nnx.value_and_grad(loss_fn)(network)
        optimizer.update(network, grads)
        return loss

    began = time.perf_counter()
    for index, batch in enumerate(_batches(train_rows.size, config)):
        rows = train_rows[batch]
        loss = step(
            network,
            optimizer,
            flat_pixels[rows],
            flat_boxes[rows],
            flat_classes[rows],
            flat_sizes[rows],
        )
        if (index + 1) % 200 == 0:
            log.info(
                "region encoder: step %d/%d, loss %.3f, %.0f steps/s",
                index + 1,
                config.steps,
                float(loss),
                (index + 1) / (time.perf_counter() - began),
            )
    seconds = time.perf_counter() - began
    encoder = RegionEncoder(config, network)
    report = {
        "train_seconds": round(seconds, 1),
        "train_regions": scene_rows,
        "sprite_crops": int(train_rows.size - scene_rows),
    }
    if held.any():
        class_logits, size_logits = jax.jit(lambda p, b: network(p, b))(
            flat_pixels[held], flat_boxes[held]
        )
        report["held_out_regions"] = int(held.sum())
        report["held_out_class_accuracy"] = float(
            np.mean(np.argmax(class_logits, -1) == flat_classes[held])
        )
        objects = flat_sizes[held] >= 0
        report["held_out_size_accuracy"] = float(
            np.mean(np.argmax(size_logits, -1)[objects] == flat_sizes[held][objects])
        )
    encoder.report = report
    return encoder
