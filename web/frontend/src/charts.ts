// Charts: uPlot (canvas) for time series against training step, small SVGs
// for sparklines and the PCA trajectory. Every chart's element carries
// data-points (points per series) so that tests and scripts can check what
// was drawn.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Line {
  label: string;
  values: (number | null)[];
  color: string;
  dash?: number[];
  width?: number;
  // Drawn as points only (no line), e.g. the bounds of a band.
  hidden?: boolean;
}

export interface ChartSpec {
  testid: string;
  title: string;
  // Training steps (x); drawn on an asinh axis, log-like but defined at 0.
  x: number[];
  lines: Line[];
  // Filled bands between two lines (indices into lines).
  bands?: [number, number][];
  // Vertical markers at these steps (e.g. phase breakpoints).
  markers?: { x: number; label: string }[];
  yLabel?: string;
  logX?: boolean;
  height?: number;
}

export const palette = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7e8c"];

export function chartBox(parent: HTMLElement, testid: string, title: string): HTMLElement {
  const box = document.createElement("figure");
  box.className = "chart";
  box.dataset.testid = testid;
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  box.append(caption);
  parent.append(box);
  return box;
}

// The drawing width inside a chart's box (its grid cell, less padding).
function boxWidth(box: HTMLElement): number {
  return Math.max(260, (box.clientWidth || 640) - 16);
}

export function lineChart(parent: HTMLElement, spec: ChartSpec): uPlot {
  const box = chartBox(parent, spec.testid, spec.title);
  box.dataset.points = String(spec.x.length);
  box.dataset.series = String(spec.lines.length);
  const width = boxWidth(box);
  const markers = spec.markers ?? [];
  const opts: uPlot.Options = {
    width,
    height: spec.height ?? 220,
    scales: {
      // Exactly the steps' range: no padding into negative steps.
      x:
        spec.logX === false
          ? { time: false }
          : { time: false, distr: 4, asinh: 1, range: (_u, min, max) => [min, max] },
    },
    axes: [
      // No ticks below the first step (the asinh axis would place one at -1).
      { label: "step", size: 40, filter: (u, splits) => splits.map((v) => (v < (u.scales.x.min ?? 0) ? null : v)) },
      { label: spec.yLabel ?? "", size: 60 },
    ],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      { label: "step" },
      ...spec.lines.map((l) => ({
        label: l.label,
        stroke: l.hidden ? "transparent" : l.color,
        width: l.width ?? (l.hidden ? 0 : 1.5),
        dash: l.dash,
        points: { show: spec.x.length <= 40 && !l.hidden, size: 4 },
        spanGaps: false,
      })),
    ],
    bands: (spec.bands ?? []).map(([hi, lo], i) => ({
      series: [hi + 1, lo + 1] as [number, number],
      fill: i === 0 ? "rgba(31,111,235,0.12)" : "rgba(31,111,235,0.22)",
    })),
    hooks: {
      draw: [
        (u: uPlot) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#6e7781";
          ctx.fillStyle = "#57606a";
          ctx.setLineDash([4, 4]);
          ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
          for (const m of markers) {
            const px = u.valToPos(m.x, "x", true);
            ctx.beginPath();
            ctx.moveTo(px, u.bbox.top);
            ctx.lineTo(px, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(m.label, px + 4, u.bbox.top + 12 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
  const data = [spec.x, ...spec.lines.map((l) => l.values)] as uPlot.AlignedData;
  const plot = new uPlot(opts, data, box);
  box.dataset.markers = String(markers.length);
  return plot;
}

// Grouped bars (one group per label, one bar per series) in an SVG: few
// bins, so plain elements; one <rect class="bar"> per (label, series).
export function barChart(
  parent: HTMLElement,
  testid: string,
  title: string,
  labels: string[],
  groups: { label: string; values: number[]; color: string }[],
): void {
  const box = chartBox(parent, testid, title);
  box.dataset.points = String(labels.length);
  box.dataset.series = String(groups.length);
  const width = boxWidth(box);
  const height = 220;
  const left = 40;
  const bottom = 36;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "bars" });
  box.append(root);
  const max = Math.max(1, ...groups.flatMap((g) => g.values));
  const plotH = height - bottom - 8;
  const slot = (width - left - 4) / Math.max(1, labels.length);
  const barW = (slot * 0.8) / Math.max(1, groups.length);
  root.append(svg("line", { x1: left, y1: 8 + plotH, x2: width, y2: 8 + plotH, stroke: "#8c959f" }));
  const maxLabel = svg("text", { x: left - 4, y: 16, "text-anchor": "end", class: "axis" });
  maxLabel.textContent = String(max);
  root.append(maxLabel);
  const every = Math.ceil(labels.length / 12);
  labels.forEach((label, i) => {
    groups.forEach((g, gi) => {
      const v = g.values[i] ?? 0;
      const h = (v / max) * plotH;
      const rect = svg("rect", {
        class: "bar",
        x: (left + i * slot + slot * 0.1 + gi * barW).toFixed(1),
        y: (8 + plotH - h).toFixed(1),
        width: Math.max(1, barW - 1).toFixed(1),
        height: h.toFixed(1),
        fill: g.color,
        "data-value": v,
      });
      const t = svg("title", {});
      t.textContent = `${g.label}, formation step ${label}: ${v}`;
      rect.append(t);
      root.append(rect);
    });
    if (i % every === 0) {
      const text = svg("text", { x: left + i * slot + slot / 2, y: height - bottom + 16, "text-anchor": "middle", class: "axis" });
      text.textContent = label;
      root.append(text);
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const g of groups) {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${g.color}"></i>`;
    item.append(g.label);
    legend.append(item);
  }
  box.append(legend);
}

const svgNs = "http://www.w3.org/2000/svg";

function svg(tag: string, attrs: Record<string, string | number>): SVGElement {
  const el = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// A tiny line of `values` (nulls skipped) in a width x height SVG.
export function sparkline(values: (number | null)[], width = 120, height = 24): SVGElement {
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "sparkline" });
  const defined = values.filter((v): v is number => v !== null && Number.isFinite(v));
  root.dataset.points = String(defined.length);
  if (defined.length === 0) return root;
  const lo = Math.min(...defined);
  const hi = Math.max(...defined);
  const span = hi - lo || 1;
  const pts: string[] = [];
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) return;
    const x = values.length === 1 ? width / 2 : (i / (values.length - 1)) * (width - 2) + 1;
    const y = height - 2 - ((v - lo) / span) * (height - 4);
    pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#1f6feb", "stroke-width": 1.2 }));
  return root;
}

// The feature's 2-D PCA trajectory: one circle per checkpoint, joined in step
// order, coloured from early (light) to late (dark); `selected` ringed.
export function trajectory(
  parent: HTMLElement,
  points: { x: number; y: number; step: number }[],
  selected: number,
  onPick: (index: number) => void,
): SVGElement {
  const box = chartBox(parent, "chart-pca", "PCA trajectory of the decoder direction");
  const size = 320;
  const pad = 16;
  const root = svg("svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}`, class: "pca" });
  root.dataset.points = String(points.length);
  box.dataset.points = String(points.length);
  box.append(root);
  if (points.length === 0) return root;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (v: number) => pad + ((v - x0) / (x1 - x0 || 1)) * (size - 2 * pad);
  const sy = (v: number) => size - pad - ((v - y0) / (y1 - y0 || 1)) * (size - 2 * pad);
  root.append(
    svg("polyline", {
      points: points.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" "),
      fill: "none",
      stroke: "#8c959f",
      "stroke-width": 1,
    }),
  );
  points.forEach((p, i) => {
    const t = points.length === 1 ? 1 : i / (points.length - 1);
    const light = Math.round(85 - 55 * t);
    const c = svg("circle", {
      cx: sx(p.x).toFixed(1),
      cy: sy(p.y).toFixed(1),
      r: i === selected ? 6 : 4,
      fill: `hsl(215, 80%, ${light}%)`,
      stroke: i === selected ? "#d1242f" : "none",
      "stroke-width": 2,
      "data-step": p.step,
    });
    const title = svg("title", {});
    title.textContent = `step ${p.step}`;
    c.append(title);
    c.addEventListener("click", () => onPick(i));
    root.append(c);
  });
  return root;
}
