// The operator's console (console.html): fleet, advisories, roll-outs and the audit trail, over
// the same gateway API, tokens and session cookie as the chat client. Which pages show depends
// on the role (roles.ts); the gateway refuses the rest whatever this page shows.

import { describe, isMfaChallenge, login, logout, refresh, type Session } from "../api.js";
import { clear, h, labelledRow, on } from "../dom.js";
import { advisoriesPage } from "./advisories.js";
import { auditPage } from "./audit.js";
import { reportsPage } from "./reports.js";
import { securityPage } from "./security.js";
import { fleetPage } from "./fleet.js";
import { onSubmit } from "./page.js";
import { platformPage } from "./platform.js";
import { mayRollOut, pagesFor, type PageName } from "./roles.js";
import { RolloutsPage } from "./rollouts.js";
import "./console.css";

const TITLES: Record<PageName, string> = {
  fleet: "Fleet",
  advisories: "Advisories",
  rollouts: "Roll-outs",
  health: "Health",
  audit: "Audit",
  security: "Security events",
  reports: "Reports",
};
// How often an open page follows the platform: roll-outs move step by step, the fleet by heartbeats.
const FOLLOW_MS: Partial<Record<PageName, number>> = { fleet: 5000, advisories: 15000, rollouts: 2000, health: 10000 };

class Console {
  private readonly root: HTMLElement;
  private session: Session | null = null;
  private readonly content = h("main", { id: "page" });
  private readonly notice = h("p", { class: "error", role: "alert" });
  private timer: number | undefined;
  private shown = 0; // bumps on each page change, so a late answer for a page left is dropped
  private leave: (() => void) | null = null; // ends what the shown page keeps open (a live stream)

  constructor(root: HTMLElement) {
    this.root = root;
  }

  async start(): Promise<void> {
    const session = await refresh().catch(() => null);
    if (session) this.enter(session);
    else this.loginForm();
  }

  private loginForm(): void {
    const username = h("input", { id: "username", autocomplete: "username", required: true });
    const password = h("input", { id: "password", type: "password", autocomplete: "current-password", required: true });
    const code = h("input", { id: "totp", inputmode: "numeric", autocomplete: "one-time-code" });
    const codeRow = labelledRow("Authentication code", code, true);
    const error = h("p", { class: "error", role: "alert" });
    const form = h(
      "form",
      { class: "login" },
      h("h1", {}, "Parley console"),
      labelledRow("Username", username),
      labelledRow("Password", password),
      codeRow,
      h("button", { type: "submit" }, "Log in"),
      error,
    );
    onSubmit(
      form,
      error,
      async () => this.enter(await login(username.value, password.value, code.value)),
      (err) => {
        if (isMfaChallenge(err)) codeRow.hidden = false;
      },
    );
    clear(this.root);
    this.root.append(h("div", { class: "center" }, form));
  }

  private enter(session: Session): void {
    this.session = session;
    const pages = pagesFor(session.role);
    const out = h("button", { type: "button", class: "link" }, "Log out");
    on(out, "click", () => void logout().finally(() => this.loginForm()));
    const who = h("span", { class: "me", id: "me" }, `${session.username || session.userId} · ${session.role}`);
    clear(this.root);
    if (pages.length === 0) {
      this.root.append(
        h("header", { class: "top" }, h("span", { class: "brand" }, "Parley console"), who, out),
        h(
          "main",
          { id: "no-console" },
          h("h2", {}, "No console for your role"),
          h(
            "p",
            {},
            `The console is for operators, security auditors and administrators; you are ${session.role}. `,
            h("a", { href: "/" }, "Open the chat"),
          ),
        ),
      );
      return;
    }
    const nav = h("nav", { class: "pages", "aria-label": "Console pages" });
    for (const page of pages) {
      const link = h("a", { href: `#${page}`, "data-page": page }, TITLES[page]);
      nav.append(link);
    }
    this.root.append(
      h("header", { class: "top" }, h("span", { class: "brand" }, "Parley console"), nav, who, out),
      this.notice,
      this.content,
    );
    window.addEventListener("hashchange", () => void this.show());
    void this.show();
  }

  private async show(): Promise<void> {
    if (this.session === null) return;
    const pages = pagesFor(this.session.role);
    const wanted = window.location.hash.slice(1) as PageName;
    const page = pages.includes(wanted) ? wanted : pages[0];
    for (const link of this.root.querySelectorAll<HTMLAnchorElement>("nav.pages a")) {
      if (link.dataset.page === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    window.clearTimeout(this.timer);
    this.leave?.();
    this.leave = null;
    const shown = ++this.shown;
    this.notice.textContent = "";
    try {
      const follow = await this.render(page, shown);
      if (shown !== this.shown || follow === null) return;
      const period = FOLLOW_MS[page];
      if (period === undefined) return;
      const tick = async () => {
        if (shown !== this.shown) return;
        try {
          await follow();
          this.notice.textContent = "";
        } catch (err) {
          this.notice.textContent = describe(err);
        }
        if (shown === this.shown) this.timer = window.setTimeout(() => void tick(), period);
      };
      this.timer = window.setTimeout(() => void tick(), period);
    } catch (err) {
      if (shown === this.shown) this.notice.textContent = describe(err);
    }
  }

  /** Draws `page`; returns how to bring it up to date, or null when it follows nothing. */
  private async render(page: PageName, shown: number): Promise<(() => Promise<void>) | null> {
    const session = this.session!;
    const put = (element: HTMLElement) => {
      if (shown !== this.shown) return;
      clear(this.content);
      this.content.append(element);
    };
    switch (page) {
      case "fleet":
        put(await fleetPage());
        return async () => put(await fleetPage());
      case "health":
        put(await platformPage());
        return async () => put(await platformPage());
      case "advisories": {
        const draw = async (imported = "") =>
          put(await advisoriesPage(mayRollOut(session.role), (line) => void draw(line), imported));
        await draw();
        return () => draw();
      }
      case "rollouts": {
        const rollouts = new RolloutsPage(session);
        await rollouts.load();
        put(rollouts.element);
        return () => rollouts.refresh();
      }
      case "reports": {
        const draw = async (reportId = "") => put(await reportsPage((picked) => void draw(picked), reportId));
        await draw();
        return null;
      }
      case "audit":
      case "security": {
        // The auditor's Audit page holds the live stream; an admin's or owner's page is the stream alone.
        const opened = page === "audit" ? auditPage() : securityPage();
        if (shown !== this.shown) opened.stop();
        else this.leave = opened.stop;
        put(opened.element);
        return null;
      }
    }
  }
}

void new Console(document.getElementById("console")!).start();
