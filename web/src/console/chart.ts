// Line charts drawn as plain SVG elements (no chart library, nothing inline that the page's
// Content-Security-Policy would refuse): each series a polyline with its points, the axes
// labelled, and a <title> per point that says its figure.

const SVG = "http://www.w3.org/2000/svg";

export interface Series {
  name: string;
  className: string; // colours come from the stylesheet
  values: (number | null)[]; // null: no figure at that point
}

export interface ChartSpec {
  title: string;
  unit: string;
  labels: string[]; // one per point, along the x axis
  series: Series[];
  marks?: ("passed" | "failed")[]; // a verdict per point, drawn under the axis
  labelEvery?: number; // label only every n-th point (a long time axis); default every one
}

const WIDTH = 520;
const HEIGHT = 200;
const PAD = { left: 48, right: 44, top: 24, bottom: 40 };

function el<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
  ...children: (SVGElement | string)[]
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(typeof child === "string" ? document.createTextNode(child) : child);
  return node;
}

export function lineChart(spec: ChartSpec): SVGSVGElement {
  const figures = spec.series.flatMap((s) => s.values.filter((v): v is number => v !== null));
  const top = niceCeiling(Math.max(0, ...figures));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const n = spec.labels.length;
  const x = (i: number) => PAD.left + (n <= 1 ? plotW / 2 : (i * plotW) / (n - 1));
  const y = (v: number) => PAD.top + plotH - (top === 0 ? 0 : (v / top) * plotH);
  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": `${spec.title} (${spec.unit})`,
  });
  svg.append(el("title", {}, `${spec.title} (${spec.unit})`));
  svg.append(el("text", { x: PAD.left, y: 14, class: "chart-title" }, `${spec.title} (${spec.unit})`));
  for (const tick of [0, top / 2, top]) {
    svg.append(el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(tick), y2: y(tick), class: "grid-line" }));
    svg.append(el("text", { x: PAD.left - 6, y: y(tick) + 4, class: "tick", "text-anchor": "end" }, fmt(tick)));
  }
  spec.labels.forEach((label, i) => {
    if (i % (spec.labelEvery ?? 1) === 0) {
      svg.append(el("text", { x: x(i), y: HEIGHT - PAD.bottom + 16, class: "tick", "text-anchor": "middle" }, label));
    }
    const mark = spec.marks?.[i];
    if (mark) {
      svg.append(el("text", { x: x(i), y: HEIGHT - 6, class: `verdict ${mark}`, "text-anchor": "middle" }, mark));
    }
  });
  spec.series.forEach((series, k) => {
    const points = series.values.map((v, i) => (v === null ? null : ([x(i), y(v)] as const)));
    const drawn = points.filter((p): p is readonly [number, number] => p !== null);
    if (drawn.length > 1) {
      svg.append(el("polyline", { points: drawn.map(([px, py]) => `${px},${py}`).join(" "), class: `line ${series.className}` }));
    }
    series.values.forEach((v, i) => {
      if (v === null) return;
      svg.append(
        el("circle", { cx: x(i), cy: y(v), r: 3.5, class: `dot ${series.className}` }, el("title", {}, `${series.name} ${spec.labels[i]}: ${fmt(v)} ${spec.unit}`)),
      );
    });
    // Two keys fit beside the title; more (a line per stream) go along the bottom.
    const [lx, ly] = spec.series.length > 2 ? [PAD.left + k * 70, HEIGHT - 16] : [WIDTH - PAD.right - 150 + k * 75, 6];
    svg.append(el("rect", { x: lx, y: ly, width: 10, height: 10, class: `key ${series.className}` }));
    svg.append(el("text", { x: lx + 14, y: ly + 9, class: "tick" }, series.name));
  });
  return svg;
}

function niceCeiling(value: number): number {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function fmt(value: number): string {
  return value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(value >= 1 ? 1 : 2);
}
