// The user's own account: sessions (list, revoke), two-factor enrolment with a QR code and
// recovery codes, and an export of their data.

import QRCode from "qrcode";
import * as api from "./api.js";
import { gateway, withRefresh, type Session } from "./api.js";
import { append, clear, h, labelled, on } from "./dom.js";
import type { Session as AuthSession } from "./gen/parley/auth/v1/auth_pb.js";

export function renderSettings(main: HTMLElement, session: Session, message = ""): void {
  clear(main);
  const status = h("p", { class: "notice", role: "status" }, message);
  append(
    main,
    h("h2", { tabindex: "-1", id: "settings-title" }, "Settings"),
    status,
    sessionsSection(session, status),
    mfaSection(session, status),
    exportSection(session, status),
  );
}

function fail(status: HTMLElement): (err: unknown) => void {
  return (err) => {
    status.textContent = api.describe(err);
  };
}

function sessionsSection(session: Session, status: HTMLElement): HTMLElement {
  const list = h("ul", { class: "sessions" });
  const section = h("section", { "aria-labelledby": "sessions-title" }, h("h3", { id: "sessions-title" }, "Sessions"), list);
  const load = (): void => {
    withRefresh(() => gateway.listSessions({}))
      .then((reply) => {
        clear(list);
        for (const s of reply.sessions.filter((x) => !x.revoked)) {
          const here = s.sessionId === session.sessionId;
          const item = h("li", {}, `${here ? "This browser" : "Session"} · ${sessionFacts(s).join(" · ")} `);
          if (!here) {
            const revoke = h("button", { type: "button", class: "small" }, "Revoke");
            on(revoke, "click", () => {
              withRefresh(() => gateway.revokeSession({ sessionId: s.sessionId }))
                .then(load)
                .catch(fail(status));
            });
            item.appendChild(revoke);
          }
          list.appendChild(item);
        }
      })
      .catch(fail(status));
  };
  load();
  return section;
}

/** What auth recorded of a session: the address it logged in from, when, and its last renewal
 * (a client renews its token every few minutes while it is in use). */
function sessionFacts(s: AuthSession): string[] {
  const when = (unix: bigint): string => new Date(Number(unix) * 1000).toLocaleString();
  const address = s.source.replace(/^ipv[46]:/, ""); // gRPC's peer form, "ipv4:127.0.0.1"
  const facts = [`from ${address || "an unknown address"}`, `started ${when(s.startedAtUnix)}`];
  if (s.lastRefreshedAtUnix > s.startedAtUnix) facts.push(`last renewed ${when(s.lastRefreshedAtUnix)}`);
  return facts;
}

function mfaSection(session: Session, status: HTMLElement): HTMLElement {
  const area = h("div");
  const section = h("section", { "aria-labelledby": "mfa-title" }, h("h3", { id: "mfa-title" }, "Two-factor authentication"), area);
  if (session.mfaEnrolled) {
    // Known from the login (or refresh) answer: enrolling again would only be refused.
    area.appendChild(h("p", {}, "Two-factor authentication is on for this account: each login asks for a code."));
    return section;
  }
  const begin = h("button", { type: "button" }, "Set up two-factor authentication");
  on(begin, "click", () => {
    withRefresh(() => gateway.beginTotpEnrolment({}))
      .then(async (reply) => {
        const qr = await QRCode.toDataURL(reply.otpauthUri, { margin: 1, width: 200 });
        const code = h("input", { id: "totp-confirm", autocomplete: "one-time-code", inputmode: "numeric", required: true });
        const confirm = h("button", { type: "submit" }, "Confirm");
        const form = h(
          "form",
          { class: "small" },
          ...labelled("Code from your app", code),
          confirm,
        );
        on(form, "submit", (event) => {
          event.preventDefault();
          withRefresh(() => gateway.confirmTotpEnrolment({ totpCode: code.value.trim() }))
            .then((done) => {
              session.mfaEnrolled = true;
              status.textContent = ""; // an earlier wrong code is no longer the news
              clear(area);
              append(
                area,
                h("p", {}, "Two-factor authentication is on. Keep these recovery codes somewhere safe; each works once:"),
                h("ul", { class: "codes" }, ...done.recoveryCodes.map((c) => h("li", {}, h("code", {}, c)))),
              );
            })
            .catch(fail(status));
        });
        clear(area);
        append(
          area,
          h("p", {}, "Scan this code with an authenticator app, or type the key in by hand:"),
          h("img", { src: qr, alt: "QR code of the two-factor secret", width: 200, height: 200 }),
          h("p", {}, h("code", { class: "secret" }, reply.secretBase32)),
          form,
        );
        code.focus();
      })
      .catch(fail(status));
  });
  area.appendChild(begin);
  return section;
}

function exportSection(session: Session, status: HTMLElement): HTMLElement {
  const button = h("button", { type: "button" }, "Download my data");
  on(button, "click", () => {
    withRefresh(() => gateway.exportUserData({ userId: session.userId }))
      .then((reply) => {
        const blob = new Blob([new Uint8Array(reply.archive)], { type: "application/json" });
        const link = h("a", { href: URL.createObjectURL(blob), download: `parley-export-${session.username}.json` });
        document.body.appendChild(link);
        link.click();
        link.remove();
        status.textContent = "Your export was downloaded.";
      })
      .catch(fail(status));
  });
  return h(
    "section",
    { "aria-labelledby": "export-title" },
    h("h3", { id: "export-title" }, "Your data"),
    h("p", {}, "A copy of everything the platform holds about you, as JSON."),
    button,
  );
}
