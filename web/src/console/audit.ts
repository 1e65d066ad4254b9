// Audit: the chain's state (storage's audit monitor's last verdict over the archive's audit
// records: numbering, links, hashes, signatures; and the newest operator checkpoint), the security
// event stream live (security.ts), and the trail queried by actor, target and time (storage answers a
// security-auditor only, and shows an auditor what people wrote to each other as metadata only).

import { describe, gateway, withRefresh } from "../api.js";
import { append, clear, h, labelled, on } from "../dom.js";
import type { ArchivedEvent } from "../gen/parley/storage/v1/storage_pb.js";
import { span, when, whenIso } from "./format.js";
import { actorName, actorUserId, knownUserId, learnNames, personName } from "./names.js";
import { securityPanel } from "./security.js";
import { page } from "./page.js";
import { table } from "./table.js";

const LIMIT = 200;
const PEOPLE = new Set(["user", "security"]); // aggregates whose id is a user id

/** The page, and how to stop its live stream when the page is left. */
export function auditPage(): { element: HTMLElement; stop(): void } {
  const actor = h("input", { id: "audit-actor", type: "text", placeholder: "username, user id, or service:<name>" });
  const target = h("input", { id: "audit-target", type: "text", placeholder: "aggregate id (user, channel)" });
  const since = h("input", { id: "audit-since", type: "datetime-local" });
  const until = h("input", { id: "audit-until", type: "datetime-local" });
  const results = h("div", { class: "audit-results", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "query" },
    ...labelled("Actor", actor),
    ...labelled("Target", target),
    ...labelled("From (UTC)", since),
    ...labelled("Until (UTC)", until),
    h("button", { type: "submit" }, "Search"),
  );
  // Only the newest search is shown: the first (unfiltered) one may answer after a later one.
  let latest = 0;
  const run = async () => {
    const mine = ++latest;
    const typed = actor.value.trim();
    const who = await actorToQuery(typed);
    if (mine !== latest) return;
    if (who === null) {
      clear(results);
      results.dataset.actor = typed;
      results.append(
        h(
          "p",
          { class: "error", role: "alert" },
          `No account named "${typed}" that you may look up. The Actor field takes a username seen on this page, ` +
            "a user id (as in the Actor column), or service:<name>.",
        ),
      );
      return;
    }
    const query = {
      actor: who,
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
      results.dataset.actor = typed; // which search the table shows
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
  const element = page("audit", "Audit", chainState(), security.element, h("h3", {}, "Search"), form, results);
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
                `(${c.source.replace(/^checkpoint /, "")}): ${c.matches ? "the archive still holds it" : "the archive no longer matches it"}.`,
            )
          : h("p", { class: "hint" }, "Last checkpoint: none yet (", h("code", {}, "parley audit checkpoint"), " writes one)."),
        v.checkpointErrors.length
          ? h("ul", { class: "hint" }, ...v.checkpointErrors.map((e) => h("li", {}, ...withCode(e))))
          : null,
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

/** The archive's actor column holds ids: a username typed is resolved to its id (one seen on this
 * page, else FindUsers: people the caller shares a channel with, or the directory for users.read);
 * null when nobody by that name is found. */
async function actorToQuery(typed: string): Promise<string | null> {
  if (!typed || typed.includes(":") || /^[0-9a-f]{32}$/.test(typed)) return typed;
  const seen = knownUserId(typed);
  if (seen) return seen;
  const reply = await withRefresh(() => gateway.findUsers({ usernames: [typed] })).catch(() => null);
  const found = reply?.users.find((u) => u.username.toLowerCase() === typed.toLowerCase());
  return found ? found.userId : null;
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

/** Storage's messages mark commands with backticks: shown as code, not as literal backticks. */
function withCode(text: string): (string | HTMLElement)[] {
  return text.split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
}
