"""Contract 3: the packaged all-MiniLM-L6-v2 weights reproduce the reference hidden states."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES
from lateint.model import SplitEncoder
from lateint.pretrained import config_from_bert, default_minilm_directory, import_bert
from lateint.tokenizer import WordPieceTokenizer

REFERENCE = os.path.join(FIXTURES, "minilm_reference.npz")


@pytest.fixture(scope="module")
def bert_dir():
    return default_minilm_directory()


def test_parity_with_reference_hidden_states(bert_dir):
    reference = np.load(REFERENCE)
    sentences = [str(s) for s in reference["sentences"]]
    width = reference["input_ids"].shape[1]
    tokenizer = WordPieceTokenizer.from_directory(bert_dir)
    ids, mask = tokenizer.encode(sentences, length=width)
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"].astype(bool))

    config = config_from_bert(bert_dir, split_layer=6)  # the whole BERT is the text tower
    model = SplitEncoder(config)
    unused = import_bert(model, bert_dir)
    assert all(name.startswith("pooler.") for name in unused), unused
    hidden = np.asarray(model.encode_text(jnp.asarray(ids), jnp.asarray(mask)).activations)
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], reference["last_hidden_state"][real], atol=1e-4)


def test_split_import_places_layers(bert_dir):
    config = config_from_bert(
        bert_dir, split_layer=4, share_tower_weights=False, region_feature_dim=8
    )
    model = SplitEncoder(config)
    import_bert(model, bert_dir)
    tensors = load_file(os.path.join(bert_dir, "model.safetensors"))
    query = "encoder.layer.{}.attention.self.query.weight"
    np.testing.assert_array_equal(
        model.image_layers[3].attention.query.kernel[...], tensors[query.format(3)].T
    )
    np.testing.assert_array_equal(
        model.joint_layers[1].attention.query.kernel[...], tensors[query.format(5)].T
    )


def _copy_checkpoint(bert_dir, target, mutate_tensors=None, mutate_config=None):
    os.makedirs(target)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(os.path.join(bert_dir, name), target)
    tensors = load_file(os.path.join(bert_dir, "model.safetensors"))
    if mutate_tensors:
        mutate_tensors(tensors)
    save_file(tensors, os.path.join(target, "model.safetensors"))
    if mutate_config:
        path = os.path.join(target, "config.json")
        with open(path) as f:
            values = json.load(f)
        mutate_config(values)
        with open(path, "w") as f:
            json.dump(values, f)
    return str(target)


def test_missing_tensor_is_named(bert_dir, tmp_path):
    name = "encoder.layer.2.intermediate.dense.weight"
    target = _copy_checkpoint(bert_dir, tmp_path / "ckpt", lambda t: t.pop(name))
    model = SplitEncoder(config_from_bert(target, split_layer=3))
    with pytest.raises(KeyError, match=name):
        import_bert(model, target)


def test_wrong_shape_is_named(bert_dir, tmp_path):
    name = "encoder.layer.1.output.dense.weight"

    def shrink(tensors):
        tensors[name] = tensors[name][:, :100].copy()

    target = _copy_checkpoint(bert_dir, tmp_path / "ckpt", shrink)
    model = SplitEncoder(config_from_bert(target, split_layer=3))
    with pytest.raises(ValueError, match=r"output\.dense\.weight.*\(100, 384\).*\(1536, 384\)"):
        import_bert(model, target)


def test_unknown_architecture(bert_dir, tmp_path):
    def to_gpt(values):
        values["model_type"], values["architectures"] = "gpt2", ["GPT2Model"]

    target = _copy_checkpoint(bert_dir, tmp_path / "ckpt", mutate_config=to_gpt)
    with pytest.raises(ValueError, match="unknown architecture.*gpt2"):
        config_from_bert(target)


def test_vocab_txt_tokenizer_matches_tokenizer_json(bert_dir, tmp_path):
    target = _copy_checkpoint(bert_dir, tmp_path / "ckpt")  # vocab.txt only
    sentences = ["A giraffe left of a small 7.", "Two HORSES above the zebra!"]
    from_json = WordPieceTokenizer.from_directory(bert_dir).encode(sentences)
    from_vocab = WordPieceTokenizer.from_directory(target).encode(sentences)
    np.testing.assert_array_equal(from_json[0], from_vocab[0])


def test_tokenizer_buckets_truncation_and_errors(bert_dir):
    tokenizer = WordPieceTokenizer.from_directory(bert_dir, buckets=(8, 16))
    ids, mask = tokenizer.encode(["a cat"])
    assert ids.shape == (1, 8) and mask.sum() == 4
    ids, mask = tokenizer.encode(["word " * 40])
    assert ids.shape == (1, 16) and mask.all() and ids[0, -1] == tokenizer.sep_id
    for bad, message in [
        ([], "empty batch"),
        (["   "], "empty or whitespace"),
        ([b"bytes"], "expected str"),
        ("plain string", "single str"),
        ([None], "expected str"),
    ]:
        with pytest.raises(ValueError, match=message):
            tokenizer.encode(bad)


def test_an_explicit_length_above_the_largest_bucket_is_honoured(bert_dir):
    """A reference whose longest sentence has more tokens than the largest bucket (issue 13:
    71 of 64): encode at its width must keep every token, not cut at 64 and pad."""
    import tokenizers

    long_sentence = " ".join(["the small brown dog runs left of a big cat"] * 7)
    raw = tokenizers.Tokenizer.from_file(os.path.join(bert_dir, "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    expected = raw.encode(long_sentence).ids
    assert len(expected) == 72 and expected[-1] == raw.token_to_id("[SEP]")
    tokenizer = WordPieceTokenizer.from_directory(bert_dir)  # buckets 16, 32, 64
    ids, mask = tokenizer.encode(["a cat", long_sentence], length=80)
    assert ids.shape == (2, 80) and mask[1].sum() == 72
    np.testing.assert_array_equal(ids[1, :72], expected)
    ids, mask = tokenizer.encode([long_sentence])  # no length: cut at the largest bucket
    assert ids.shape == (1, 64) and ids[0, -1] == tokenizer.sep_id
    np.testing.assert_array_equal(ids[0, :63], expected[:63])
    with pytest.raises(ValueError, match="length 600 exceeds the model's 512 positions"):
        tokenizer.encode(["a cat"], length=600)
