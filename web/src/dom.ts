// Every element of the app is built here. Text goes in as text nodes only: no innerHTML, no
// attribute that takes code (on*), no URL from user content. A user's message, a channel's name
// or topic can never become markup.

type Attrs = Record<string, string | boolean | number | undefined>;
export type Child = Node | string | null | undefined | false;

const FORBIDDEN = /^on/i;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (FORBIDDEN.test(key)) throw new Error(`event handler attribute ${key}: use addEventListener`);
    el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, ...children);
  return el;
}

export function append(el: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** A form control and its label, tied by the control's id (what a screen reader announces). */
export function labelled(text: string, control: HTMLElement): [HTMLLabelElement, HTMLElement] {
  return [h("label", { for: control.id }, text), control];
}

/** A labelled control on a line of its own, as the login and registration forms lay them out. */
export function labelledRow(text: string, control: HTMLElement, hidden = false): HTMLDivElement {
  return h("div", { class: "row", hidden }, ...labelled(text, control));
}

export function clear(el: Node): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function on<K extends keyof HTMLElementEventMap>(
  el: HTMLElement,
  type: K,
  listener: (event: HTMLElementEventMap[K]) => void,
): void {
  el.addEventListener(type, listener);
}

/** Draws `list` again from `entries`, one item each (null for none): the one way the app draws
 * its lists (channels, members, messages). */
export function fillList<T>(list: HTMLElement, entries: Iterable<T>, item: (entry: T) => Child): HTMLElement {
  clear(list);
  for (const entry of entries) append(list, item(entry));
  return list;
}
