// The feature browser in a real browser: Debian's Chromium (never a
// downloaded one) driven by playwright-core, against a saetrack-web in front
// of a real coordinator holding a finished job. Every page loads without
// console errors, its charts are drawn with the expected number of points,
// the numbers shown equal the API's, filters and paging change the table, a
// feature URL opens directly and the pages link to each other. Writes a
// screenshot of every page into --out.
//
//   node web/test/browser_test.mjs --base http://127.0.0.1:PORT --job J
//       --layer L --out DIR
// Exits 0 when every check passes; prints one line per check.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
// playwright-core is a dev dependency of the front end (one lockfile).
const require = createRequire(path.join(here, "../frontend/package.json"));
const { chromium } = require("playwright-core");

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const k of ["base", "job", "layer", "out"]) {
    if (!out[k]) {
      console.error(`browser_test: --${k} is required`);
      process.exit(2);
    }
  }
  return out;
}

const opts = args();
mkdirSync(opts.out, { recursive: true });
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}
function close(a, b) {
  return Math.abs(a - b) <= 1e-3 * Math.max(1, Math.abs(a), Math.abs(b));
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
const page = await context.newPage();
const consoleErrors = [];
page.on("console", (m) => {
  if (m.type() === "error") consoleErrors.push(`${page.url()}: ${m.text()}`);
});
page.on("pageerror", (e) => consoleErrors.push(`${page.url()}: ${e.message}`));
// Nothing may be fetched from anywhere but saetrack-web (works offline).
const foreign = [];
page.on("request", (r) => {
  if (!r.url().startsWith(opts.base) && !r.url().startsWith("data:")) foreign.push(r.url());
});

const api = async (p) => {
  const res = await page.request.get(opts.base + p);
  if (!res.ok()) throw new Error(`${p}: ${res.status()} ${await res.text()}`);
  return res.json();
};
const J = encodeURIComponent(opts.job);
const L = opts.layer;
const layerUrl = `/jobs/${J}/layers/${L}`;

async function open(url, name) {
  const before = consoleErrors.length;
  await page.goto(opts.base + url);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 30000 });
  check((await page.locator("[data-testid=error]").count()) === 0, `${name}: no error box`);
  check(consoleErrors.length === before, `${name}: no console errors ${consoleErrors.slice(before).join(" | ")}`);
}
async function shot(name) {
  await page.screenshot({ path: path.join(opts.out, `${name}.png`), fullPage: true });
}
async function settled() {
  await page.waitForSelector("body[data-loaded=true]", { timeout: 30000 });
}
const rows = (testid) => page.locator(`[data-testid=${testid}] tbody tr`).count();
const attr = (sel, name) => page.locator(sel).first().getAttribute(name);
const ids = async () => page.locator("[data-testid=features-table] tbody tr").evaluateAll((trs) => trs.map((t) => Number(t.dataset.feature)));
async function canvasDrawn(testid) {
  return page.locator(`[data-testid=${testid}] canvas`).first().evaluate((c) => c.width > 0 && c.height > 0);
}

// Jobs.
const jobs = await api("/api/jobs");
await open("/jobs", "jobs");
check((await rows("jobs-table")) === jobs.jobs.length, `jobs: ${jobs.jobs.length} rows as the API lists`);
const jobRow = page.locator(`tr[data-job="${opts.job}"]`);
check((await jobRow.count()) === 1, "jobs: the job is listed");
check((await jobRow.locator("[data-testid=state]").textContent()) === "succeeded", "jobs: state succeeded");
await shot("jobs");

// Job: follow the link from the list.
await jobRow.locator("a").first().click();
await settled();
check(page.url() === `${opts.base}/jobs/${J}`, "job: link from the list opens /jobs/J");
const job = await api(`/api/jobs/${J}`);
check((await rows("layers-table")) === job.spec.hooks.length, `job: ${job.spec.hooks.length} hooked layer(s)`);
const progress = await page.locator("[data-testid=progress]").textContent();
check(
  progress.includes(`${job.progress.tasks_done}/${job.progress.tasks_total} SAEs`),
  `job: progress shows ${job.progress.tasks_done}/${job.progress.tasks_total}`,
);
// A fixed-list job: no follow section.
check((await page.locator("[data-testid=follow]").count()) === (job.follow ? 1 : 0), `job: follow section ${job.follow ? "shown" : "absent"}`);
await shot("job");

// Layer overview: metrics charts and table.
const metrics = await api(`/api/jobs/${J}/layers/${L}/metrics`);
const n = metrics.checkpoints.length;
await open(layerUrl, "layer");
for (const id of ["chart-fvu", "chart-l0", "chart-dead", "chart-tokens"]) {
  check((await attr(`[data-testid=${id}]`, "data-points")) === String(n), `layer: ${id} has ${n} points`);
  check(await canvasDrawn(id), `layer: ${id} canvas drawn`);
}
check((await rows("metrics-table")) === n, `layer: metrics table has ${n} rows`);
const fvuCells = await page.locator("[data-testid=metrics-table] tbody tr td:nth-child(4)").allTextContents();
const l0Cells = await page.locator("[data-testid=metrics-table] tbody tr td:nth-child(5)").allTextContents();
const stepCells = await page.locator("[data-testid=metrics-table] tbody tr td:nth-child(1)").allTextContents();
check(
  metrics.checkpoints.every((c, i) => close(Number(fvuCells[i]), c.fvu) && close(Number(l0Cells[i]), c.l0) && stepCells[i] === String(Number(c.step))),
  "layer: steps, FVU and L0 shown equal the API's",
);
await shot("layer");

// Drift: go there through the tab.
await page.locator("nav.tabs a", { hasText: "drift" }).click();
await settled();
check(page.url() === `${opts.base}${layerUrl}/drift`, "drift: tab opens /drift");
const drift = await api(`/api/jobs/${J}/layers/${L}/drift`);
const dn = drift.checkpoints.length;
check((await attr("[data-testid=chart-cos-final]", "data-points")) === String(dn), `drift: cos-to-final chart has ${dn} points`);
check((await attr("[data-testid=chart-cos-prev]", "data-points")) === String(dn), `drift: cos-to-previous chart has ${dn} points`);
check(await canvasDrawn("chart-cos-final"), "drift: bands canvas drawn");
const phaseSeries = drift.phases ? 6 : 5;
check((await attr("[data-testid=chart-cos-final]", "data-series")) === String(phaseSeries), `drift: ${phaseSeries} series (bands, median${drift.phases ? ", phase fit" : ""})`);
const bins = Number(await attr("[data-testid=chart-formation]", "data-points"));
check((await page.locator("[data-testid=chart-formation] rect.bar").count()) === 2 * bins, `drift: ${2 * bins} formation bars`);
check((await rows("kinds-table")) === drift.kinds.length, `drift: ${drift.kinds.length} kinds`);
const kindCounts = await page.locator("[data-testid=kinds-table] tbody tr td:nth-child(2)").allTextContents();
check(drift.kinds.every((k, i) => kindCounts[i] === String(k.count)), "drift: kind counts equal the API's");
for (const [kind, title] of [["token_level", "token-level"], ["concept_level", "concept-level"]]) {
  const bars = await page.locator(`[data-testid=chart-formation] rect.bar:has(title:text-matches("^${title},"))`).evaluateAll((els) => els.reduce((s, e) => s + Number(e.getAttribute("data-value")), 0));
  const formed = await api(`/api/jobs/${J}/layers/${L}/features?kind=${kind}&min_formation=0&page_size=1`);
  check(bars === formed.total, `drift: ${title} formation bars sum to ${formed.total} as ListFeatures counts`);
}
// The job was closed with its final analysis: no provisional badge.
check(drift.provisional === false, "drift: the API's summary is final (provisional false)");
check((await page.locator("[data-testid=provisional]").count()) === 0, "drift: no provisional badge");
await shot("drift");
// From the drift page to the most drifted concept-level features, to the
// first of them and its contexts (the path a new user takes).
const concept = drift.kinds.find((k) => k.kind === "FEATURE_KIND_CONCEPT_LEVEL");
if (concept && concept.count > 0) {
  await page.locator("[data-testid=kinds-table] tr", { hasText: "concept-level" }).locator("a").click();
  await settled();
  check(page.url().endsWith("/features?kind=concept_level&order=drift"), "drift: 'most drifted' opens the concept-level features by drift");
  const drifted = await api(`/api/jobs/${J}/layers/${L}/features?kind=concept_level&order=drift&page_size=50`);
  check(JSON.stringify(await ids()) === JSON.stringify(drifted.features.map((f) => f.feature_id)), "drift -> features: rows as the API's");
  await page.locator("[data-testid=features-table] tbody tr a").first().click();
  await settled();
  check(page.url().endsWith(`/features/${drifted.features[0].feature_id}`), "drift -> features -> feature: the most drifted feature opens");
  check((await page.locator("[data-testid=contexts-table] tbody tr").count()) > 0, "drift -> feature: contexts shown");
  await page.goBack();
  await settled();
  await page.goBack();
  await settled();
  check(page.url() === `${opts.base}${layerUrl}/drift`, "back twice returns to the drift page");
} else {
  check(false, "the job has concept-level features");
}

// Features: table, filters, order, paging.
await page.locator("nav.tabs a", { hasText: "features" }).click();
await settled();
const all = await api(`/api/jobs/${J}/layers/${L}/features?page_size=50`);
check((await attr("[data-testid=features-summary]", "data-total")) === String(all.total), `features: total ${all.total} as the API's`);
check((await rows("features-table")) === all.features.length, `features: ${all.features.length} rows`);
check(JSON.stringify(await ids()) === JSON.stringify(all.features.map((f) => f.feature_id)), "features: ids as the API's first page");
await page.waitForFunction(() => document.querySelectorAll("[data-testid=features-table] svg.sparkline").length > 0, null, { timeout: 30000 });
check((await page.locator("[data-testid=features-table] svg.sparkline").count()) > 0, "features: sparklines drawn");
await shot("features");
if (all.next_page_token) {
  await page.locator("[data-testid=next-page]").click();
  await settled();
  const second = await api(`/api/jobs/${J}/layers/${L}/features?page_size=50&page_token=${encodeURIComponent(all.next_page_token)}`);
  check(JSON.stringify(await ids()) === JSON.stringify(second.features.map((f) => f.feature_id)), "features: next page shows the API's second page");
  await page.goBack();
  await settled();
  check(JSON.stringify(await ids()) === JSON.stringify(all.features.map((f) => f.feature_id)), "features: back returns to the first page");
} else {
  check(false, "features: the job has more than one page of features");
}
await page.selectOption("[data-testid=filter-kind]", "token_level");
await settled();
await page.waitForURL(/kind=token_level/);
await settled();
const tokenLevel = await api(`/api/jobs/${J}/layers/${L}/features?kind=token_level&page_size=50`);
check((await attr("[data-testid=features-summary]", "data-total")) === String(tokenLevel.total), `features: kind filter total ${tokenLevel.total}`);
check(JSON.stringify(await ids()) === JSON.stringify(tokenLevel.features.map((f) => f.feature_id)), "features: kind filter rows as the API's");
await page.selectOption("[data-testid=filter-kind]", "");
await settled();
await page.selectOption("[data-testid=filter-order]", "frequency");
await page.waitForURL(/order=frequency/);
await settled();
const byFrequency = await api(`/api/jobs/${J}/layers/${L}/features?order=frequency&page_size=50`);
check(JSON.stringify(await ids()) === JSON.stringify(byFrequency.features.map((f) => f.feature_id)), "features: order by frequency as the API's");
await page.fill("[data-testid=filter-min_frequency]", "0.5");
await page.fill("[data-testid=filter-max_frequency]", "1");
await page.locator("[data-testid=filters] button[type=submit]").click();
await page.waitForURL(/min_frequency=0.5/);
await settled();
const frequent = await api(`/api/jobs/${J}/layers/${L}/features?order=frequency&min_frequency=0.5&max_frequency=1&page_size=50`);
check((await attr("[data-testid=features-summary]", "data-total")) === String(frequent.total), `features: frequency filter total ${frequent.total}`);

// Feature: click through from the table, then open a URL directly.
const featureId = byFrequency.features[0].feature_id;
await page.goto(`${opts.base}${layerUrl}/features?order=frequency`);
await settled();
await page.locator(`[data-testid=features-table] tr[data-feature="${featureId}"] a`).click();
await settled();
check(page.url() === `${opts.base}${layerUrl}/features/${featureId}`, "feature: link from the table opens /features/F");
const history = await api(`/api/jobs/${J}/layers/${L}/features/${featureId}?contexts=1`);
const points = history.points;
const first = points[0];
await open(`${layerUrl}/features/${featureId}?step=${Number(first.step)}`, "feature (direct URL)");
for (const id of ["chart-cos", "chart-frequency", "chart-activation", "chart-progress"]) {
  check((await attr(`[data-testid=${id}]`, "data-points")) === String(points.length), `feature: ${id} has ${points.length} points`);
  check(await canvasDrawn(id), `feature: ${id} canvas drawn`);
}
const withPca = points.filter((p) => p.pca_x !== undefined && p.pca_y !== undefined).length;
check((await page.locator("[data-testid=chart-pca] svg circle").count()) === withPca, `feature: PCA trajectory has ${withPca} points`);
check((await page.locator("[data-testid=step-label]").textContent()).startsWith(`step ${Number(first.step)} `), "feature: ?step= selects that checkpoint");
const checkContexts = async (p, label) => {
  const shown = await page.locator("[data-testid=contexts-table] tbody tr").count();
  check(shown === p.contexts.length, `feature: ${p.contexts.length} contexts at step ${Number(p.step)} (${label})`);
  if (p.contexts.length > 0) {
    check((await page.locator("[data-testid=contexts-table] mark[data-testid=focus]").count()) === p.contexts.length, "feature: the activating token is highlighted in each context");
    const acts = await page.locator("[data-testid=contexts-table] tbody tr td:first-child").allTextContents();
    check(p.contexts.every((c, i) => close(Number(acts[i]), c.activation)), "feature: activations shown equal the API's");
  }
};
await checkContexts(first, "from the URL");
// The slider to the last checkpoint.
const lastIndex = points.length - 1;
await page.locator("[data-testid=step-slider]").evaluate((el, v) => {
  el.value = String(v);
  el.dispatchEvent(new Event("input", { bubbles: true }));
}, lastIndex);
const last = points[lastIndex];
check(page.url().endsWith(`?step=${Number(last.step)}`), "feature: the slider puts the step into the URL");
await checkContexts(last, "slider");
const effectsRows = (p) => Math.max(p.logit_effects?.promoted?.length ?? 0, p.logit_effects?.suppressed?.length ?? 0);
const lastEffects = effectsRows(last);
check((await page.locator("[data-testid=logit-effects]").count()) === (lastEffects > 0 ? 1 : 0), `feature: logit effects ${lastEffects > 0 ? "shown" : "absent, as in the answer"}`);
// The job's analysis has the default spec.analysis.logit_effects_k (10).
check(lastEffects === 10, `feature: the answer carries 10 logit effects per side (${lastEffects})`);
if (lastEffects > 0) {
  check((await page.locator("[data-testid=logit-effects] tbody tr").count()) === lastEffects, `feature: ${lastEffects} logit-effect rows`);
  const cells = await page.locator("[data-testid=logit-effects] tbody tr:first-child td").allTextContents();
  const top = last.logit_effects.promoted[0];
  const bottom = last.logit_effects.suppressed[0];
  check(cells[0].startsWith(String(top.token_id)) && (!top.token || cells[0].includes(JSON.stringify(top.token))), "feature: the most promoted token shown with its text");
  check(close(Number(cells[1]), top.value) && close(Number(cells[3]), bottom.value), "feature: logits shown equal the API's");
  check(cells[2].startsWith(String(bottom.token_id)), "feature: the most suppressed token shown");
}
check(history.provisional === false, "feature: the API's history is final (provisional false)");
check((await page.locator("[data-testid=provisional]").count()) === 0, "feature: no provisional badge");
await shot("feature");

// A missing feature is an error on the page, not a crash.
await page.goto(`${opts.base}${layerUrl}/features/999999`);
await settled();
check(((await page.locator("[data-testid=error]").textContent()) ?? "").includes("404 NOT_FOUND"), "feature 999999: 404 NOT_FOUND shown");

check(foreign.length === 0, `nothing fetched from outside saetrack-web ${foreign.join(" ")}`);
await browser.close();
console.log(failures === 0 ? "browser_test: all checks passed" : `browser_test: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
