// The user's own account: sessions (list, revoke), two-factor enrolment with a QR code and
// recovery codes, and an export of their data.

import QRCode from "qrcode";
import * as api from "./api.js";
import { gateway, withRefresh, type Session } from "./api.js";
import { append, clear, h, on } from "./dom.js";

export function renderSettings(main: HTMLElement, session: Session, message = ""): void {
  clear(main);
  const status = h("p", { class: "notice", role: "status" }, message);
  append(
    main,
    h("h2", { tabindex: "-1", id: "settings-title" }, "Settings"),
    status,
    sessionsSection(session, status),
    mfaSection(status),
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
          const started = new Date(Number(s.startedAtUnix) * 1000).toLocaleString();
          const here = s.sessionId === session.sessionId;
          const item = h("li", {}, `${here ? "This browser" : "Session"} · started ${started} `);
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

function mfaSection(status: HTMLElement): HTMLElement {
  const area = h("div");
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
          h("label", { for: "totp-confirm" }, "Code from your app"),
          code,
          confirm,
        );
        on(form, "submit", (event) => {
          event.preventDefault();
          withRefresh(() => gateway.confirmTotpEnrolment({ totpCode: code.value.trim() }))
            .then((done) => {
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
  return h("section", { "aria-labelledby": "mfa-title" }, h("h3", { id: "mfa-title" }, "Two-factor authentication"), area);
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
