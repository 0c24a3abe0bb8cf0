"""How every source of a dataset is read and coded: one frozen object, recorded in the manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from elastictok.coding.options import CodingOptions
from elastictok.model.autoencoder import ElasticTok


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class TokenizeJob:
    """The coding ``options`` plus how sources are read: ``resolution`` (shorter side, any-size models),
    ``fps`` (resampled frame rate), ``max_frames`` (frames read per video) and ``max_clip_frames``
    (a longer video becomes several rows of at most this many frames each)."""

    options: CodingOptions = field(default_factory=CodingOptions)
    resolution: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    max_clip_frames: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, CodingOptions):
            raise TypeError(f"expected options to be a CodingOptions, got {type(self.options).__name__}")
        for name in ("resolution", "max_frames", "max_clip_frames"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"expected --{name.replace('_', '-')} to be an int >= 1, got {value!r}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"expected --fps to be a positive number, got {self.fps!r}")

    def for_model(self, model: ElasticTok) -> TokenizeJob:
        """This job with the model's defaults filled in (so the manifest records the real ones)."""
        return replace(self, options=self.options.for_model(model))

    def settings(self) -> dict[str, Any]:
        """The job as recorded in ``manifest.json``; appending needs the same settings."""
        return self.options.settings() | {
            "resolution": self.resolution, "fps": None if self.fps is None else float(self.fps),
            "max_frames": self.max_frames, "max_clip_frames": self.max_clip_frames,
        }
