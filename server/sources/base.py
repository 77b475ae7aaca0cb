"""The FrameSource contract: open, read a frame within a deadline, close; configs keyed by `kind`."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # HxW gray or HxWx3 BGR, uint8 (OpenCV's convention)
    captured_at: float  # time.time() when the frame was taken
    label: int | None = None  # ground truth, for sources that know it


class SourceError(Exception):
    """A source could not be opened or read; the pipeline retries with backoff."""


class SourceConfig(BaseModel):
    """A source kind's typed options; `kind` (a Literal with a default in each subclass) is the key
    the registry, the CLI's `KIND:KEY=VALUE,...` form and a YAML `source: {kind: ...}` mapping use."""

    kind: str
    # The strings this kind reads without a `KIND:` prefix, for error messages ("" for none).
    bare_forms: ClassVar[str] = ""
    # True: `from_bare` takes any string of its forms (OpenCV: any URL), so the other kinds are asked first.
    bare_fallback: ClassVar[bool] = False

    @classmethod
    def from_bare(cls, spec: str) -> SourceConfig | None:
        """This kind's config for a source string it recognises by its form (a URL, a device), else None."""
        return None


class FrameSource(abc.ABC):
    """One camera. `read` returns None when no frame came within its deadline or the stream ended."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def open(self) -> None:
        """Connect; raise SourceError with a message an operator can act on."""

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """Next frame, or None (stall, end of stream, lost connection). Never blocks forever."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or connection; safe to call twice."""

    def limit_read_time(self, seconds: float) -> None:
        """The pipeline's frame-age limit: a read that can block should give up within `seconds`.

        The pipeline calls it once, before the first open. The default ignores it, which suits
        sources whose reads return quickly; sources with driver-level read timeouts apply it there.
        """
        return None

    def describe(self) -> str:
        return self.kind


# kind -> (config class, factory); filled by @register_source in each source module.
_REGISTRY: dict[str, tuple[type[SourceConfig], Callable[[Any], FrameSource]]] = {}


def register_source(
    config_cls: type[SourceConfig],
) -> Callable[[type[FrameSource]], type[FrameSource]]:
    """Class decorator: makes a FrameSource constructible from its config's `kind`."""
    kind = config_cls.model_fields["kind"].default

    def decorate(cls: type[FrameSource]) -> type[FrameSource]:
        cls.kind = kind
        _REGISTRY[kind] = (config_cls, cls)
        return cls

    return decorate


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def registered_configs() -> dict[str, type[SourceConfig]]:
    """kind -> config class of every registered source, sorted by kind."""
    return {kind: _REGISTRY[kind][0] for kind in sorted(_REGISTRY)}


def create_source(config: SourceConfig) -> FrameSource:
    try:
        _, factory = _REGISTRY[config.kind]
    except KeyError:
        raise SourceError(f"unknown source kind {config.kind!r}; valid: {registered_kinds()}") from None
    return factory(config)
