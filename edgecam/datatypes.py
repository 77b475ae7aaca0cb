"""KServe v2 tensor datatypes and their numpy equivalents: the one table every part uses."""

from __future__ import annotations

import numpy as np

_KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NUMPY_TO_KSERVE = {dtype: name for name, dtype in _KSERVE_TO_NUMPY.items()}

KSERVE_DATATYPES: tuple[str, ...] = tuple(_KSERVE_TO_NUMPY)


def to_numpy(datatype: str) -> np.dtype:
    """numpy dtype of a KServe datatype name; ValueError naming the valid ones otherwise."""
    try:
        return _KSERVE_TO_NUMPY[datatype]
    except KeyError:
        if datatype == "BYTES":  # a KServe datatype, but of variable-length strings: no numpy layout
            raise ValueError(
                "BYTES (string) tensors are not supported; send a numeric datatype: "
                + ", ".join(KSERVE_DATATYPES)
            ) from None
        raise ValueError(f"unsupported datatype {datatype!r}; valid: {', '.join(KSERVE_DATATYPES)}") from None


def from_numpy(dtype: np.dtype | type) -> str:
    """KServe datatype name of a numpy dtype."""
    key = np.dtype(dtype)
    try:
        return _NUMPY_TO_KSERVE[key]
    except KeyError:
        raise ValueError(f"numpy dtype {key} has no KServe datatype") from None
