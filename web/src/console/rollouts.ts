// Roll-outs: plan one from a published release, approve it (a second person), pause, resume or
// roll it back, and watch each step's health gate as it is judged: the timeline and the
// figures of every verdict, charted. The list follows the registry while the page is open.

import { toJsonString } from "@bufbuild/protobuf";
import { describe, gateway, withRefresh, type Session } from "../api.js";
import { clear, h, labelled, on } from "../dom.js";
import { RolloutSchema, type AuditEntry, type Rollout } from "../gen/parley/patch/v1/patch_pb.js";
import { lineChart } from "./chart.js";
import { whenMs } from "./format.js";
import { actorName, actorUserId, learnNames, personName } from "./names.js";
import { onSubmit, page } from "./page.js";
import { mayRollOut } from "./roles.js";
import { table } from "./table.js";

const RULE =
  "Four eyes: a roll-out starts only once a second person approves it. The registry refuses an " +
  "approval from whoever planned the roll-out or published its release, and from any role " +
  "without the patch-approve permission (it is held by operator and admin).";

const RELEASES_EVERY_MS = 15_000;
const ENDED = new Set(["done", "rolled_back"]); // a roll-out that changed what runs, for the last time

type Command = "approveRollout" | "pauseRollout" | "resumeRollout" | "rollbackRollout";

export class RolloutsPage {
  readonly element: HTMLElement;
  private readonly list = h("div", { class: "rollouts" });
  private readonly cards = new Map<string, { shown: string; card: HTMLElement }>();
  private fillReleases: () => Promise<void> = async () => {}; // the plan form's, once it is shown
  private releasesAt = Infinity; // when fillReleases last ran (never: no plan form)
  private underWay = new Set<string>(); // "service version" of every roll-out not ended yet

  constructor(private readonly session: Session) {
    this.element = page(
      "rollouts",
      "Roll-outs",
      h("p", { class: "rule", id: "second-person-rule" }, RULE),
      this.list,
    );
  }

  async load(): Promise<void> {
    if (mayRollOut(this.session.role)) this.element.insertBefore(await this.planForm(), this.list);
    await this.refresh();
  }

  /** Newest first; a card is rebuilt only when its roll-out changed, so a reason being typed stays. */
  async refresh(): Promise<void> {
    const rollouts = [...(await withRefresh(() => gateway.listRollouts({}))).rollouts].reverse();
    if (rollouts.length === 0) {
      clear(this.list);
      this.list.append(h("p", { class: "hint" }, "No roll-out yet."));
      return;
    }
    await learnNames(
      rollouts.flatMap((r) => [r.plannedBy, r.approvedBy, ...r.audit.map((a) => actorUserId(a.actor))]),
    );
    const order: HTMLElement[] = [];
    const underWay = new Set(rollouts.filter((r) => !ENDED.has(r.state)).map((r) => `${r.service} ${r.toVersion}`));
    let ended = [...underWay].join() !== [...this.underWay].join(); // a plan made: offered no more
    this.underWay = underWay;
    for (const rollout of rollouts) {
      const shown = toJsonString(RolloutSchema, rollout);
      let entry = this.cards.get(rollout.rolloutId);
      if (entry === undefined || entry.shown !== shown) {
        if (entry !== undefined && ENDED.has(rollout.state)) ended = true;
        entry = { shown, card: this.card(rollout) };
        this.cards.set(rollout.rolloutId, entry);
      }
      order.push(entry.card);
    }
    clear(this.list);
    this.list.append(...order);
    // What runs changes when a roll-out ends, and again when the registry drops the instances it
    // replaced: read again then, and every RELEASES_EVERY_MS (a failed read leaves the list).
    if (ended || Date.now() - this.releasesAt > RELEASES_EVERY_MS) await this.fillReleases().catch(() => undefined);
  }

  private async planForm(): Promise<HTMLElement> {
    const choice = h("select", { id: "plan-release" });
    const reason = h("input", { id: "plan-reason", type: "text", maxlength: 500 });
    const submit = h("button", { type: "submit" }, "Plan roll-out");
    const none = h("p", { class: "hint", id: "plan-none" });
    const result = h("p", { class: "error", role: "alert" });
    const form = h(
      "form",
      { class: "plan" },
      h("h3", {}, "Plan a roll-out"),
      ...labelled("Release", choice),
      ...labelled("Reason (optional)", reason),
      submit,
      none,
      result,
    );
    // Filled again whenever a roll-out ends: what it rolled out then runs everywhere.
    this.fillReleases = async () => {
      this.releasesAt = Date.now();
      const published = (await withRefresh(() => gateway.listReleases({}))).releases;
      // A release every live instance of its service already runs is nothing to roll out.
      const running = await runningEverywhere();
      // Nor one a roll-out is already taking there (a second plan would be refused).
      const releases = published.filter(
        (r) => !running.has(`${r.service} ${r.version}`) && !this.underWay.has(`${r.service} ${r.version}`),
      );
      const picked = choice.value;
      clear(choice);
      for (const r of releases) {
        const name = `${r.service} ${r.version}`;
        choice.append(h("option", { value: name, selected: name === picked }, name));
      }
      submit.disabled = releases.length === 0;
      none.textContent =
        releases.length > 0
          ? ""
          : published.length === 0
            ? "No release is published yet (parley patch publish)."
            : "Every published release already runs on all its instances (parley patch publish a new one).";
    };
    await this.fillReleases();
    onSubmit(form, result, async () => {
      const [service, toVersion] = choice.value.split(" ");
      await withRefresh(() => gateway.planRollout({ service, toVersion, reason: reason.value }));
      result.textContent = "";
      form.reset(); // planned: the form is ready for the next one
      await this.refresh();
    });
    return form;
  }

  private card(r: Rollout): HTMLElement {
    const error = h("p", { class: "error", role: "alert" });
    const reasonId = `reason-${r.rolloutId}`;
    const reason = h("input", {
      id: reasonId,
      type: "text",
      maxlength: 500,
      placeholder: "why (kept on the audit trail)",
      "aria-label": `Reason for roll-out ${r.rolloutId}`,
    });
    const buttons = this.actions(r, reason, error);
    const done = r.steps.filter((s) => s.drained).length;
    return h(
      "article",
      { class: "rollout", "data-rollout-id": r.rolloutId, "data-state": r.state, "aria-label": `Roll-out ${r.rolloutId}` },
      h("h3", {}, `${r.service} ${r.fromVersion || "?"} → ${r.toVersion}`),
      h("p", {}, "Roll-out ", h("code", {}, r.rolloutId), " · state ", h("strong", { class: "rollout-state" }, r.state)),
      h("p", { class: "hint" }, this.people(r)),
      r.rollbackReason ? h("p", { class: "error" }, `Rolled back: ${r.rollbackReason}`) : null,
      h("p", { class: "hint" }, `${done}/${r.oldInstances.length} instances replaced`),
      buttons.length
        ? h("div", { class: "actions" }, h("label", { for: reasonId }, "Reason (optional)"), reason, ...buttons)
        : null,
      error,
      r.steps.length
        ? table(
            `Steps of roll-out ${r.rolloutId}`,
            ["Step", "Replaces", "New instance", "Gate", "Share", "Old drained"],
            r.steps.map((s, i) => ({
              cells: [
                i === 0 ? "canary" : `step ${i}`,
                s.replacesInstance,
                s.newInstance || "-",
                s.gate,
                s.weight ? `${s.weight}%` : "-",
                s.drained ? "yes" : "no",
              ],
            })),
            "",
          )
        : null,
      gateCharts(r),
      h("h4", {}, "Timeline"),
      h("ol", { class: "timeline" }, ...r.audit.map(timelineItem)),
    );
  }

  private people(r: Rollout): string {
    const me = this.session.userId;
    const name = (id: string) => (id === me ? `${personName(id)} (you)` : personName(id));
    const planned = `Planned by ${name(r.plannedBy)}`;
    if (r.approvedBy) return `${planned}, approved by ${name(r.approvedBy)}.`;
    if (r.state !== "planned") return `${planned}.`;
    if (r.plannedBy === me) return `${planned}. Waiting for a second person to approve: you planned it, so you may not.`;
    return r.releasePublishedBy === me
      ? `${planned}. Waiting for a second person to approve: you published its release, so you may not.`
      : `${planned}. Waiting for approval by a second person.`;
  }

  private actions(r: Rollout, reason: HTMLInputElement, error: HTMLElement): HTMLButtonElement[] {
    if (!mayRollOut(this.session.role)) return [];
    const offered: [string, Command, boolean][] = [
      ["Approve", "approveRollout", r.state === "planned"],
      ["Pause", "pauseRollout", ["approved", "canary", "production"].includes(r.state)],
      ["Resume", "resumeRollout", r.state === "paused"],
      ["Roll back", "rollbackRollout", ["planned", "approved", "canary", "production", "paused"].includes(r.state)],
    ];
    return offered
      .filter(([, , shown]) => shown)
      .map(([label, command]) => {
        // The planner and the release's publisher may not approve (the card says so; the
        // registry refuses it anyway).
        const me = this.session.userId;
        const own = command === "approveRollout" && (r.plannedBy === me || r.releasePublishedBy === me);
        const button = h(
          "button",
          { type: "button", class: "small", disabled: own, title: own ? "Yours: a second person approves" : undefined },
          label,
        );
        on(button, "click", () => {
          void (async () => {
            try {
              await withRefresh(() => gateway[command]({ rolloutId: r.rolloutId, reason: reason.value }));
              error.textContent = "";
              await this.refresh();
            } catch (err) {
              error.textContent = describe(err);
            }
          })();
        });
        return button;
      });
  }
}

/** "service version" of each release every live instance of its service runs (none when the
 * fleet cannot be read: then every release is offered). */
async function runningEverywhere(): Promise<Set<string>> {
  const fleet = await withRefresh(() => gateway.listInstances({})).catch(() => null);
  const versions = new Map<string, Set<string>>();
  for (const i of fleet?.instances ?? []) {
    const beat = i.lastHeartbeat;
    if (i.stale || beat === undefined) continue;
    const seen = versions.get(beat.service) ?? new Set<string>();
    seen.add(beat.version);
    versions.set(beat.service, seen);
  }
  return new Set(
    [...versions].filter(([, seen]) => seen.size === 1).map(([service, seen]) => `${service} ${[...seen][0]}`),
  );
}

function timelineItem(entry: AuditEntry): HTMLElement {
  return h(
    "li",
    { class: `event ${entry.event}` },
    h("time", {}, whenMs(entry.at)),
    " ",
    h("span", { class: "actor" }, actorName(entry.actor)),
    " ",
    h("strong", {}, entry.event),
    entry.detail ? ` ${entry.detail}` : "",
  );
}

/** Each gate verdict's error rate and p99, the new instance beside the old ones, as charts and
 * as a table of the same figures. */
function gateCharts(r: Rollout): HTMLElement | null {
  const verdicts = r.audit.filter((a) => a.gate !== undefined).map((a) => a.gate!);
  if (verdicts.length === 0) return null;
  const labels = verdicts.map((g) => `${g.step === 0 ? "canary" : `step ${g.step}`} ${g.weight}%`);
  const marks = verdicts.map((g): "passed" | "failed" => (g.passed ? "passed" : "failed"));
  const rate = (errors: bigint, calls: bigint) => (calls > 0n ? (100 * Number(errors)) / Number(calls) : null);
  // A p99 of no calls is no figure: the registry sends 0 then, which is not 0 ms.
  const p99 = (ms: number, calls: bigint) => (calls > 0n ? `${ms.toFixed(0)} ms` : "no calls");
  return h(
    "figure",
    { class: "gates" },
    h("figcaption", {}, `Health gates of roll-out ${r.rolloutId}: the new instance (canary) against the old (stable)`),
    lineChart({
      title: "Error rate",
      unit: "%",
      labels,
      marks,
      series: [
        { name: "canary", className: "canary", values: verdicts.map((g) => rate(g.canaryErrors, g.canaryCalls)) },
        { name: "stable", className: "stable", values: verdicts.map((g) => rate(g.stableErrors, g.stableCalls)) },
      ],
    }),
    lineChart({
      title: "p99 latency",
      unit: "ms",
      labels,
      marks,
      series: [
        { name: "canary", className: "canary", values: verdicts.map((g) => (g.canaryCalls > 0n ? g.canaryP99Ms : null)) },
        { name: "stable", className: "stable", values: verdicts.map((g) => (g.stableCalls > 0n ? g.stableP99Ms : null)) },
      ],
    }),
    table(
      `Gate figures of roll-out ${r.rolloutId}`,
      ["Gate", "Verdict", "Window", "Canary calls", "Canary errors", "Canary p99", "Stable calls", "Stable errors", "Stable p99"],
      verdicts.map((g, i) => ({
        className: `gate-row ${marks[i]}`,
        cells: [
          labels[i],
          marks[i],
          `${g.windowS.toFixed(1)} s`,
          String(g.canaryCalls),
          String(g.canaryErrors),
          p99(g.canaryP99Ms, g.canaryCalls),
          String(g.stableCalls),
          String(g.stableErrors),
          p99(g.stableP99Ms, g.stableCalls),
        ],
      })),
      "",
    ),
  );
}
