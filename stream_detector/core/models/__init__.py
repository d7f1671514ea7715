"""Per-series models, chosen by name in the configuration."""

from __future__ import annotations

from collections.abc import Callable

from stream_detector.core.models.base import Scored, SeriesModel
from stream_detector.core.models.ewma import EWMAModel

ModelFactory = Callable[[float], SeriesModel]

# name -> factory taking the bucket width in seconds
MODELS: dict[str, ModelFactory] = {
    "ewma": lambda bucket_seconds: EWMAModel(bucket_seconds),
}

# The model a fresh configuration uses.
DEFAULT_MODEL = "ewma"


def model_factory(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None


__all__ = ["DEFAULT_MODEL", "MODELS", "ModelFactory", "Scored", "SeriesModel", "model_factory"]
