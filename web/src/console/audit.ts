// Audit: the chain's state (storage's audit monitor's last verdict over the archive's audit
// records: numbering, links, hashes, signatures; and the newest operator checkpoint), the security
// event stream live (security.ts), and the trail queried by actor, target and time (storage answers a
// security-auditor only, and shows an auditor what people wrote to each other as metadata only).

import { describe, gateway, withRefresh } from "../api.js";
import { append, clear, h, on } from "../dom.js";
import type { ArchivedEvent } from "../gen/parley/storage/v1/storage_pb.js";
import { span, when, whenIso } from "./format.js";
import { actorName, actorUserId, learnNames, personName } from "./names.js";
import { securityPanel } from "./security.js";
import { table } from "./table.js";

const LIMIT = 200;
const PEOPLE = new Set(["user", "security"]); // aggregates whose id is a user id

/** The page, and how to stop its live stream when the page is left. */
export function auditPage(): { element: HTMLElement; stop(): void } {
  const actor = h("input", { id: "audit-actor", type: "text", placeholder: "user id, or service:<name>" });
  const target = h("input", { id: "audit-target", type: "text", placeholder: "aggregate id (user, channel)" });
  const since = h("input", { id: "audit-since", type: "datetime-local" });
  const until = h("input", { id: "audit-until", type: "datetime-local" });
  const results = h("div", { class: "audit-results", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "query" },
    h("label", { for: "audit-actor" }, "Actor"),
    actor,
    h("label", { for: "audit-target" }, "Target"),
    target,
    h("label", { for: "audit-since" }, "From (UTC)"),
    since,
    h("label", { for: "audit-until" }, "Until (UTC)"),
    until,
    h("button", { type: "submit" }, "Search"),
  );
  // Only the newest search is shown: the first (unfiltered) one may answer after a later one.
  let latest = 0;
  const run = async () => {
    const mine = ++latest;
    const query = {
      actor: actor.value.trim(),
      target: target.value.trim(),
      sinceNs: instantNs(since.value),
      untilNs: instantNs(until.value),
      limit: LIMIT,
    };
    try {
      const page = await withRefresh(() => gateway.queryAudit(query));
      await learnNames(
        page.events.flatMap((e) => [actorUserId(e.actor), PEOPLE.has(e.aggregateType) ? e.aggregateId : ""]),
      );
      if (mine !== latest) return;
      clear(results);
      results.dataset.actor = query.actor; // which search the table shows
      results.append(
        h("p", { class: "hint" }, `${page.events.length} events${page.hasMore ? ` (the first ${LIMIT}; narrow the search)` : ""}.`),
        table(
          "Audit events",
          ["When (UTC)", "Stream", "Event", "Aggregate", "Actor", "Content"],
          page.events.map((e) => ({ key: `${e.stream}:${e.streamSeq}`, cells: row(e) })),
          "No event matches.",
        ),
      );
    } catch (err) {
      if (mine !== latest) return;
      clear(results);
      results.append(h("p", { class: "error", role: "alert" }, describe(err)));
    }
  };
  on(form, "submit", (event) => {
    event.preventDefault();
    void run();
  });
  void run();
  const security = securityPanel();
  const element = h(
    "section",
    { "aria-labelledby": "audit-title" },
    h("h2", { id: "audit-title" }, "Audit"),
    chainState(),
    security.element,
    h("h3", {}, "Search"),
    form,
    results,
  );
  return { element, stop: security.stop };
}

/** Storage's audit monitor's verdict and the newest operator checkpoint, and a button for a fresh run. */
function chainState(): HTMLElement {
  const state = h("div", { id: "chain-state", "aria-live": "polite" }, h("p", { class: "hint" }, "Verifying…"));
  const checkpoint = h("div", { id: "chain-checkpoint", "aria-live": "polite" });
  const again = h("button", { type: "button", class: "small" }, "Verify again");
  const verify = async (verifyNow: boolean) => {
    try {
      const v = await withRefresh(() => gateway.verifyAudit({ verifyNow }));
      clear(state);
      state.dataset.intact = String(v.intact);
      state.dataset.verifiedAt = String(v.verifiedAt);
      const behind = v.headIndex > v.lastIndex ? ` The live chain is at #${v.headIndex}: the archive trails it.` : "";
      append(
        state,
        h(
          "p",
          { class: v.intact ? "chain intact" : "chain tampered" },
          v.intact
            ? `Audit chain intact: ${v.records} records, #1..#${v.lastIndex}, every signature valid.`
            : `Audit chain TAMPERED: ${v.findings.length} finding(s) over ${v.records} records.`,
        ),
        v.findings.length ? h("ul", { class: "findings" }, ...v.findings.map((f) => h("li", {}, f))) : null,
        h(
          "p",
          { class: "hint" },
          `Last record ${when(v.lastRecordedAt)}; verified ${when(v.verifiedAt)} by storage's audit monitor ` +
            `(archived records, keys and head from the live streams; every ${span(v.verifyIntervalSeconds)}).${behind}`,
        ),
      );
      clear(checkpoint);
      const c = v.lastCheckpoint;
      checkpoint.dataset.matches = c ? String(c.matches) : "none";
      append(
        checkpoint,
        c
          ? h(
              "p",
              { class: c.matches ? "chain intact" : "chain tampered" },
              `Last checkpoint: record #${c.chainIndex} of ${when(c.recordTime)}, taken ${whenIso(c.takenAt)} ` +
                `(${c.source}): ${c.matches ? "the archive still holds it" : "the archive no longer matches it"}.`,
            )
          : h("p", { class: "hint" }, "Last checkpoint: none yet (", h("code", {}, "parley audit checkpoint"), " writes one)."),
        v.checkpointErrors.length ? h("ul", { class: "hint" }, ...v.checkpointErrors.map((e) => h("li", {}, e))) : null,
      );
    } catch (err) {
      clear(state);
      state.append(h("p", { class: "error", role: "alert" }, describe(err)));
    }
  };
  on(again, "click", () => void verify(true));
  void verify(false);
  return h("div", { class: "chain-panel" }, h("h3", {}, "Chain"), state, checkpoint, again);
}

function instantNs(local: string): bigint {
  if (!local) return 0n;
  return BigInt(Date.parse(`${local}Z`)) * 1_000_000n;
}

function row(e: ArchivedEvent): string[] {
  const at = new Date(Number(e.occurredAtNs / 1_000_000n)).toISOString().replace("T", " ").replace("Z", "");
  const content = e.erased ? "erased" : e.unreadable ? "UNREADABLE (altered?)" : e.withheld ? "withheld" : "kept";
  // A user's or a security record's aggregate is a person (named when known); a channel's is not.
  const aggregate = PEOPLE.has(e.aggregateType) ? personName(e.aggregateId) : e.aggregateId;
  const who = actorName(e.actor);
  return [at, `${e.stream} #${e.streamSeq}`, e.eventType, `${e.aggregateType} ${aggregate}`, who, content];
}
