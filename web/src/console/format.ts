// Times and spans as a person reads them; every figure is text, never markup.

export function span(seconds: number): string {
  const s = Math.abs(seconds);
  if (s >= 86400) return `${(s / 86400).toFixed(1)} d`;
  if (s >= 3600) return `${(s / 3600).toFixed(1)} h`;
  if (s >= 60) return `${Math.round(s / 60)} min`;
  return `${Math.round(s)} s`;
}

export function timeLeft(deadline: number, now: number): string {
  const left = deadline - now;
  return left < 0 ? `overdue by ${span(-left)}` : `${span(left)} left`;
}

export function when(unixSeconds: number): string {
  if (!unixSeconds) return "-";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

/** To the millisecond: a roll-out's gates and steps come seconds apart, some within one second. */
export function whenMs(unixSeconds: number): string {
  if (!unixSeconds) return "-";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").replace(/Z$/, " UTC");
}

/** An ISO 8601 time (a checkpoint's taken_at) like the page's other times; what is no time, as written. */
export function whenIso(iso: string): string {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? iso || "-" : when(ms / 1000);
}

export function nowSeconds(): number {
  return Date.now() / 1000;
}
