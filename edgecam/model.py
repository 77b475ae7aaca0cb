"""What a model is to its users, and the `edgecam.*` ONNX metadata that carries it.

One description (`ModelDescription`: name, tensors, pre/postprocessing, labels) is what `compile`
reads from an .onnx, what the artifact's manifest stores (the manifest extends it) and what `serve`
works with; one reader (`describe`) turns an ONNX model's metadata_props into it, so `compile` and
`serve` describe the same file the same way; one writer (`metadata_props`) makes them.

Light on purpose (pydantic and json): the camera imports it without onnx or TVM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from edgecam.datatypes import KSERVE_DATATYPES
from edgecam.postprocessing import Postprocessing
from edgecam.preprocessing import Preprocessing

METADATA_PREFIX = "edgecam."
NAME_KEY = METADATA_PREFIX + "model_name"
PREPROCESSING_KEY = METADATA_PREFIX + "preprocessing"
POSTPROCESSING_KEY = METADATA_PREFIX + "postprocessing"
LABELS_KEY = METADATA_PREFIX + "labels"


class MetadataError(ValueError):
    """An .onnx file's edgecam metadata is invalid or does not fit its inputs; one line, naming the key."""


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1: a dimension the model leaves open (plain .onnx files only; artifacts are static)

    def model_post_init(self, _context: Any) -> None:
        if self.datatype not in KSERVE_DATATYPES:
            raise ValueError(f"datatype {self.datatype!r} is not a KServe datatype ({KSERVE_DATATYPES})")


class ModelDescription(BaseModel):
    """A model as compiler, artifact and server see it: its tensors and how frames become inputs and
    outputs become labels. The artifact's Manifest extends it with how it was built."""

    model_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    postprocessing: Postprocessing = Field(default_factory=Postprocessing)
    labels: list[str] = Field(default_factory=list)


class Described:
    """The description's fields read as the holder's own (the compiler's OnnxModel and the server's
    LoadedModel, which hold one `description` each)."""

    description: ModelDescription

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.description.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.description.outputs

    @property
    def preprocessing(self) -> Preprocessing:
        return self.description.preprocessing

    @property
    def postprocessing(self) -> Postprocessing:
        return self.description.postprocessing

    @property
    def labels(self) -> list[str]:
        return self.description.labels


def metadata_props(
    name: str,
    preprocessing: Preprocessing,
    postprocessing: Postprocessing | None = None,
    labels: Sequence[str] = (),
) -> dict[str, str]:
    """The `edgecam.*` metadata_props describing a model (for onnx.helper.set_model_props)."""
    return {
        NAME_KEY: name,
        PREPROCESSING_KEY: preprocessing.model_dump_json(),
        POSTPROCESSING_KEY: (postprocessing or Postprocessing()).model_dump_json(),
        LABELS_KEY: json.dumps(list(labels)),
    }


def describe(
    metadata: Mapping[str, str],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    default_name: str,
    where: str,
) -> ModelDescription:
    """The description of an ONNX model from its metadata_props, what is absent inferred: the name
    from `default_name`, the preprocessing from the first input's shape, no labels. MetadataError
    (its message starts with `where`) for invalid metadata.

    Whether the preprocessing produces the first input is not checked here: a server may serve a
    model whose input is no image over KServe alone, while the compiler, which verifies with frames
    through it, refuses a mismatch (check_preprocessing)."""
    try:
        pre_json = metadata.get(PREPROCESSING_KEY)
        pre = (
            _validated(Preprocessing, pre_json, PREPROCESSING_KEY)
            if pre_json
            else infer_preprocessing(inputs)
        )
        post_json = metadata.get(POSTPROCESSING_KEY)
        post = _validated(Postprocessing, post_json, POSTPROCESSING_KEY) if post_json else Postprocessing()
        labels = _labels(metadata.get(LABELS_KEY))
    except MetadataError as exc:
        raise MetadataError(f"{where}: {exc}") from None
    return ModelDescription(
        model_name=metadata.get(NAME_KEY) or default_name,
        inputs=inputs,
        outputs=outputs,
        preprocessing=pre,
        postprocessing=post,
        labels=labels,
    )


def _validated(model: type[Any], text: str, key: str) -> Any:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:  # several lines by default: one line, naming each bad field
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise MetadataError(f"{key!r} is invalid ({problems}); got {text!r}") from None


def _labels(text: str | None) -> list[str]:
    """Labels must be strings: a number coerced with str() would hide a label file written wrong."""
    if not text:
        return []
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{LABELS_KEY!r} is not JSON ({exc.msg}); got {text[:80]!r}") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise MetadataError(
            f"{LABELS_KEY!r} must be a JSON list of strings, got {str(labels)[:80]}; "
            'write each label as a string, e.g. ["cat", "dog"]'
        )
    return labels


def infer_preprocessing(inputs: Sequence[TensorSpec]) -> Preprocessing:
    """Without edgecam.preprocessing: the first input is an image, [1,C,H,W] or else [1,H,W,C] with C
    1 (gray) or 3 (RGB) and fixed H, W, scaled to [0, 1]."""
    if not inputs or len(inputs[0].shape) != 4:
        raise MetadataError(
            f"without {PREPROCESSING_KEY!r} the first input must be an image [1,C,H,W] or [1,H,W,C], got "
            f"{[(s.name, s.shape) for s in inputs]}; add {PREPROCESSING_KEY} to the model's metadata_props"
        )
    _, a, b, c = inputs[0].shape
    if a in (1, 3) and b > 0 and c > 0:
        return Preprocessing(height=b, width=c, color="GRAY" if a == 1 else "RGB", layout="NCHW")
    if c in (1, 3) and a > 0 and b > 0:
        return Preprocessing(height=a, width=b, color="GRAY" if c == 1 else "RGB", layout="NHWC")
    raise MetadataError(
        f"cannot infer preprocessing from input {inputs[0].name!r} shape {inputs[0].shape}: expected "
        f"[1,C,H,W] or [1,H,W,C] with C 1 or 3 and fixed H, W; add {PREPROCESSING_KEY} to metadata_props"
    )


def produced_shape(spec: Preprocessing) -> list[int]:
    """The shape of the tensor `spec` makes of a frame."""
    c, h, w = spec.channels, spec.height, spec.width
    return [1, c, h, w] if spec.layout == "NCHW" else [1, h, w, c]


def check_preprocessing(spec: Preprocessing, image: TensorSpec, where: str) -> None:
    """MetadataError unless `spec` produces the image input's shape (an open dimension takes any size)."""
    produced = produced_shape(spec)
    fits = len(image.shape) == len(produced) and all(
        d in (-1, p) for d, p in zip(image.shape, produced, strict=True)
    )
    if not fits:
        raise MetadataError(
            f"{where}: {PREPROCESSING_KEY} ({spec.layout}, {spec.color}, {spec.height}x{spec.width}) "
            f"produces {produced}, but input {image.name!r} has shape {image.shape}; export the model for "
            f"that shape (batch 1) or fix the {PREPROCESSING_KEY} metadata"
        )
