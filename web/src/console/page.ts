// What the console's pages are built from: a section named by its heading, and forms whose
// submit calls the gateway and says in the form why a call failed.

import { describe } from "../api.js";
import { type Child, h, on } from "../dom.js";

/** `name` makes the heading's id, `<name>-title`, which labels the section (a landmark for screen readers). */
export function page(name: string, title: string, ...content: Child[]): HTMLElement {
  return h("section", { "aria-labelledby": `${name}-title` }, h("h2", { id: `${name}-title` }, title), ...content);
}

/** Runs `action` on submit instead of the browser's page load; a failure is said in `error`,
 * after `failed` (if given) had its look at it. */
export function onSubmit(
  form: HTMLFormElement,
  error: HTMLElement,
  action: () => Promise<void>,
  failed?: (err: unknown) => void,
): void {
  on(form, "submit", (event) => {
    event.preventDefault();
    action().catch((err: unknown) => {
      failed?.(err);
      error.textContent = describe(err);
    });
  });
}
