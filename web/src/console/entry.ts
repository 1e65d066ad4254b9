// The way into the console from the chat client: a link in its header, for the roles that
// have console pages (roles.ts), nothing for anyone else.

import { h } from "../dom.js";
import { pagesFor } from "./roles.js";

export function consoleLink(role: string): HTMLElement | null {
  return pagesFor(role).length ? h("a", { href: "/console.html", class: "console-link" }, "Console") : null;
}
