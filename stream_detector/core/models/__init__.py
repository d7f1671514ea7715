"""Per-series models, chosen by name in the configuration."""

from __future__ import annotations

from collections.abc import Callable

from stream_detector.core.models.base import Scored, SeriesModel
from stream_detector.core.models.ewma import EWMAModel
from stream_detector.core.models.seasonal_poisson import SeasonalPoissonModel

ModelFactory = Callable[[float], SeriesModel]

# name -> factory taking the bucket width in seconds
MODELS: dict[str, ModelFactory] = {
    "ewma": lambda bucket_seconds: EWMAModel(bucket_seconds),
    "seasonal-poisson": lambda bucket_seconds: SeasonalPoissonModel(bucket_seconds),
}

# Models that can score drops as well as rises: factory(bucket_seconds, direction),
# direction "up", "down" or "both". Others score drops through `series_backtest`'s
# mirror adapter.
DIRECTIONAL_MODELS: dict[str, Callable[[float, str], SeriesModel]] = {
    "seasonal-poisson": lambda bucket_seconds, direction: SeasonalPoissonModel(
        bucket_seconds, direction=direction
    ),
}

# The model a fresh configuration uses.
DEFAULT_MODEL = "seasonal-poisson"


def model_factory(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None


__all__ = [
    "DEFAULT_MODEL",
    "DIRECTIONAL_MODELS",
    "MODELS",
    "ModelFactory",
    "Scored",
    "SeasonalPoissonModel",
    "SeriesModel",
    "model_factory",
]
