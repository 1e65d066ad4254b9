// A table of text cells, with a caption for screen readers and a class per row.

import { h } from "../dom.js";

export interface Row {
  cells: string[];
  className?: string;
  key?: string;
}

export function table(caption: string, headers: string[], rows: Row[], empty: string): HTMLElement {
  if (rows.length === 0) return h("p", { class: "hint" }, empty);
  const body = h(
    "tbody",
    {},
    ...rows.map((row) =>
      h("tr", { class: row.className, "data-key": row.key }, ...row.cells.map((cell) => h("td", {}, cell))),
    ),
  );
  return grid(caption, headers, body);
}

/** The table around `body`, which is filled now (table) or as rows arrive (a live stream's). */
export function grid(caption: string, headers: string[], body: HTMLElement, className = "grid"): HTMLElement {
  return h(
    "table",
    { class: className },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, ...headers.map((name) => h("th", { scope: "col" }, name)))),
    body,
  );
}
