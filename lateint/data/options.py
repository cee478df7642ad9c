"""The one set of data options every binary takes: where a corpus is and how to read it.

    --data=PATH                   a SCAN/VSE++ precomp directory ({split}_ims.npy, _caps.txt), a
                                  TERAN features directory (bu_att/, bu_box/), or a TERAN dataset
                                  root (data/coco, data/f30k: features_*/bu_att, annotations/,
                                  images/sizes.pkl), whose tree is then discovered
    --data_annotations=PATH       TERAN: a Karpathy dataset_*.json, or a COCO annotations directory
                                  (captions_{train,val}2014.json + coco_{split}_ids.npy);
                                  default: discovered from the tree
    --data_sizes=PATH             TERAN: image sizes (image_sizes.json, sizes.pkl, a COCO
                                  captions_*.json or a directory of them); default: discovered
    --data_split_ids=PATH         TERAN COCO: coco_{split}_ids.npy, or the directory holding them;
                                  default: the annotations directory
    --data_captions_per_image=5   the standard protocol keeps (TERAN) or expects (precomp) 5
                                  captions per image; 0: every caption / any whole number
    --data_dev_images=1000        split 'dev' keeps its first 1,000 images (SCAN, TERAN); 0: all

`from_flags()` returns a `DataPath`: a `str` holding the path, so every path operation of a binary
keeps working, that carries the options to `lateint.data.load_corpus(data, split)`. Training reads
the same options from `config.data` (`from_config`) or these flags (`apply_to_config`).
"""

from __future__ import annotations

from absl import flags

# Reader options a DataPath may carry; None (or absent) means "the reader's default".
OPTION_NAMES = ("annotations", "sizes", "split_ids", "captions_per_image", "dev_images")
_HELP = {
    "data": "Corpus: a precomp directory, a TERAN features directory (bu_att/, bu_box/) or a "
    "TERAN dataset root (data/coco, data/f30k) whose tree is discovered.",
    "annotations": "TERAN: Karpathy dataset_*.json or a COCO annotations directory "
    "(captions_*2014.json + coco_*_ids.npy); default: discovered.",
    "sizes": "TERAN: image sizes (image_sizes.json, sizes.pkl, COCO captions_*.json or their "
    "directory); default: discovered.",
    "split_ids": "TERAN COCO: coco_{split}_ids.npy or its directory; default: the annotations "
    "directory.",
    "captions_per_image": "Captions per image of the standard protocol (5); 0: keep every "
    "caption (precomp: any whole number per image).",
    "dev_images": "Split 'dev' keeps its first N images, as SCAN and TERAN validate (1000); "
    "0: all.",
}


class DataPath(str):
    """A corpus path (the str value) carrying reader options (`.options`, None values dropped)."""

    def __new__(cls, path: str, **options):
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(
                f"data options: expected names among {list(OPTION_NAMES)}, got {unknown}"
            )
        value = super().__new__(cls, path)
        value.options = {name: option for name, option in options.items() if option is not None}
        return value

    def __reduce__(self):
        return (_data_path, (str(self), self.options))

    def __repr__(self):
        return f"DataPath({str(self)!r}, {self.options})"


def _data_path(path: str, options: dict) -> DataPath:
    return DataPath(path, **options)


def path_options(path) -> dict:
    """The options `path` carries ({} for a plain str)."""
    return dict(getattr(path, "options", {}) or {})


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines --data and the --data_* options (call once, where the binary defines its flags)."""
    flags.DEFINE_string("data", None, _HELP["data"], flag_values=flag_values)
    for name in ("annotations", "sizes", "split_ids"):
        flags.DEFINE_string(f"data_{name}", None, _HELP[name], flag_values=flag_values)
    for name in ("captions_per_image", "dev_images"):
        flags.DEFINE_integer(
            f"data_{name}", None, _HELP[name], lower_bound=0, flag_values=flag_values
        )


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> DataPath | None:
    """--data with its --data_* options as a DataPath; None when --data is not set."""
    if flag_values["data"].value is None:
        return None
    return DataPath(
        flag_values["data"].value,
        **{name: flag_values[f"data_{name}"].value for name in OPTION_NAMES},
    )


def from_config(data_config) -> DataPath:
    """config.data (path + any OPTION_NAMES fields, e.g. train/configs/coco_precomp.py)."""
    return DataPath(data_config.path, **{name: data_config.get(name) for name in OPTION_NAMES})


def apply_to_config(config, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Writes --data and the --data_* flags that are set into config.data (training), so the
    run's config.json records what was read."""
    with config.unlocked():
        if flag_values["data"].value is not None:
            config.data.path = flag_values["data"].value
        for name in OPTION_NAMES:
            if flag_values[f"data_{name}"].value is not None:
                config.data[name] = flag_values[f"data_{name}"].value


def cache_key(path) -> dict:
    """{"data_options": options} for a result cache key, {} when `path` carries none (so keys of
    runs without --data_* flags stay what they were)."""
    options = path_options(path)
    return {"data_options": options} if options else {}
