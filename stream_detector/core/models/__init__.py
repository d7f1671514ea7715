"""Models, chosen by name in the configuration: per series, and as banks of many series."""

from __future__ import annotations

from collections.abc import Callable

from stream_detector.core.models.bank import ModelBank, PerSeriesBank
from stream_detector.core.models.base import Scored, SeriesModel
from stream_detector.core.models.ewma import EWMAModel
from stream_detector.core.models.metric import MetricModel
from stream_detector.core.models.river_adapter import PREFIX as RIVER_PREFIX
from stream_detector.core.models.river_adapter import RiverModel, river_factory
from stream_detector.core.models.seasonal_poisson import SeasonalPoissonBank, SeasonalPoissonModel

ModelFactory = Callable[[float], SeriesModel]

# name -> factory taking the bucket width in seconds
MODELS: dict[str, ModelFactory] = {
    "ewma": lambda bucket_seconds: EWMAModel(bucket_seconds),
    "seasonal-poisson": lambda bucket_seconds: SeasonalPoissonModel(bucket_seconds),
    "metric": lambda bucket_seconds: MetricModel(bucket_seconds),
}
# river estimators with settings for one bucketed series, selectable by name like
# the project's own; `model_factory` builds any other "river:<Name>" on demand.
MODELS.update({
    RIVER_PREFIX + name: river_factory(RIVER_PREFIX + name)
    for name in ("GaussianScorer", "HalfSpaceTrees", "HoltWinters", "SNARIMAX")
})

# Models that can score drops as well as rises: factory(bucket_seconds, direction),
# direction "up", "down" or "both". Others score drops through `series_backtest`'s
# mirror adapter.
DIRECTIONAL_MODELS: dict[str, Callable[[float, str], SeriesModel]] = {
    "seasonal-poisson": lambda bucket_seconds, direction: SeasonalPoissonModel(
        bucket_seconds, direction=direction
    ),
    "metric": lambda bucket_seconds, direction: MetricModel(bucket_seconds, direction),
}

# The detector's slots that start from the level learn as plain averages with
# the level worth 3 reports (see `_seasonal_kernel`): unbiased night and
# regional slots for the evidence test. The single-series model (NAB scoring)
# keeps EW slots: its calibrated score was built and measured on them.
DETECTOR_SLOT_PRIOR_REPORTS = 3.0

# Models with an array implementation for many series at once; the detector
# steps any other model series by series through `PerSeriesBank`.
BANKS: dict[str, Callable[[float], ModelBank]] = {
    "seasonal-poisson": lambda bucket_seconds: SeasonalPoissonBank(
        bucket_seconds, slot_prior_reports=DETECTOR_SLOT_PRIOR_REPORTS
    ),
}

# The model a fresh configuration uses.
DEFAULT_MODEL = "seasonal-poisson"


def model_factory(name: str) -> ModelFactory:
    if name.startswith(RIVER_PREFIX) and name not in MODELS:
        return river_factory(name)
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None


def model_bank(name: str, bucket_seconds: float) -> ModelBank:
    """The bank that holds every series of model `name` in one detector."""
    if name in BANKS:
        return BANKS[name](bucket_seconds)
    return PerSeriesBank(model_factory(name), bucket_seconds)


__all__ = [
    "DEFAULT_MODEL",
    "DIRECTIONAL_MODELS",
    "MODELS",
    "MetricModel",
    "RiverModel",
    "ModelBank",
    "ModelFactory",
    "Scored",
    "SeasonalPoissonModel",
    "SeriesModel",
    "model_bank",
    "model_factory",
]
