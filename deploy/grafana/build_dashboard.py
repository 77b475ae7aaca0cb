#!/usr/bin/env python3
"""Build dashboards/edgecam-fleet.json with Grafana Labs' grafana-foundation-sdk (PyPI).

Regenerate after editing and commit both: `python deploy/grafana/build_dashboard.py`.
`--check` exits 1 when the committed JSON differs from what this script builds (CI uses it).
Panel queries read the recording rules of deploy/prometheus/rules/recording.yml where one exists,
so the dashboard needs that Prometheus, not just any scrape of the cameras.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

OUTPUT = Path(__file__).parent / "dashboards" / "edgecam-fleet.json"
# The uid provisioning/datasources/prometheus.yaml gives the datasource.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="edgecam-prometheus")

# Label matchers every panel shares. `=~` because the variables are multi-value with "All".
HOST = 'target=~"$target", instance=~"$instance"'
CAMERA = f'{HOST}, camera=~"$camera"'
MODEL = f'{HOST}, model=~"$model"'


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def graph(title: str, unit: str, *queries: tuple[str, str], width: int = 8) -> timeseries.Panel:
    """A time series panel of `queries` (expr, legend)."""
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def single(title: str, expr: str, unit: str = "none") -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6)
    return panel.with_target(query(expr, "", "A").instant())


def variable(name: str, label: str, query_text: str) -> dash.QueryVariable:
    """A multi-value label_values() variable with "All", refreshed when the time range changes."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def fleet_row(builder: dash.Dashboard) -> dash.Dashboard:
    p99 = "camera_stage:edgecam_stage_latency_seconds:p99_1m"
    return (
        builder.with_row(dash.Row("Fleet"))
        .with_panel(single("Servers up", f'sum(up{{job="edgecam", {HOST}}})'))
        .with_panel(single("Cameras up", f"sum(edgecam_camera_up{{{CAMERA}}})"))
        .with_panel(single("Cameras down", f"sum(1 - edgecam_camera_up{{{CAMERA}}})"))
        .with_panel(
            single(
                "Firing edgecam alerts",
                'count(ALERTS{alertstate="firing", alertname=~"Edgecam.*"}) or vector(0)',
            )
        )
        .with_panel(
            graph(
                "FPS per camera",
                "none",
                (f"edgecam_camera_fps{{{CAMERA}}}", "{{instance}} {{camera}}"),
                width=12,
            )
        )
        .with_panel(
            graph(
                "p99 latency per camera (capture → prediction)",
                "s",
                (f'{p99}{{{CAMERA}, stage="total"}}', "{{instance}} {{camera}}"),
                width=12,
            )
        )
    )


def camera_row(builder: dash.Dashboard) -> dash.Dashboard:
    """One row per selected camera (Grafana repeats it over $camera)."""
    stage = "camera_stage:edgecam_stage_latency_seconds"
    rate = "[$__rate_interval]"
    return (
        builder.with_row(dash.Row("Camera $camera").repeat("camera"))
        .with_panel(
            graph(
                "Frames per second",
                "none",
                (f"camera:edgecam_frames:rate1m{{{CAMERA}}}", "inferred"),
                (f"camera:edgecam_frames_captured:rate1m{{{CAMERA}}}", "captured"),
                (f"edgecam_camera_fps{{{CAMERA}}}", "server fps gauge"),
            )
        )
        .with_panel(
            graph(
                "Latency per stage (p50 / p99)",
                "s",
                (f"{stage}:p50_1m{{{CAMERA}}}", "{{stage}} p50"),
                (f"{stage}:p99_1m{{{CAMERA}}}", "{{stage}} p99"),
            )
        )
        .with_panel(
            graph(
                "Dropped frames by reason",
                "short",
                (f"camera_reason:edgecam_frames_dropped:rate1m{{{CAMERA}}}", "{{reason}}"),
                (f"rate(edgecam_stream_predictions_dropped_total{{{CAMERA}}}{rate})", "stream predictions"),
            )
        )
        .with_panel(
            graph(
                "Reconnects and errors",
                "short",
                (f"rate(edgecam_camera_reconnects_total{{{CAMERA}}}{rate})", "reconnects {{camera}}"),
                (
                    f"sum by (camera, reason) (rate(edgecam_camera_errors_total{{{CAMERA}}}{rate}))",
                    "{{reason}} {{camera}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Accuracy and shadow agreement",
                "percentunit",
                (f"camera:edgecam_predictions_correct:ratio_rate30m{{{CAMERA}}}", "accuracy, last 30 m"),
                (f"edgecam_online_accuracy_ratio{{{CAMERA}}}", "accuracy since start"),
                (f'edgecam_shadow_agreement_ratio{{{CAMERA}, model=~"$model"}}', "agreement {{model}}"),
            )
        )
        .with_panel(
            graph("Last frame age", "s", (f"edgecam_camera_last_frame_age_seconds{{{CAMERA}}}", "{{camera}}"))
        )
    )


def server_row(builder: dash.Dashboard) -> dash.Dashboard:
    return (
        builder.with_row(dash.Row("Models and servers"))
        .with_panel(
            graph(
                "Model memory",
                "bytes",
                (f"edgecam_model_memory_bytes{{{MODEL}}}", "{{instance}} {{model}} v{{version}} {{kind}}"),
            )
        )
        .with_panel(
            graph(
                "Server resident memory (RSS)",
                "bytes",
                (f'process_resident_memory_bytes{{job="edgecam", {HOST}}}', "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "ModelInfer requests",
                "reqps",
                (f"model_code:edgecam_requests:rate1m{{{MODEL}}}", "{{model}} {{code}}"),
                (f"model:edgecam_request_latency_seconds:p99_1m{{{MODEL}}}", "p99 latency (s) {{model}}"),
            )
        )
    )


def build() -> dict[str, Any]:
    builder = (
        dash.Dashboard("edgecam fleet")
        .uid("edgecam-fleet")
        .description("Cameras, latency, accuracy and memory of every edgecam server (deploy/grafana).")
        .tags(["edgecam"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(variable("target", "Target", "label_values(edgecam_build_info, target)"))
        .with_variable(
            variable(
                "instance", "Camera box", 'label_values(edgecam_build_info{target=~"$target"}, instance)'
            )
        )
        .with_variable(variable("camera", "Camera", f"label_values(edgecam_camera_up{{{HOST}}}, camera)"))
        .with_variable(
            variable("model", "Model", f"label_values(edgecam_model_memory_bytes{{{HOST}}}, model)")
        )
    )
    builder = server_row(camera_row(fleet_row(builder)))
    model: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for var in model["templating"]["list"]:
        # The SDK writes interval-variable fields (auto, auto_count, auto_min) on every variable;
        # @grafana/schema's VariableModel does not allow them on a query variable.
        for key in ("auto", "auto_count", "auto_min"):
            var.pop(key, None)
    # The SDK leaves ids unset (rows at 0); stable unique ids keep panel links (?viewPanel=N) working.
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    return model


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
