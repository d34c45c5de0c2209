// Drift: quantile bands of cos(d(t), d(T)) and of cos to the previous
// checkpoint against step, the fitted phases over the median, formation-step
// histograms by kind, counts.
import { api, CheckpointDrift, num, PhaseFit, Quantiles } from "../api";
import { barChart, lineChart, palette } from "../charts";
import { provisionalBadge } from "../follow";
import type { PageContext } from "../main";
import { fmt, h, kindName, link, table } from "../ui";
import { layerCrumbs, layerNav } from "./layer";

// y(x) of the continuous piecewise-linear fit, x = log(step + 1)
// (PhaseFit in query.proto).
export function phaseAt(fit: PhaseFit, step: number): number {
  const x = Math.log(step + 1);
  return (
    fit.intercept +
    fit.slope1 * x +
    (fit.slope2 - fit.slope1) * Math.max(0, x - fit.breakpoint1_x) +
    (fit.slope3 - fit.slope2) * Math.max(0, x - fit.breakpoint2_x)
  );
}

function bandLines(cps: CheckpointDrift[], pick: (c: CheckpointDrift) => Quantiles | undefined, color: string) {
  const q = (k: keyof Quantiles) => cps.map((c) => (pick(c) ? pick(c)![k] : null));
  return [
    { label: "q90", values: q("q90"), color, hidden: true },
    { label: "q10", values: q("q10"), color, hidden: true },
    { label: "q75", values: q("q75"), color, hidden: true },
    { label: "q25", values: q("q25"), color, hidden: true },
    { label: "median", values: q("q50"), color, width: 2 },
  ];
}

// Formation-step bins: each checkpoint's step when there are few, else about
// 24 log-spaced ranges of steps.
function formationBins(steps: number[]): { label: string; lo: number; hi: number }[] {
  if (steps.length <= 24) return steps.map((s) => ({ label: String(s), lo: s, hi: s }));
  const bins: { label: string; lo: number; hi: number }[] = [];
  const per = Math.ceil(steps.length / 24);
  for (let i = 0; i < steps.length; i += per) {
    const lo = steps[i];
    const hi = steps[Math.min(steps.length, i + per) - 1];
    bins.push({ label: lo === hi ? String(lo) : `${lo}–${hi}`, lo, hi });
  }
  return bins;
}

export async function driftPage(ctx: PageContext, jobId: string, layerText: string): Promise<void> {
  const layer = Number(layerText);
  const lb = layerCrumbs(ctx, jobId, layerText, ["drift", `/jobs/${encodeURIComponent(jobId)}/layers/${layer}/drift`]);
  ctx.setTitle(`${jobId} layer ${layer} drift`);
  const drift = await api.drift(jobId, layer);
  const cps = drift.checkpoints;
  const x = cps.map((c) => num(c.step));
  ctx.app.append(
    h("h1", {}, `Layer ${layer}: drift of the decoder directions`),
    provisionalBadge(drift.provisional, num(drift.through_step)) ?? "",
    layerNav(lb, "drift"),
  );
  const grid = h("div", { class: "grid" });
  ctx.app.append(grid);

  const fit = drift.phases;
  const finalLines = bandLines(cps, (c) => c.cos_to_final, palette[0]);
  const markers: { x: number; label: string }[] = [];
  if (fit && fit.segments !== 1) {
    finalLines.push({
      label: `phase fit (${fit.segments || 3} segments, R² ${fmt(fit.r_squared, 3)})`,
      values: x.map((s) => phaseAt(fit, s)),
      color: palette[1],
      width: 1.5,
      dash: [6, 3],
    } as (typeof finalLines)[number]);
    const last = x[x.length - 1];
    if (fit.breakpoint1_step < last) markers.push({ x: fit.breakpoint1_step, label: `b1 ≈ ${fmt(fit.breakpoint1_step, 3)}` });
    if (fit.breakpoint2_step < last) markers.push({ x: fit.breakpoint2_step, label: `b2 ≈ ${fmt(fit.breakpoint2_step, 3)}` });
  } else if (fit) {
    finalLines.push({
      label: `phase fit (1 segment, R² ${fmt(fit.r_squared, 3)})`,
      values: x.map((s) => phaseAt(fit, s)),
      color: palette[1],
      width: 1.5,
      dash: [6, 3],
    } as (typeof finalLines)[number]);
  }
  lineChart(grid, {
    testid: "chart-cos-final",
    title: "cos(d(t), d(T)) across live features: median, 25–75% and 10–90% bands",
    x,
    lines: finalLines,
    bands: [
      [0, 1],
      [2, 3],
    ],
    markers,
  });
  lineChart(grid, {
    testid: "chart-cos-prev",
    title: "cos(d(t), d(t−1)) across live features",
    x,
    lines: bandLines(cps, (c) => c.cos_to_previous, palette[2]),
    bands: [
      [0, 1],
      [2, 3],
    ],
  });

  // Formation histogram by kind: ListFeatures totals per step range (one
  // small request per bin and kind; nothing loads all features).
  const bins = formationBins(x);
  const kinds: [string, string, string][] = [
    ["token_level", "token-level", palette[0]],
    ["concept_level", "concept-level", palette[3]],
  ];
  const counts = await Promise.all(
    kinds.map(([kind]) =>
      Promise.all(
        bins.map(async (b) => {
          const q = new URLSearchParams({ kind, min_formation: String(b.lo), max_formation: String(b.hi), page_size: "1" });
          return (await api.features(jobId, layer, q)).total;
        }),
      ),
    ),
  );
  barChart(
    grid,
    "chart-formation",
    "features formed per checkpoint, by kind",
    bins.map((b) => b.label),
    kinds.map(([, label, color], i) => ({ label, values: counts[i], color })),
  );

  ctx.app.append(
    h("h2", {}, "Kinds"),
    table(
      "kinds-table",
      ["kind", "features", "formed", "mean formation step", "median formation step", ""],
      drift.kinds.map((k) => [
        kindName(k.kind),
        String(k.count),
        String(k.formed),
        fmt(k.mean_formation_step),
        fmt(k.median_formation_step),
        k.kind === "FEATURE_KIND_DEAD" || k.count === 0
          ? ""
          : link(
              `${lb}/features?kind=${k.kind.replace("FEATURE_KIND_", "").toLowerCase()}&order=drift`,
              "most drifted →",
            ),
      ]),
    ),
    h(
      "p",
      { class: "note" },
      `Formation: first checkpoint whose progress measure reaches ${fmt(drift.formation_tau)} of its final value; `,
      `token-level: top-token share ≥ ${fmt(drift.token_level_threshold)}.`,
    ),
    h("h2", {}, "Checkpoints"),
    table(
      "drift-table",
      ["step", "median cos to final", "median cos to previous", "formed"],
      cps.map((c) => [
        String(num(c.step)),
        fmt(c.cos_to_final?.q50),
        c.cos_to_previous ? fmt(c.cos_to_previous.q50) : "—",
        String(c.formed),
      ]),
    ),
  );
}
