"""The typed schema of INDEX/manifest.json (format_version 1), as pydantic models.

    problems = manifest_schema.problems(manifest_dict)   # [] when valid
    typed = manifest_schema.IndexManifest.model_validate(manifest_dict)

Validation is strict (JSON types: an int is not a bool or a string, no coercion). Every path is
relative to the index directory. `problems` turns pydantic's errors into sentences that name the
field, what was expected and what was found; lateint.index.manifest prefixes the file.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lateint.index import codecs

FORMAT_VERSION = 1
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


def _relative(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or os.path.isabs(path) or ".." in parts:
        raise ValueError(f"must be a relative path inside the index, got {path!r}")
    return path


RelativePath = Annotated[str, pydantic.AfterValidator(_relative)]


class _Record(BaseModel):
    """Known fields are checked; other fields are kept (writers may add to a record)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class _Closed(_Record):
    """A record whose fields are all known: an unknown one is refused."""

    model_config = ConfigDict(extra="forbid")


class Storage(_Record):
    activations_dtype: Literal[codecs.STORAGE_DTYPES]
    compression_dim: Count  # 0: activations stored uncompressed
    concepts_dtype: Literal[codecs.CONCEPT_DTYPES]


class Shapes(_Closed):
    images: Count  # N
    regions: Count  # R
    hidden: Count  # H', the stored width
    concept_dim: Count  # C


class Layout(_Closed):
    shard_rows: Positive
    inner_rows: Positive


class Arrays(_Closed):
    """{role: relative path} of every array."""

    activations: RelativePath
    activation_scale: RelativePath | None = None  # int8 storage only
    region_mask: RelativePath
    concepts: RelativePath
    global_: RelativePath = Field(alias="global")


class Counts(_Record):
    images: Count
    regions: Count | None  # real (unmasked) regions; null until complete


class Ids(_Record):
    file: RelativePath  # 'ids.txt', one external id per line
    count: Count
    sha256: str  # hex digest of the file


class Corpus(_Record):
    """The corpus fingerprint (lateint.index.corpus_fingerprint)."""

    split: str
    images: Count
    regions: Count
    feature_dim: Count
    ids_sha256: str
    content_sha256: str
    sampled_images: Count


class IndexManifest(_Record):
    """INDEX/manifest.json. Written by lateint.index.add / delete / compact (lateint.index.generation) too:
    generation (absent: 0, one more at every published change), first_stage ({stage: its
    stage.json record as published}), tombstones ({generation, count} or null), previous (the
    arrays, ids, first_stage and tombstones of the generation before)."""

    format_version: Literal[FORMAT_VERSION]
    complete: bool
    created: str  # ISO-8601 UTC
    finalized: str | None = None  # null until complete
    model_fingerprint: str  # hash of the image-side parameters and the model config
    split_layer: Count
    storage: Storage
    shapes: Shapes
    layout: Layout
    arrays: Arrays
    counts: Counts
    ids: Ids
    source: Any = None  # free-form JSON describing the corpus (the writer's business)
    generation: Count = 0
    first_stage: dict | None = None
    tombstones: dict | None = None
    previous: dict | None = None
    corpus: Corpus | None = None  # absent in indexes written before corpus fingerprints

    @field_validator("created", "model_fingerprint")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("expected a non-empty string, got ''")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> IndexManifest:
        images = self.shapes.images
        for field, value in (("counts.images", self.counts.images), ("ids.count", self.ids.count)):
            if value != images:
                raise ValueError(f"field {field!r} expected {images} (shapes.images), got {value}")
        if self.complete and self.counts.regions is None:
            raise ValueError("field 'counts.regions' expected an int once complete, got None")
        if self.storage.activations_dtype == "int8" and self.arrays.activation_scale is None:
            raise ValueError("int8 storage needs field 'arrays.activation_scale'")
        return self


ARRAY_ROLES = tuple(field.alias or name for name, field in Arrays.model_fields.items())
CORPUS_FIELDS = tuple(Corpus.model_fields)


def _model_at(location) -> type[BaseModel] | None:
    """The model class that holds the field at `location` (a pydantic loc, minus its last part)."""
    model: Any = IndexManifest
    for part in location:
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return None
        annotation = fields[part].annotation
        if get_origin(annotation) is Union:  # Optional[Model]
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _got(value) -> str:
    return f"{type(value).__name__} {value!r}"


_EXPECTED = {
    "int_type": "int",
    "bool_type": "bool",
    "string_type": "str",
    "model_type": "an object",
    "dict_type": "an object",
    "model_attributes_type": "an object",
}


def describe(error: dict) -> str:
    """One pydantic error as 'field 'F' expected E, got G' (or 'missing field 'F'')."""
    location = [str(part) for part in error["loc"]]
    field = ".".join(location)
    kind, value = error["type"], error.get("input")
    context = error.get("ctx") or {}
    if kind == "missing":
        return f"missing field {field!r}"
    if kind == "extra_forbidden":
        model = _model_at(error["loc"][:-1])
        known = (
            []
            if model is None
            else [item.alias or name for name, item in model.model_fields.items()]
        )
        return f"unknown field {field!r}; expected fields among {known}"
    if kind == "value_error":  # our validators' sentences
        message = str(context.get("error", error["msg"])).removeprefix("Value error, ")
        return (
            message if not field or message.startswith("field ") else f"field {field!r} {message}"
        )
    subject = f"field {field!r}" if field else "the manifest"
    if kind == "literal_error":
        return f"{subject} expected {context['expected']}, got {value!r}"
    if kind in ("greater_than_equal", "greater_than"):
        sign = ">=" if kind == "greater_than_equal" else ">"
        bound = context.get("ge", context.get("gt"))
        return f"{subject} expected an int {sign} {bound}, got {value!r}"
    if kind in _EXPECTED:
        return f"{subject} expected {_EXPECTED[kind]}, got {_got(value)}"
    return f"{subject}: {error['msg']}, got {_got(value)}"


def problems(manifest) -> list[str]:
    """Every way `manifest` (parsed JSON) breaks the schema, as sentences; [] when valid."""
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    try:
        IndexManifest.model_validate(manifest)
    except pydantic.ValidationError as error:
        return [describe(item) for item in error.errors(include_url=False)]
    return []
