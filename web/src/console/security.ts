// The security event stream, live (Gateway.WatchSecurityEvents): logins, lockouts, revocations,
// role changes and the detector's anomalies, the recent ones first and then each as the archive
// takes it, filtered by kind and actor. Storage ends the stream when the access token no longer
// holds; the panel refreshes the token and follows again, without repeating what it shows.

import { Code, ConnectError } from "@connectrpc/connect";
import { describe, gateway, refresh } from "../api.js";
import { clear, h, labelled, on } from "../dom.js";
import type { SecurityEventNotice } from "../gen/parley/storage/v1/storage_pb.js";
import { when } from "./format.js";
import { actorName, actorUserId, idsIn, learnNames, namedText, personName } from "./names.js";
import { page } from "./page.js";
import { grid } from "./table.js";

const SHOWN = 200; // rows kept on the page, newest first
const BACKLOG = 50;
const MAX_BACKOFF_MS = 15_000;
// What a person filters by, as the kinds auth records (parley_auth) and the detector's findings.
const KINDS: [string, string[]][] = [
  ["every kind", []],
  ["logins", ["login_succeeded", "login_failed", "mfa_failed", "logout"]],
  ["failed logins", ["login_failed", "mfa_failed"]],
  ["lockouts", ["lockout", "lockout_cleared"]],
  ["revocations", ["session_revoked", "refresh_token_reuse", "account_disabled"]],
  ["role changes", ["role_assigned", "mfa_policy_changed"]],
  ["anomalies", ["anomaly"]],
];

export interface SecurityPanel {
  element: HTMLElement;
  stop(): void;
}

export function securityPanel(): SecurityPanel {
  const kind = h("select", { id: "security-kind" }, ...KINDS.map(([label], i) => h("option", { value: String(i) }, label)));
  const actor = h("input", { id: "security-actor", type: "text", placeholder: "username, user id, or service:<name>" });
  const state = h("p", { class: "hint", id: "security-state", "aria-live": "polite" }, "Connecting…");
  const body = h("tbody", {});
  const headers = ["When (UTC)", "Kind", "Who", "Actor", "Source", "Detail"];
  const list = grid("Security events, newest first", headers, body, "grid security-events");
  const form = h(
    "form",
    { class: "query" },
    ...labelled("Kind", kind),
    ...labelled("Person or service", actor),
    h("button", { type: "submit" }, "Follow"),
  );
  let abort: AbortController | null = null;
  let stopped = false;
  let generation = 0; // bumps on each new filter: an older stream's rows never mix in

  const follow = async () => {
    abort?.abort();
    const mine = ++generation;
    const filter = { kinds: KINDS[Number(kind.value)][1], actor: actor.value.trim(), backlog: BACKLOG };
    clear(body);
    list.dataset.actor = filter.actor;
    list.dataset.kinds = filter.kinds.join(",");
    const shown = new Set<string>();
    let failures = 0;
    while (!stopped && mine === generation) {
      abort = new AbortController();
      try {
        state.dataset.state = "connecting";
        state.textContent = "Connecting…";
        for await (const notice of gateway.watchSecurityEvents(filter, { signal: abort.signal })) {
          if (mine !== generation) return;
          if (notice.caughtUp) {
            state.dataset.state = "live";
            state.textContent = "Live: new events appear at the top.";
            failures = 0;
            continue;
          }
          const key = `${notice.stream}:${notice.streamSeq}`;
          if (shown.has(key)) continue; // the backlog again after a reconnect
          shown.add(key);
          await learnNames([notice.userId, actorUserId(notice.actor), ...idsIn(notice.detail)]);
          body.prepend(row(notice, key));
          while (body.rows.length > SHOWN) body.deleteRow(-1);
        }
      } catch (err) {
        if (stopped || mine !== generation) return;
        const e = ConnectError.from(err);
        if (e.code === Code.PermissionDenied || e.code === Code.InvalidArgument) {
          state.dataset.state = "refused";
          state.textContent = describe(err);
          return;
        }
        // An expired token ends the stream (storage re-checks it): refresh and follow again.
        if ((await refresh().catch(() => null)) === null) {
          state.dataset.state = "signed-out";
          state.textContent = "Signed out: log in again";
          return;
        }
      }
      if (stopped || mine !== generation) return;
      failures += 1;
      const wait = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(failures, 6));
      state.dataset.state = "reconnecting";
      state.textContent = `Reconnecting in ${Math.round(wait / 1000)} s…`;
      await new Promise((resolve) => window.setTimeout(resolve, wait));
    }
  };
  on(form, "submit", (event) => {
    event.preventDefault();
    void follow();
  });
  void follow();
  return {
    element: h(
      "div",
      { class: "security-panel" },
      h("h3", {}, "Security events (live)"),
      form,
      state,
      list,
    ),
    stop: () => {
      stopped = true;
      abort?.abort();
    },
  };
}

function row(n: SecurityEventNotice, key: string): HTMLTableRowElement {
  const who = n.userId ? personName(n.userId) : n.username || "-";
  const cells = [when(n.occurredAt), n.kind, who, actorName(n.actor), n.source || "-", namedText(n.detail)];
  return h(
    "tr",
    { class: `security-event ${n.kind.split(":")[0]}`, "data-key": key, "data-kind": n.kind },
    ...cells.map((c) => h("td", {}, c)),
  );
}

/** The page of an admin or owner: the live stream on its own (the audit trail is the auditor's). */
export function securityPage(): SecurityPanel {
  const panel = securityPanel();
  return {
    element: page("security", "Security events", panel.element),
    stop: panel.stop,
  };
}
