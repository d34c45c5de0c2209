// Load times of the feature page in headless Chromium (Debian's): each load
// in a fresh browser context (empty cache), the page opened by its URL.
// Prints p50 and p90 over --loads of: first contentful paint; the two data
// fetches of the page through saetrack-web (request start to last byte): the
// curves (GetFeatureHistory without contexts) and the top contexts of every
// checkpoint (with contexts); the charts drawn and the whole page rendered
// (contexts table included), in ms from navigation start; the JSON sizes.
//
//   node web/bench/feature_page_bench.mjs --base URL --job J --layer L
//       [--features 16384] [--loads 10] [--json]
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../frontend/package.json"));
const { chromium } = require("playwright-core");

const opts = { loads: "10", features: "16384" };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i].replace(/^--/, "");
  if (k === "json") opts.json = true;
  else opts[k] = argv[++i];
}
const loads = Number(opts.loads);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const samples = { fcp: [], curves: [], contexts: [], charts: [], rendered: [] };
let bytes = [0, 0];
let points = 0;
for (let i = 0; i < loads; i++) {
  // Different features on each load: no server-side cache is warm for it.
  const feature = Math.floor(((i * 7919) % Number(opts.features)));
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${opts.base}/jobs/${opts.job}/layers/${opts.layer}/features/${feature}`);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 60000 });
  const t = await page.evaluate(() => {
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    const resources = performance.getEntriesByType("resource").filter((e) => e.name.includes("/features/"));
    const curves = resources.find((e) => !e.name.includes("contexts=1"));
    const contexts = resources.find((e) => e.name.includes("contexts=1"));
    const mark = (name) => performance.getEntriesByName(name)[0]?.startTime ?? NaN;
    return {
      fcp: fcp ? fcp.startTime : NaN,
      curves: curves ? curves.responseEnd - curves.startTime : NaN,
      curvesBytes: curves ? curves.encodedBodySize : 0,
      contexts: contexts ? contexts.responseEnd - contexts.startTime : NaN,
      contextsBytes: contexts ? contexts.encodedBodySize : 0,
      charts: mark("saetrack:charts"),
      rendered: mark("saetrack:rendered"),
      points: Number(document.querySelector("[data-testid=chart-cos]")?.getAttribute("data-points") ?? 0),
    };
  });
  if (errors.length || (await page.locator("[data-testid=error]").count())) {
    console.error(`load ${i}: ${errors.join(" | ")} ${await page.locator("[data-testid=error]").allTextContents()}`);
    process.exit(1);
  }
  for (const k of Object.keys(samples)) samples[k].push(t[k]);
  bytes = [t.curvesBytes, t.contextsBytes];
  points = t.points;
  await context.close();
}
// The features table ordered by drift (ListFeatures sorts every feature of
// the layer): rendered, sparklines excluded (they fill in afterwards).
const table = [];
for (let i = 0; i < Math.min(loads, 5); i++) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  await page.goto(`${opts.base}/jobs/${opts.job}/layers/${opts.layer}/features?order=drift`);
  await page.waitForSelector("body[data-loaded=true]", { timeout: 60000 });
  table.push(await page.evaluate(() => performance.getEntriesByName("saetrack:rendered")[0]?.startTime ?? NaN));
  await context.close();
}
samples.table = table;
await browser.close();
const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.round(q * (s.length - 1)))];
};
const result = { loads, checkpoints: points, curves_json_bytes: bytes[0], contexts_json_bytes: bytes[1] };
for (const [k, xs] of Object.entries(samples)) {
  result[`${k}_ms_p50`] = Math.round(pct(xs, 0.5) * 10) / 10;
  result[`${k}_ms_p90`] = Math.round(pct(xs, 0.9) * 10) / 10;
}
if (opts.json) {
  console.log(JSON.stringify(result));
} else {
  const kib = (b) => `${(b / 1024).toFixed(0)} KiB`;
  console.log(`feature page, ${points} checkpoints, ${loads} cold loads; JSON: curves ${kib(bytes[0])}, contexts ${kib(bytes[1])}`);
  const line = (label, k) =>
    console.log(`  ${label.padEnd(30)} p50 ${String(result[`${k}_ms_p50`]).padStart(7)} ms   p90 ${String(result[`${k}_ms_p90`]).padStart(7)} ms`);
  line("first contentful paint", "fcp");
  line("data fetch: curves", "curves");
  line("data fetch: contexts", "contexts");
  line("charts drawn", "charts");
  line("page rendered with contexts", "rendered");
  line("features table (order=drift)", "table");
}
