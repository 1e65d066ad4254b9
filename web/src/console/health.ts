// Health: each service's error rate and p99 latency over the last ten minutes, in steps, as
// charts beside the fleet. The figures are the ones the roll-out health gates judge (the
// registry's GetServiceHealth, from the instances' heartbeat counters and latency histograms).

import { gateway, withRefresh } from "../api.js";
import { h } from "../dom.js";
import type { ServiceHealth } from "../gen/parley/fleet/v1/fleet_pb.js";
import { lineChart } from "./chart.js";
import { span } from "./format.js";

const WINDOW_S = 600;
const POINTS = 30;
const LABEL_EVERY = 6;

export async function healthCharts(): Promise<HTMLElement> {
  const health = await withRefresh(() => gateway.getServiceHealth({ windowSeconds: WINDOW_S, points: POINTS }));
  return h(
    "section",
    { class: "health", "aria-labelledby": "health-title" },
    h("h3", { id: "health-title" }, "Service health"),
    h(
      "p",
      { class: "hint" },
      `Each service's error rate and p99 latency over the last ${span(WINDOW_S)}, in steps of ` +
        `${span(health.stepSeconds)}: every instance's calls summed, as the roll-out health gates count them. ` +
        "A step without calls has no point.",
    ),
    ...health.services.map(serviceCharts),
  );
}

function serviceCharts(s: ServiceHealth): HTMLElement {
  const labels = s.points.map((p) => new Date(p.at * 1000).toISOString().slice(11, 19));
  const served = (f: (p: ServiceHealth["points"][number]) => number) =>
    s.points.map((p) => (p.calls > 0n ? f(p) : null));
  const calls = s.points.reduce((sum, p) => sum + p.calls, 0n);
  const errors = s.points.reduce((sum, p) => sum + p.errors, 0n);
  return h(
    "figure",
    { class: "service-health", "data-service": s.service },
    h("figcaption", {}, `${s.service}: ${calls} calls, ${errors} errors`),
    lineChart({
      title: `${s.service} error rate`,
      unit: "%",
      labels,
      labelEvery: LABEL_EVERY,
      series: [{ name: s.service, className: "service", values: served((p) => 100 * p.errorRate) }],
    }),
    lineChart({
      title: `${s.service} p99 latency`,
      unit: "ms",
      labels,
      labelEvery: LABEL_EVERY,
      series: [{ name: s.service, className: "service", values: served((p) => p.p99Ms) }],
    }),
  );
}
