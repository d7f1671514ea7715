"""Models, chosen by name in the configuration: per series, and as banks of many series."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stream_detector.core.models.bank import ModelBank, PerSeriesBank
from stream_detector.core.models.base import Scored, SeriesModel
from stream_detector.core.models.ewma import EWMAModel
from stream_detector.core.models.metric import MetricModel
from stream_detector.core.models.river_adapter import PREFIX as RIVER_PREFIX
from stream_detector.core.models.river_adapter import RiverModel, river_factory
from stream_detector.core.models.seasonal_poisson import SeasonalPoissonBank, SeasonalPoissonModel

ModelFactory = Callable[[float], SeriesModel]
"""A model of one series, from the bucket width in seconds."""
DirectionalFactory = Callable[[float, str], SeriesModel]
"""The same, with the direction it scores: "up", "down" or "both"."""

# The detector's slots that start from the level learn as plain averages with
# the level worth 3 reports (see `_seasonal_kernel`): unbiased night and
# regional slots for the evidence test. The single-series model (NAB scoring)
# keeps EW slots: its calibrated score was built and measured on them.
DETECTOR_SLOT_PRIOR_REPORTS = 3.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything that can be built of one named model."""

    series: ModelFactory
    directional: DirectionalFactory | None = None
    """Set for models that score drops as well as rises; others score drops
    through `series_backtest`'s mirror adapter."""
    bank: Callable[[float], ModelBank] | None = None
    """Set for models with an array implementation of many series at once; the
    detector steps any other model series by series through `PerSeriesBank`."""


# The one registry of models, by the name the configuration uses.
MODELS: dict[str, ModelSpec] = {
    "ewma": ModelSpec(lambda bucket_seconds: EWMAModel(bucket_seconds)),
    "seasonal-poisson": ModelSpec(
        lambda bucket_seconds: SeasonalPoissonModel(bucket_seconds),
        directional=lambda bucket_seconds, direction: SeasonalPoissonModel(
            bucket_seconds, direction=direction
        ),
        bank=lambda bucket_seconds: SeasonalPoissonBank(
            bucket_seconds, slot_prior_reports=DETECTOR_SLOT_PRIOR_REPORTS
        ),
    ),
    "metric": ModelSpec(
        lambda bucket_seconds: MetricModel(bucket_seconds),
        directional=lambda bucket_seconds, direction: MetricModel(bucket_seconds, direction),
    ),
}
# river estimators with settings for one bucketed series, selectable by name like
# the project's own; `model_spec` builds any other "river:<Name>" on demand.
MODELS.update({
    RIVER_PREFIX + name: ModelSpec(river_factory(RIVER_PREFIX + name))
    for name in ("GaussianScorer", "HalfSpaceTrees", "HoltWinters", "SNARIMAX")
})

# The model a fresh configuration uses.
DEFAULT_MODEL = "seasonal-poisson"


def model_spec(name: str) -> ModelSpec:
    if name.startswith(RIVER_PREFIX) and name not in MODELS:
        return ModelSpec(river_factory(name))
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None


def model_factory(name: str) -> ModelFactory:
    return model_spec(name).series


def model_bank(name: str, bucket_seconds: float) -> ModelBank:
    """The bank that holds every series of model `name` in one detector."""
    spec = model_spec(name)
    if spec.bank is not None:
        return spec.bank(bucket_seconds)
    return PerSeriesBank(spec.series, bucket_seconds)


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "MetricModel",
    "RiverModel",
    "ModelBank",
    "ModelFactory",
    "Scored",
    "SeasonalPoissonModel",
    "SeriesModel",
    "model_bank",
    "model_factory",
    "model_spec",
]
