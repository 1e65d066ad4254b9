// Advisories: the findings of imported advisories against the fleet, overdue first, then by the
// time left to their patch deadline; OSV files are imported by upload.

import { gateway, withRefresh } from "../api.js";
import { h, labelled } from "../dom.js";
import type { Finding } from "../gen/parley/patch/v1/patch_pb.js";
import { nowSeconds, timeLeft, when } from "./format.js";
import { onSubmit, page } from "./page.js";
import { table } from "./table.js";

export function byUrgency(findings: readonly Finding[]): Finding[] {
  return [...findings].sort((a, b) => Number(b.overdue) - Number(a.overdue) || a.deadline - b.deadline);
}

/** `reload` draws the page again with a line saying what the last import did. */
export async function advisoriesPage(
  mayImport: boolean,
  reload: (imported: string) => void,
  imported = "",
): Promise<HTMLElement> {
  const findings = byUrgency((await withRefresh(() => gateway.listFindings({}))).findings);
  const now = nowSeconds();
  const overdue = findings.filter((f) => f.overdue).length;
  const rows = findings.map((f) => ({
    key: `${f.advisoryId} ${f.instanceId}`,
    className: f.overdue ? "overdue" : undefined,
    cells: [
      f.advisoryId,
      f.priority,
      f.cvssScore ? f.cvssScore.toFixed(1) : "unscored",
      `${f.service} ${f.instanceId}`,
      `${f.package} ${f.installedVersion}`,
      f.fixedIn.join(", ") || "no fix yet",
      when(f.deadline),
      timeLeft(f.deadline, now),
      f.summary,
    ],
  }));
  return page(
    "advisories",
    "Advisories",
    h("p", { class: "hint" }, `${findings.length} findings, ${overdue} overdue.`),
    table(
      "Findings, overdue first",
      ["Advisory", "Priority", "CVSS", "Instance", "Installed", "Fixed in", "Deadline", "Time left", "Summary"],
      rows,
      "No finding: no imported advisory affects a running instance.",
    ),
    mayImport ? importForm(reload, imported) : null,
  );
}

function importForm(reload: (imported: string) => void, imported: string): HTMLElement {
  const files = h("input", { type: "file", id: "osv-files", accept: ".json,application/json", multiple: true });
  const result = h("p", { class: "hint", role: "status", id: "import-result" }, imported);
  const form = h(
    "form",
    { class: "small import" },
    ...labelled("Import OSV advisories (JSON files)", files),
    h("button", { type: "submit" }, "Import"),
    result,
  );
  onSubmit(form, result, async () => {
    const osvJson = await Promise.all([...(files.files ?? [])].map((file) => file.text()));
    const done = await withRefresh(() => gateway.importAdvisories({ osvJson }));
    reload(`imported ${done.imported}, unchanged ${done.unchanged}, withdrawn ${done.withdrawn}`);
  });
  return form;
}
