// Features: ListFeatures as a table, with its filters and orders, paging
// (the URL holds the filter and the page token, so a page can be shared) and
// a sparkline of cos to final per row, fetched per visible row only.
import { api, FeatureHistory, num } from "../api";
import { sparkline } from "../charts";
import { navigate, type PageContext } from "../main";
import { fmt, h, kindName, link } from "../ui";
import { layerCrumbs, layerNav } from "./layer";

const kFilters = ["kind", "order", "min_formation", "max_formation", "min_frequency", "max_frequency"] as const;
const kPageSize = 50;

// Runs `tasks` at most `limit` at a time.
async function pool(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

export async function featuresPage(ctx: PageContext, jobId: string, layerText: string): Promise<void> {
  const layer = Number(layerText);
  const here = `/jobs/${encodeURIComponent(jobId)}/layers/${layer}/features`;
  const lb = layerCrumbs(ctx, jobId, layerText, ["features", here]);
  ctx.setTitle(`${jobId} layer ${layer} features`);
  const q = ctx.query;

  const select = (name: string, options: [string, string][]) =>
    h(
      "select",
      { name, testid: `filter-${name}` },
      ...options.map(([v, label]) => h("option", { value: v, selected: (q.get(name) ?? "") === v }, label)),
    );
  const input = (name: string, placeholder: string) =>
    h("input", { name, testid: `filter-${name}`, placeholder, value: q.get(name) ?? "", size: 10, inputmode: "decimal" });
  const form = h(
    "form",
    { class: "filters", testid: "filters" },
    h("label", {}, "kind ", select("kind", [["", "any"], ["token_level", "token-level"], ["concept_level", "concept-level"], ["dead", "dead"]])),
    h("label", {}, "order ", select("order", [["", "feature id"], ["formation", "formation step"], ["drift", "most drifted"], ["frequency", "most frequent"]])),
    h("label", {}, "formed between ", input("min_formation", "step"), " and ", input("max_formation", "step")),
    h("label", {}, "frequency ", input("min_frequency", "min"), " to ", input("max_frequency", "max")),
    h("button", { type: "submit" }, "Apply"),
  );
  const apply = () => {
    const next = new URLSearchParams();
    const data = new FormData(form);
    for (const name of kFilters) {
      const v = String(data.get(name) ?? "").trim();
      if (v) next.set(name, v);
    }
    navigate(`${here}${next.toString() ? `?${next}` : ""}`);
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  for (const s of Array.from(form.querySelectorAll("select"))) s.addEventListener("change", apply);

  ctx.app.append(h("h1", {}, `Layer ${layer}: features`), layerNav(lb, "features"), form);

  const request = new URLSearchParams();
  for (const name of kFilters) if (q.get(name)) request.set(name, q.get(name)!);
  request.set("page_size", String(kPageSize));
  if (q.get("page_token")) request.set("page_token", q.get("page_token")!);
  const page = await api.features(jobId, layer, request);
  const pageNo = Number(q.get("page") ?? "1") || 1;
  const first = (pageNo - 1) * kPageSize + 1;

  const rows = page.features.map((f) => {
    const spark = h("td", { class: "spark" });
    const row = h(
      "tr",
      { "data-feature": f.feature_id },
      h("td", { class: "num" }, link(`${here}/${f.feature_id}`, String(f.feature_id))),
      h("td", {}, kindName(f.kind)),
      h("td", { class: "num" }, f.formation_step === undefined ? "—" : String(num(f.formation_step))),
      h("td", { class: "num" }, fmt(f.final_frequency)),
      h("td", { class: "num" }, fmt(1 - f.cos_first_to_final)),
      h("td", {}, f.top_token_text ? h("code", {}, JSON.stringify(f.top_token_text)) : String(f.top_token), ` (${fmt(f.top_token_share * 100, 3)}%)`),
      spark,
    );
    return { f, row, spark };
  });
  const headers = ["feature", "kind", "formation step", "final frequency", "drift (1 − cos first→final)", "top token", "cos to final"];
  const summary = h(
    "p",
    { testid: "features-summary" },
    page.total === 0
      ? "No feature matches."
      : `Features ${first}–${first + page.features.length - 1} of ${page.total} matching.`,
  );
  summary.dataset.total = String(page.total);
  const nav = h("div", { class: "pager" });
  if (pageNo > 1) {
    nav.append(
      (() => {
        const b = h("button", { type: "button", testid: "prev-page" }, "← Previous");
        b.addEventListener("click", () => history.back());
        return b;
      })(),
    );
  }
  if (page.next_page_token) {
    const next = new URLSearchParams(q);
    next.set("page_token", page.next_page_token);
    next.set("page", String(pageNo + 1));
    nav.append(link(`${here}?${next}`, "Next →"));
    (nav.lastChild as HTMLElement).dataset.testid = "next-page";
  }
  ctx.app.append(
    summary,
    h(
      "table",
      { testid: "features-table" },
      h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", {}, t)))),
      h("tbody", {}, ...rows.map((r) => r.row)),
    ),
    nav,
  );

  // Sparklines: one GetFeatureHistory (no contexts) per visible row, a few at
  // a time; the table is usable before they arrive.
  void pool(
    rows.map(({ f, spark }) => async () => {
      if (ctx.signal.aborted) return;
      try {
        const history: FeatureHistory = await api.feature(jobId, layer, f.feature_id, false, ctx.signal);
        spark.replaceChildren(sparkline(history.points.map((p) => p.decoder_cos_final ?? null)));
      } catch {
        /* the page was left or the row has no history */
      }
    }),
    4,
  );
}
