"""Pictures of a labelled backtest: why the detector fired, or why it did not.

One panel per stretch of one series that holds labelled events or incidents:
reports per bucket, the model's normal band (expected ± 2 spreads), the
labelled windows shaded and the incidents drawn as spans. matplotlib is an
optional dependency (the `plot` extra), so it is imported only here, lazily,
with the file-writing Agg backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream_detector.backtest import IncidentSpan, Label, LabelEvaluation, SeriesHistory

MAX_PANELS = 6
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
    priority: int = 3

    @property
    def title(self) -> str:
        name = f"{self.service} in {self.region}" if self.region else self.service
        what = [f"{lb.shape} ({'not an outage' if not lb.is_outage else 'outage'})"
                for lb in self.labels]
        if not self.labels:
            what.append("false incident")
        return f"{name}: {', '.join(what)}"


def choose_panels(
    labels: list[Label],
    incidents: list[IncidentSpan],
    evaluation: LabelEvaluation | None,
    max_panels: int = MAX_PANELS,
) -> list[Panel]:
    """Stretches worth a look, most telling first: missed outages, false alarms, floods, hits.

    Regional labels and incidents are drawn on their region's series.
    """
    missed: set[int] = set()
    false: set[str] = set()
    if evaluation is not None:
        missed = {id(o.label) for o in evaluation.outages if o.incident is None}
        false = {i.alert_id for i in evaluation.false_incidents}
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
            last = Panel(service, region, start, end)
            panels.append(last)
        last.end_ms = max(last.end_ms, end)
        if label is not None:
            last.labels.append(label)
            if id(label) in missed:
                last.priority = min(last.priority, 0)
            elif not label.is_outage:
                last.priority = min(last.priority, 2)
        if incident is not None:
            last.incidents.append(incident)
            if incident.alert_id in false:
                last.priority = min(last.priority, 1)
    # Round robin over the kinds, so a capped plot still shows one of each.
    by_kind: dict[int, list[Panel]] = {}
    for panel in sorted(panels, key=lambda p: p.start_ms):
        by_kind.setdefault(panel.priority, []).append(panel)
    chosen: list[Panel] = []
    while len(chosen) < max_panels and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(chosen) < max_panels:
                chosen.append(by_kind[kind].pop(0))
    return sorted(chosen, key=lambda p: p.start_ms)


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

    panels = choose_panels(labels, incidents, evaluation)
    rows = max(len(panels), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.8 * rows), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no labelled events and no incidents", ha="center")
        axes[0][0].set_axis_off()
    for ax, panel in zip((a[0] for a in axes), panels, strict=False):
        _draw(ax, panel, history, bucket_ms, band_spreads, mdates)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=90)
    except OSError as exc:
        raise ValueError(f"cannot write plot file {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return len(panels)


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
    for n, lb in enumerate(panel.labels):
        color = "tab:red" if lb.is_outage else "tab:gray"
        ax.axvspan(_dt(lb.start_ms), _dt(lb.end_ms), color=color, alpha=0.15,
                   label=("labelled outage" if lb.is_outage else "labelled flood")
                   if n == 0 or lb.is_outage != panel.labels[n - 1].is_outage else None)
    top = max(reports + high + [1])
    seen: set[str] = set()
    for n, inc in enumerate(panel.incidents):
        color = "tab:purple" if inc.severity == "critical" else "tab:orange"
        where = f" in {inc.region}" if inc.region else ""
        label = f"incident{where} ({inc.severity})"
        ax.hlines(top * (1.04 + 0.04 * n), _dt(inc.start_ms), _dt(inc.end_ms), color=color,
                  lw=5, label=label if label not in seen else None)
        seen.add(label)
    ax.set_xlim(_dt(lo), _dt(hi))
    ax.set_ylim(0, top * (1.12 + 0.04 * len(panel.incidents)))
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.set_ylabel("reports")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
    ax.legend(fontsize=7, loc="upper left", ncols=2)
