// Reports: the signed compliance reports `parley up` files in the data folder, newest first, and
// one of them (the newest, or the one picked) as its HTML page in a sandboxed frame (no script,
// no same origin; the frame keeps the console's CSP, which allows the report's one stylesheet by
// its hash), or as Markdown text when only that is filed. Reports are named by id, never by path.

import { gateway, withRefresh } from "../api.js";
import { h, on } from "../dom.js";
import type { ComplianceReport } from "../gen/parley/gateway/v1/gateway_pb.js";
import { when } from "./format.js";
import { page } from "./page.js";

function shown(report: ComplianceReport): HTMLElement {
  if (report.format === "html") {
    return h("iframe", {
      class: "report",
      title: `Compliance report ${report.reportId}`,
      sandbox: "",
      referrerpolicy: "no-referrer",
      srcdoc: report.content,
    });
  }
  return h("pre", { class: "report", "aria-label": `Compliance report ${report.reportId}` }, report.content);
}

/** `pick` draws the page again showing another report. */
export async function reportsPage(pick: (reportId: string) => void, reportId = ""): Promise<HTMLElement> {
  const { reports } = await withRefresh(() => gateway.listComplianceReports({}));
  const section = page(
    "reports",
    "Compliance reports",
    h(
      "p",
      { class: "hint", id: "reports-hint" },
      "Signed reports filed in the data folder's ",
      h("code", {}, "reports/"),
      " (daily by default); ",
      h("code", {}, "parley report verify FILE"),
      " checks one.",
    ),
  );
  if (reports.length === 0) {
    section.append(
      h("p", { class: "hint" }, "No report is filed yet: ", h("code", {}, "parley up"), " files one a day."),
    );
    return section;
  }
  const chosen = reportId || reports[0].reportId;
  const rows = reports.map((r) => {
    const open = h("button", { type: "button", class: "link", "data-report": r.reportId }, "Show");
    on(open, "click", () => pick(r.reportId));
    return h(
      "tr",
      { class: r.reportId === chosen ? "chosen" : undefined, "data-key": r.reportId },
      h("td", {}, r.reportId),
      h("td", {}, when(r.writtenAt)),
      h("td", {}, r.formats.join(", ")),
      h("td", {}, r.reportId === chosen ? "shown below" : open),
    );
  });
  const report = await withRefresh(() => gateway.getComplianceReport({ reportId: chosen }));
  section.append(
    h(
      "table",
      { class: "grid", id: "reports" },
      h("caption", { class: "visually-hidden" }, "Filed compliance reports, newest first"),
      h("thead", {}, h("tr", {}, ...["Report", "Written (UTC)", "Formats", ""].map((n) => h("th", { scope: "col" }, n)))),
      h("tbody", {}, ...rows),
    ),
    h("h3", {}, `${report.reportId} (${report.format === "html" ? "HTML" : "Markdown"})`),
    shown(report),
  );
  return section;
}
