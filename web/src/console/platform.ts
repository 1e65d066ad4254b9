// Health: the platform's own figures over the last hour, each as a chart: storage's archive lag
// per stream, messages posted per second, live streams open at the gateways, failed logins per
// minute. The registry computes them from the figures the services' heartbeats carry
// (GetServiceHealth's `platform` series); a step no kept heartbeat tells has no point.

import { gateway, withRefresh } from "../api.js";
import { h } from "../dom.js";
import type { PlatformSeries } from "../gen/parley/fleet/v1/fleet_pb.js";
import { lineChart, type Series } from "./chart.js";
import { span } from "./format.js";
import { page } from "./page.js";

const WINDOW_S = 3600;
const POINTS = 60;
const LABEL_EVERY = 10;

// The charts in order, what each says, and the unit the registry gives it.
const FIGURES: { figure: string; title: string; hint: string }[] = [
  { figure: "archive_lag_seconds", title: "Archive lag", hint: "how long the oldest event not yet archived has waited, per stream" },
  { figure: "messages_per_second", title: "Messages", hint: "messages posted per second, every messaging instance" },
  { figure: "live_streams", title: "Live streams", hint: "live streams open at the gateways" },
  { figure: "login_failures_per_minute", title: "Login failures", hint: "failed logins per minute" },
];

export async function platformPage(): Promise<HTMLElement> {
  const health = await withRefresh(() => gateway.getServiceHealth({ windowSeconds: WINDOW_S, points: POINTS }));
  return page(
    "platform",
    "Health",
    h(
      "p",
      { class: "hint" },
      `The platform's own figures over the last ${span(WINDOW_S)}, in steps of ${span(health.stepSeconds)}, ` +
        "from the figures every instance's heartbeats carry. Each service's error rate and p99 latency are on the Fleet page.",
    ),
    h(
      "div",
      { class: "platform-charts" },
      ...FIGURES.map((f) =>
        figureChart(
          f,
          health.platform.filter((s) => s.figure === f.figure),
        ),
      ),
    ),
  );
}

function figureChart(f: (typeof FIGURES)[number], lines: PlatformSeries[]): HTMLElement {
  const points = lines[0]?.points ?? [];
  const labels = points.map((p) => new Date(p.at * 1000).toISOString().slice(11, 16));
  const series: Series[] = lines.map((line, k) => ({
    name: line.label || f.title.toLowerCase(),
    className: `series-${k % 6}`,
    values: line.points.map((p) => (p.known ? p.value : null)),
  }));
  const latest = lines
    .map((line) => {
      const known = line.points.filter((p) => p.known);
      const last = known[known.length - 1];
      return last ? `${line.label ? `${line.label} ` : ""}${round(last.value)}` : "";
    })
    .filter(Boolean);
  const known = series.flatMap((s) => s.values.filter((v): v is number => v !== null));
  return h(
    "figure",
    // The highest figure of the hour ("" without any), for a test or a quick look.
    { class: "platform-health", "data-figure": f.figure, "data-peak": known.length ? round(Math.max(...known)) : "" },
    h(
      "figcaption",
      {},
      h("strong", {}, f.title),
      `: ${f.hint}. ` + (latest.length ? `Now: ${latest.join(", ")} ${lines[0].unit}.` : "No instance reports it yet."),
    ),
    lineChart({ title: f.title, unit: lines[0]?.unit ?? "", labels, labelEvery: LABEL_EVERY, series }),
  );
}

function round(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}
