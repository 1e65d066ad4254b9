// People by name, not by id: the ids a page shows (roll-out planners and approvers, audit actors
// and targets) looked up once with LookupUsers, which answers any signed-in caller for ids it
// already holds (never a search of the directory). An id nobody answers for stays an id.

import { gateway, withRefresh } from "../api.js";

const BATCH = 200; // LookupUsers takes at most this many ids per call
const USER_ACTOR = /^user:(.+)$/;

const known = new Map<string, string>();
const unknown = new Set<string>();

/** Looks up every id not seen yet; a failed lookup leaves the ids as they are. */
export async function learnNames(ids: Iterable<string>): Promise<void> {
  const wanted = [...new Set(ids)].filter((id) => looksLikeUserId(id) && !known.has(id) && !unknown.has(id));
  for (let start = 0; start < wanted.length; start += BATCH) {
    const batch = wanted.slice(start, start + BATCH);
    const reply = await withRefresh(() => gateway.lookupUsers({ userIds: batch })).catch(() => null);
    if (reply === null) return;
    for (const u of reply.users) known.set(u.userId, u.username);
    for (const id of batch) if (!known.has(id)) unknown.add(id);
  }
}

/** The user id inside an actor ("user:<id>" or a bare id); "" for a service or the platform. */
export function actorUserId(actor: string): string {
  const m = USER_ACTOR.exec(actor);
  if (m) return m[1];
  return actor.includes(":") || actor === "" ? "" : actor;
}

/** A user id as a person reads it: the username when known. */
export function personName(userId: string): string {
  return known.get(userId) ?? userId;
}

/** An actor as a person reads it: "alice", "service patch-registry", "the platform". */
export function actorName(actor: string): string {
  const id = actorUserId(actor);
  if (id) return personName(id);
  if (actor.startsWith("service:")) return `service ${actor.slice("service:".length)}`;
  return actor || "-";
}

const USER_ID_IN_TEXT = /\b[0-9a-f]{32}\b/g; // auth's user ids, as the detector's sentences name them

/** The user ids a sentence names (a finding's "planned by <id> was approved by <id>"). */
export function idsIn(text: string): string[] {
  return text.match(USER_ID_IN_TEXT) ?? [];
}

/** A sentence with each known account's id as its name: findings keep ids (a name must not
 * outlive an erasure), a person reads names. */
export function namedText(text: string): string {
  return text.replace(USER_ID_IN_TEXT, (id) => personName(id));
}

/** The user id of a username this page has already seen (case ignored); "" when none. */
export function knownUserId(username: string): string {
  const wanted = username.toLowerCase();
  for (const [id, name] of known) if (name.toLowerCase() === wanted) return id;
  return "";
}

/** Auth refuses a whole lookup over one id that is not letters and digits: ask only for those. */
function looksLikeUserId(id: string): boolean {
  return /^[A-Za-z0-9]{1,64}$/.test(id);
}
