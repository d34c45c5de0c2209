// Job / layer overview: per-checkpoint SAE metrics against step, the chain's
// quality checks.
import { api, ApiError, CheckpointMetrics, num } from "../api";
import { lineChart, palette } from "../charts";
import type { PageContext } from "../main";
import { fmt, h, link, table } from "../ui";

export function layerCrumbs(ctx: PageContext, jobId: string, layer: string, last?: [string, string]): string {
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  const lb = `${base}/layers/${layer}`;
  ctx.setCrumbs([["jobs", "/jobs"], [jobId, base], [`layer ${layer}`, lb], ...(last ? [last] : [])]);
  return lb;
}

export function layerNav(lb: string, here: string): HTMLElement {
  const tabs: [string, string][] = [
    ["metrics", lb],
    ["drift", `${lb}/drift`],
    ["features", `${lb}/features`],
  ];
  return h(
    "nav",
    { class: "tabs" },
    ...tabs.map(([label, href]) => (label === here ? h("span", { class: "here" }, label) : link(href, label))),
  );
}

export async function layerPage(ctx: PageContext, jobId: string, layerText: string): Promise<void> {
  const layer = Number(layerText);
  const lb = layerCrumbs(ctx, jobId, layerText);
  ctx.setTitle(`${jobId} layer ${layer}`);
  const [metrics, quality] = await Promise.all([
    api.metrics(jobId, layer),
    api.quality(jobId, layer).catch((e) => (e instanceof ApiError ? null : Promise.reject(e))),
  ]);
  const cps: CheckpointMetrics[] = metrics.checkpoints;
  ctx.app.append(h("h1", {}, `Layer ${layer}: SAE metrics per checkpoint`), layerNav(lb, "metrics"));
  if (cps.length === 0) {
    ctx.app.append(h("p", {}, "No SAE of this layer is stored yet."));
    return;
  }
  const x = cps.map((c) => num(c.step));
  const grid = h("div", { class: "grid" });
  ctx.app.append(grid);
  const spec = (testid: string, title: string, values: (number | null)[], color: string) =>
    lineChart(grid, { testid, title, x, lines: [{ label: title, values, color }] });
  spec("chart-fvu", "FVU (fraction of variance unexplained)", cps.map((c) => c.fvu), palette[0]);
  spec("chart-l0", "L0 (active features per token)", cps.map((c) => c.l0), palette[1]);
  spec("chart-dead", "dead fraction", cps.map((c) => c.dead_fraction), palette[2]);
  const hasLm = cps.some((c) => c.lm);
  if (hasLm) {
    spec("chart-loss-recovered", "loss recovered", cps.map((c) => (c.lm ? c.lm.loss_recovered : null)), palette[3]);
  }
  spec("chart-tokens", "tokens trained", cps.map((c) => num(c.tokens_trained)), palette[4]);

  ctx.app.append(
    h("h2", {}, "Checkpoints"),
    table(
      "metrics-table",
      ["step", "chain", "tokens trained", "FVU", "L0", "dead", "loss recovered", "converged"],
      cps.map((c) => [
        String(num(c.step)),
        String(c.chain_index),
        fmt(num(c.tokens_trained)),
        fmt(c.fvu),
        fmt(c.l0),
        fmt(c.dead_fraction),
        c.lm ? fmt(c.lm.loss_recovered) : "—",
        c.converged ? "yes" : "no",
      ]),
    ),
  );
  ctx.app.append(h("h2", {}, "Quality checks"));
  if (!quality || (quality.verdicts.length === 0 && quality.checkpoints.length === 0)) {
    ctx.app.append(h("p", { testid: "quality-none" }, "No quality checks stored for this layer."));
  } else {
    ctx.app.append(
      table(
        "quality-table",
        ["check", "step", "passed", "verdict"],
        quality.verdicts.map((v) => [
          v.check,
          String(num(v.step)),
          h("span", { class: v.passed ? "pass" : "fail" }, v.passed ? "passed" : "failed"),
          v.verdict,
        ]),
      ),
    );
  }
}
