// Fleet: every instance the registry hears from, its heartbeat's age and the findings against it.
// One that fell silent is marked stale; one stopped on purpose (replaced by a roll-out) has left
// the registry's view, and so this page. Below, each service's health over time (health.ts).

import { gateway, withRefresh } from "../api.js";
import { h } from "../dom.js";
import type { InstanceStatus } from "../gen/parley/fleet/v1/fleet_pb.js";
import type { Finding } from "../gen/parley/patch/v1/patch_pb.js";
import { nowSeconds, span } from "./format.js";
import { healthCharts } from "./health.js";
import { page } from "./page.js";
import { table } from "./table.js";

export async function fleetPage(): Promise<HTMLElement> {
  const [fleet, findings, health] = await Promise.all([
    withRefresh(() => gateway.listInstances({})),
    withRefresh(() => gateway.listFindings({})),
    healthCharts(),
  ]);
  const byInstance = new Map<string, Finding[]>();
  for (const f of findings.findings) byInstance.set(f.instanceId, [...(byInstance.get(f.instanceId) ?? []), f]);
  const now = nowSeconds();
  const instances = [...fleet.instances].sort((a, b) => order(a).localeCompare(order(b)));
  const rows = instances.map((status) => {
    const beat = status.lastHeartbeat;
    const sent = beat?.sentAt ? Number(beat.sentAt.seconds) + beat.sentAt.nanos / 1e9 : 0;
    const against = byInstance.get(beat?.instanceId ?? "") ?? [];
    return {
      key: beat?.instanceId ?? "",
      className: status.stale ? "stale" : undefined,
      cells: [
        beat?.service ?? "",
        beat?.version ?? "",
        beat?.instanceId ?? "",
        beat?.host ?? "",
        status.stale ? `STALE (${beat?.health ?? ""})` : (beat?.health ?? ""),
        sent ? `${span(now - sent)} ago` : "-",
        against.length ? against.map((f) => `${f.advisoryId} (${f.priority})`).join(", ") : "none",
      ],
    };
  });
  const stale = instances.filter((i) => i.stale).length;
  return page(
    "fleet",
    "Fleet",
    h(
      "p",
      { class: "hint" },
      `${instances.length} instances${stale ? `, ${stale} stale (no heartbeat within the staleness window)` : ""}.`,
    ),
    table(
      "Service instances",
      ["Service", "Version", "Instance", "Host", "Health", "Heartbeat", "Findings"],
      rows,
      "No instance has sent a heartbeat yet.",
    ),
    health,
  );
}

function order(status: InstanceStatus): string {
  const beat = status.lastHeartbeat;
  return `${beat?.service ?? ""} ${beat?.instanceId ?? ""}`;
}
