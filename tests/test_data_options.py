"""The shared data flags: parsing, the DataPath they produce, training's config."""

import pickle

import pytest
from absl import flags

from lateint.data import options
from lateint.train.configs import coco_precomp, scenes_minilm


def _flags(*argv):
    values = flags.FlagValues()
    options.define_flags(values)
    values(["binary", *argv])
    return values


def test_flags_give_a_path_carrying_the_options():
    values = _flags("--data=data/coco", "--data_sizes=s.pkl", "--data_dev_images=0")
    path = options.from_flags(values)
    assert path == "data/coco" and isinstance(path, str)
    assert path.options == {"sizes": "s.pkl", "dev_images": 0}
    assert options.cache_key(path) == {"data_options": {"sizes": "s.pkl", "dev_images": 0}}
    assert options.cache_key("data/coco") == {} and options.path_options("data/coco") == {}
    again = pickle.loads(pickle.dumps(path))
    assert again == path and again.options == path.options
    assert options.from_flags(_flags()) is None
    with pytest.raises(flags.IllegalFlagValueError):
        _flags("--data_captions_per_image=-1")


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match=r"data options: expected names among .*got \['size'\]"):
        options.DataPath("data/coco", size="s.pkl")


def test_training_config_takes_the_flags_and_records_them():
    config = scenes_minilm.get_config()
    config.lock()
    options.apply_to_config(config, _flags("--data=data/f30k", "--data_dev_images=0"))
    assert config.data.path == "data/f30k" and config.data.dev_images == 0
    path = options.from_config(config.data)
    assert path == "data/f30k" and path.options == {"dev_images": 0}
    untouched = coco_precomp.get_config()
    options.apply_to_config(untouched, _flags())
    assert options.from_config(untouched.data).options == {
        "captions_per_image": 5,
        "dev_images": 1000,
    }
