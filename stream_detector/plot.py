"""Pictures of a labelled backtest: why the detector fired, or why it did not.

One panel per stretch of one series that holds labelled events or incidents,
chosen so the picture shows one event of every kind in the labels (a missed
one first, being the telling one) and every false incident: reports per
bucket, the model's normal band (expected ± 2 spreads), the labelled windows
shaded, the incidents as bars and a marker where each paged. matplotlib is an
optional dependency (the `plot` extra), so it is imported only here, lazily,
with the file-writing Agg backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream_detector.backtest import IncidentSpan, Label, LabelEvaluation, SeriesHistory

# Beyond this many panels a picture is no longer read; false incidents past
# it are counted in the title instead of drawn.
MAX_PANELS = 16
HOUR_MS = 3_600_000
# Events on one series closer than this share a panel.
JOIN_MS = 6 * HOUR_MS
PAD_MS = 90 * 60_000


@dataclass
class Panel:
    service: str
    region: str | None
    start_ms: int
    end_ms: int
    labels: list[Label] = field(default_factory=list)
    incidents: list[IncidentSpan] = field(default_factory=list)
    missed: set[int] = field(default_factory=set)
    """`id()` of the labels of this panel that no incident caught."""
    false: set[str] = field(default_factory=set)
    """`alert_id` of this panel's incidents that cover no labelled outage."""
    pages: dict[int, float] = field(default_factory=dict)
    """`id()` of a caught label -> minutes from its start to the page."""

    @property
    def title(self) -> str:
        name = f"{self.service} in {self.region}" if self.region else self.service
        what = []
        for lb in self.labels:
            if not lb.is_outage:
                what.append(f"{lb.shape or 'flood'} (not an outage; one reporter's repeats "
                            "count once an hour, so they barely show)")
            elif id(lb) in self.missed:
                what.append(f"{lb.shape} outage{_peak(lb)}: MISSED")
            else:
                page = self.pages.get(id(lb))
                paged = f", paged +{page:.0f} min" if page is not None else ""
                what.append(f"{lb.shape} outage{_peak(lb)}{paged}")
        falses = sum(1 for inc in self.incidents if inc.alert_id in self.false)
        if falses:
            what.append("false incident" + (f" x{falses}" if falses > 1 else ""))
        return f"{name}: {'; '.join(what)}"


def _peak(label: Label) -> str:
    return f" x{label.peak_multiplier:.3g}" if label.peak_multiplier > 0 else ""


def choose_panels(
    labels: list[Label],
    incidents: list[IncidentSpan],
    evaluation: LabelEvaluation | None,
    max_panels: int = MAX_PANELS,
) -> tuple[list[Panel], int]:
    """The stretches to draw, in time order, and how many false incidents did not fit.

    One panel for every kind of labelled event (`shape`, floods included),
    a missed one of the kind if there is one, then every panel holding a
    false incident, as far as `max_panels` allows. Regional labels and
    incidents are drawn on their region's series.
    """
    missed: set[int] = set()
    false: set[str] = set()
    pages: dict[int, float] = {}
    if evaluation is not None:
        missed = {id(o.label) for o in evaluation.outages if o.incident is None}
        false = {i.alert_id for i in evaluation.false_incidents}
        pages = {id(o.label): o.page_minutes for o in evaluation.outages
                 if o.page_minutes is not None}
    events: list[tuple[int, int, str, str | None, Label | None, IncidentSpan | None]] = []
    for lb in labels:
        events.append((lb.start_ms, lb.end_ms, lb.service, lb.region, lb, None))
    for inc in incidents:
        # A service-wide incident during a regional outage is drawn with the outage.
        region = inc.region or next((lb.region for lb in labels if lb.service == inc.service
                                     and lb.region and inc.start_ms <= lb.end_ms
                                     and inc.end_ms > lb.start_ms), None)
        events.append((inc.start_ms, inc.end_ms, inc.service, region, None, inc))
    events.sort(key=lambda e: (e[2], e[3] or "", e[0]))
    panels: list[Panel] = []
    for start, end, service, region, label, incident in events:
        last = panels[-1] if panels else None
        if (last is None or last.service != service or last.region != region
                or start > last.end_ms + JOIN_MS):
            last = Panel(service, region, start, end, missed=missed, false=false, pages=pages)
            panels.append(last)
        last.end_ms = max(last.end_ms, end)
        if label is not None:
            last.labels.append(label)
        if incident is not None:
            last.incidents.append(incident)
    panels.sort(key=lambda p: p.start_ms)

    chosen: list[Panel] = []
    kinds = sorted({lb.shape for lb in labels})
    for kind in kinds:
        holding = [p for p in panels if any(lb.shape == kind for lb in p.labels)]
        missing = [p for p in holding
                   if any(lb.shape == kind and id(lb) in missed for lb in p.labels)]
        pick = next((p for p in missing + holding if p not in chosen), None)
        if pick is not None and len(chosen) < max_panels:
            chosen.append(pick)
    with_false = [p for p in panels if any(i.alert_id in false for i in p.incidents)]
    left_out = 0
    for panel in with_false:
        if panel in chosen:
            continue
        if len(chosen) < max_panels:
            chosen.append(panel)
        else:
            left_out += sum(1 for i in panel.incidents if i.alert_id in false)
    if evaluation is None:  # nothing is known to be false: show incidents as they come
        chosen += [p for p in panels if p.incidents and p not in chosen][
            : max(max_panels - len(chosen), 0)]
    return sorted(chosen, key=lambda p: p.start_ms), left_out


def plot_backtest(
    path: str | Path,
    history: SeriesHistory,
    labels: list[Label],
    incidents: list[IncidentSpan],
    evaluation: LabelEvaluation | None = None,
    bucket_ms: int = 60_000,
    band_spreads: float = 2.0,
) -> int:
    """Draw the chosen panels to a PNG at `path`; return how many were drawn."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            "--plot needs matplotlib: pip install 'stream-detector[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    panels, left_out = choose_panels(labels, incidents, evaluation)
    rows = max(len(panels), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.4 * rows + 1.2), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no labelled events and no incidents", ha="center")
        axes[0][0].set_axis_off()
    handles: dict[str, object] = {}
    for ax, panel in zip((a[0] for a in axes), panels, strict=False):
        _draw(ax, panel, history, bucket_ms, band_spreads, mdates)
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    height = fig.get_figheight()
    fig.suptitle(_headline(evaluation, len(panels), left_out, bucket_ms), fontsize=10,
                 x=0.01, y=1 - 0.1 / height, ha="left", va="top")
    # One legend for every panel, above them, where it covers no data.
    fig.legend(list(handles.values()), list(handles), loc="upper left", ncols=4, fontsize=8,
               bbox_to_anchor=(0.01, 1 - 0.5 / height), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.0 / height))
    try:
        fig.savefig(path, dpi=90)
    except OSError as exc:
        raise ValueError(f"cannot write plot file {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return len(panels)


def _headline(evaluation: LabelEvaluation | None, drawn: int, left_out: int,
              bucket_ms: int) -> str:
    """The run's figures, for the title."""
    if evaluation is None:
        return f"backtest, {bucket_ms // 1000} s buckets: {drawn} stretches with incidents"
    pages = evaluation.page_delays
    median = f"{pages[len(pages) // 2]:.0f} min" if pages else "none"
    extra = f" ({_count(left_out, 'more false incident')} not drawn)" if left_out else ""
    return (f"backtest of {evaluation.services} services over {evaluation.days:.0f} days, "
            f"{bucket_ms // 1000} s buckets: {evaluation.detected}/{len(evaluation.outages)} "
            f"outages caught, page delay median {median}, "
            f"{_count(len(evaluation.false_incidents), 'false incident')}{extra}\n"
            "one panel per kind of labelled event (a missed one if any) and per false incident")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _draw(ax, panel: Panel, history: SeriesHistory, bucket_ms: int, band_spreads: float,
          mdates) -> None:
    lo = panel.start_ms - PAD_MS
    hi = panel.end_ms + PAD_MS
    lo -= lo % bucket_ms
    points = {p[0]: p for p in history.points.get((panel.service, panel.region), ())
              if lo <= p[0] <= hi}
    times, reports, band_t, low, high, expected = [], [], [], [], [], []
    for t in range(lo, hi + 1, bucket_ms):
        p = points.get(t)
        times.append(_dt(t))
        reports.append(p[1] if p else 0)
        if p:
            band_t.append(_dt(t))
            expected.append(p[2])
            low.append(max(p[2] - band_spreads * p[3], 0.0))
            high.append(p[2] + band_spreads * p[3])
    ax.fill_between(band_t, low, high, step="post", color="tab:blue", alpha=0.18,
                    label=f"normal band (expected ± {band_spreads:g} spread)")
    ax.step(band_t, expected, where="post", color="tab:blue", lw=0.8, label="expected")
    ax.step(times, reports, where="post", color="black", lw=0.9, label="reports per bucket")
    for lb in panel.labels:
        if not lb.is_outage:
            color, name = "tab:gray", "labelled flood (not an outage)"
        elif id(lb) in panel.missed:
            color, name = "tab:red", "labelled outage, missed"
        else:
            color, name = "tab:green", "labelled outage, caught"
        ax.axvspan(_dt(lb.start_ms), _dt(lb.end_ms), color=color, alpha=0.15, label=name)
    top = max(reports + high + [1])
    for n, inc in enumerate(panel.incidents):
        false = inc.alert_id in panel.false
        if false:
            color, name = "tab:red", "false incident"
        else:
            color = "tab:purple" if inc.severity == "critical" else "tab:orange"
            name = f"incident ({inc.severity})"
        y = top * (1.06 + 0.06 * n)
        ax.hlines(y, _dt(inc.start_ms), _dt(inc.end_ms), color=color, lw=5, label=name)
        if inc.paged_ms is not None:
            ax.plot([_dt(inc.paged_ms)], [y], marker="v", ms=8, color="black", ls="none",
                    label="paged (first firing message sent)")
        if false:
            ax.annotate("false", (_dt(inc.start_ms), y), xytext=(0, 5),
                        textcoords="offset points", fontsize=8, color="tab:red")
    ax.set_xlim(_dt(lo), _dt(hi))
    ax.set_ylim(0, top * (1.2 + 0.06 * len(panel.incidents)))
    ax.set_title(panel.title, fontsize=9, loc="left")
    ax.set_ylabel(f"reports / {bucket_ms // 1000} s")
    ax.set_xlabel("UTC", fontsize=8, loc="right", labelpad=0)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
    ax.tick_params(labelsize=8)
