// One feature across the run: curves of cos to final and to previous,
// frequency, mean/max activation and the progress measures; the 2-D PCA
// trajectory; top contexts (and logit effects, when the answer has them) at
// the checkpoint chosen with the slider (?step= in the URL).
import { api, FeatureContext, FeaturePoint, LogitEffect, num } from "../api";
import { lineChart, palette, trajectory } from "../charts";
import type { PageContext } from "../main";
import { analysedThrough, provisionalBadge } from "../follow";
import { fmt, h, table } from "../ui";
import { layerCrumbs } from "./layer";

function contextRow(c: FeatureContext, max: number): HTMLElement {
  const shade = (a: number) => `rgba(209, 36, 47, ${Math.max(0.08, Math.min(1, a / (max || 1))) * 0.55})`;
  const text = h("span", { class: "context" });
  if (c.text) {
    // The focus token sits between [[ and ]] (FeatureContext.text).
    const m = /^([\s\S]*?)\[\[([\s\S]*?)\]\]([\s\S]*)$/.exec(c.text);
    if (m) {
      const focus = h("mark", { testid: "focus", title: `activation ${fmt(c.activation)}` }, m[2]);
      focus.style.background = shade(c.activation);
      text.append(m[1], focus, m[3]);
    } else {
      text.append(c.text);
    }
  } else {
    c.window.forEach((t, i) => {
      if (i === c.focus) {
        const focus = h("mark", { testid: "focus", title: `activation ${fmt(c.activation)}` }, `⟨${t}⟩`);
        focus.style.background = shade(c.activation);
        text.append(focus, " ");
      } else {
        text.append(`${t} `);
      }
    });
  }
  const bar = h("span", { class: "act" });
  bar.style.width = `${Math.round((c.activation / (max || 1)) * 60)}px`;
  bar.style.background = shade(c.activation);
  return h("tr", {}, h("td", { class: "num" }, fmt(c.activation)), h("td", {}, bar), h("td", {}, text));
}

// One row per rank: the promoted token and its logit, the suppressed one and its.
function logitEffects(p: FeaturePoint): HTMLElement | null {
  const promoted = p.logit_effects?.promoted ?? [];
  const suppressed = p.logit_effects?.suppressed ?? [];
  const n = Math.max(promoted.length, suppressed.length);
  if (n === 0) return null;
  const label = (e?: LogitEffect) => (e ? (e.token ? `${e.token_id} ${JSON.stringify(e.token)}` : String(e.token_id)) : "");
  const rows = Array.from({ length: n }, (_, i) => [
    label(promoted[i]),
    promoted[i] ? fmt(promoted[i].value) : "",
    label(suppressed[i]),
    suppressed[i] ? fmt(suppressed[i].value) : "",
  ]);
  return table("logit-effects", ["promoted", "logit", "suppressed", "logit"], rows);
}

export async function featurePage(ctx: PageContext, jobId: string, layerText: string, idText: string): Promise<void> {
  const layer = Number(layerText);
  const id = Number(idText);
  const here = `/jobs/${encodeURIComponent(jobId)}/layers/${layer}/features/${id}`;
  layerCrumbs(ctx, jobId, layerText, [`feature ${id}`, here]);
  ctx.setTitle(`feature ${id} · ${jobId} layer ${layer}`);
  // Two requests: the curves (small, fast) are drawn as soon as they
  // arrive; the contexts of every checkpoint (read from the job's token file
  // by the coordinator, larger and slower) are asked for next and fill the
  // table when they arrive. One after the other: at once, the slow one
  // delays the fast one on a busy coordinator.
  const history = await api.feature(jobId, layer, id, false, ctx.signal);
  const withContexts = api.feature(jobId, layer, id, true, ctx.signal);
  withContexts.catch(() => undefined); // Reported below, when awaited.
  let points = history.points;
  const x = points.map((p) => num(p.step));
  ctx.app.append(
    h("h1", {}, `Feature ${id}`, h("small", {}, ` layer ${layer} · ${jobId}`)),
    provisionalBadge(history.provisional, analysedThrough(points)) ?? "",
  );
  if (points.length === 0) {
    ctx.app.append(h("p", {}, "No history stored for this feature."));
    return;
  }

  const grid = h("div", { class: "grid" });
  ctx.app.append(grid);
  const val = (f: (p: FeaturePoint) => number | undefined) => points.map((p) => f(p) ?? null);
  lineChart(grid, {
    testid: "chart-cos",
    title: "decoder direction: cos to final and to previous checkpoint",
    x,
    lines: [
      { label: "cos to final", values: val((p) => p.decoder_cos_final), color: palette[0], width: 2 },
      { label: "cos to previous", values: val((p) => p.decoder_cos_prev), color: palette[1] },
    ],
  });
  lineChart(grid, {
    testid: "chart-frequency",
    title: "firing frequency",
    x,
    lines: [{ label: "frequency", values: val((p) => p.frequency), color: palette[2] }],
  });
  lineChart(grid, {
    testid: "chart-activation",
    title: "activation: mean when firing and max",
    x,
    lines: [
      { label: "mean", values: val((p) => p.mean_activation), color: palette[3] },
      { label: "max", values: val((p) => p.max_activation), color: palette[4] },
    ],
  });
  lineChart(grid, {
    testid: "chart-progress",
    title: "progress measure",
    x,
    lines: [
      { label: "activation space", values: val((p) => p.progress_activation), color: palette[0] },
      { label: "feature space", values: val((p) => p.progress_feature), color: palette[5] },
      { label: "token-controlled", values: val((p) => p.progress_token_controlled), color: palette[1], dash: [4, 3] },
    ],
  });
  performance.mark("saetrack:charts");

  // The checkpoint shown below: ?step= when it names one, else the last.
  const wanted = Number(ctx.query.get("step") ?? NaN);
  let index = x.indexOf(wanted);
  if (index < 0) index = points.length - 1;

  const pca = points
    .map((p, i) => ({ p, i }))
    .filter(({ p }) => p.pca_x !== undefined && p.pca_y !== undefined);
  const pcaBox = h("div", {});
  grid.append(pcaBox);

  const slider = h("input", {
    type: "range",
    min: 0,
    max: points.length - 1,
    value: index,
    step: 1,
    testid: "step-slider",
    "aria-label": "checkpoint",
  });
  const stepLabel = h("output", { testid: "step-label" });
  const contexts = h("div", { testid: "contexts" });
  const effects = h("div", {});
  const detail = h("div", { testid: "point-detail" });
  ctx.app.append(
    h("h2", {}, "Top contexts at checkpoint"),
    h("div", { class: "slider" }, slider, " ", stepLabel),
    detail,
    contexts,
    effects,
  );

  const show = (i: number, updateUrl: boolean) => {
    index = i;
    const p = points[i];
    slider.value = String(i);
    stepLabel.textContent = `step ${num(p.step)} (chain ${p.chain_index}, ${i + 1} of ${points.length})`;
    detail.replaceChildren(
      `frequency ${fmt(p.frequency)} · mean activation ${fmt(p.mean_activation)} · max ${fmt(p.max_activation)} · cos to final ${fmt(p.decoder_cos_final)}`,
    );
    const max = Math.max(0, ...p.contexts.map((c) => c.activation));
    const loading = points === history.points;
    contexts.replaceChildren(
      loading
        ? h("p", { class: "note" }, "Loading the contexts…")
        : p.contexts.length === 0
        ? h("p", {}, p.analysed ? "No context activates this feature here." : "This checkpoint was not analysed.")
        : h(
            "table",
            { testid: "contexts-table", class: "contexts" },
            h("thead", {}, h("tr", {}, h("th", {}, "activation"), h("th", {}, ""), h("th", {}, "context"))),
            h("tbody", {}, ...p.contexts.map((c) => contextRow(c, max))),
          ),
    );
    const le = logitEffects(p);
    effects.replaceChildren(...(le ? [h("h2", {}, "Logit effects"), le] : []));
    pcaBox.replaceChildren();
    trajectory(
      pcaBox,
      pca.map(({ p: q }) => ({ x: q.pca_x!, y: q.pca_y!, step: num(q.step) })),
      pca.findIndex(({ i: j }) => j === i),
      (k) => show(pca[k].i, true),
    );
    if (updateUrl) window.history.replaceState(null, "", `${here}?step=${num(p.step)}`);
  };
  slider.addEventListener("input", () => show(Number(slider.value), true));
  show(index, false);
  const full = await withContexts;
  points = full.points;
  show(index, false);
}
