// Which console pages a role sees: the permissions of parley_core.rbac that the pages' calls
// need (fleet.read, patches.rollout, audit.read) and the roles storage answers. The gateway checks them again on every call;
// this only spares a person buttons that would be refused.

export type PageName = "fleet" | "advisories" | "rollouts" | "health" | "audit" | "security" | "reports";

const FLEET_READ = new Set(["owner", "admin", "security-auditor", "operator"]);
// The registry's own roll-out roles, narrower than patches.rollout: it refuses an owner.
const ROLLS_OUT = new Set(["admin", "operator"]);
// Storage answers audit queries for the security-auditor role only.
const AUDIT_QUERY = new Set(["security-auditor"]);
// The live security events: storage answers the auditor (on the Audit page), admin and owner.
const SECURITY_EVENTS = new Set(["admin", "owner"]);

export function pagesFor(role: string): PageName[] {
  const pages: PageName[] = [];
  if (FLEET_READ.has(role)) pages.push("fleet", "advisories", "rollouts", "health");
  if (AUDIT_QUERY.has(role)) pages.push("audit");
  if (SECURITY_EVENTS.has(role)) pages.push("security");
  if (FLEET_READ.has(role)) pages.push("reports"); // the filed compliance reports
  return pages;
}

export function mayRollOut(role: string): boolean {
  return ROLLS_OUT.has(role);
}
