// Load times of the feature page in headless Chromium (Debian's): each load
// in a fresh browser context (empty cache), the page opened by its URL.
// Prints p50 and p90 over --loads of first contentful paint, the feature
// data fetch (GetFeatureHistory with contexts, through saetrack-web: request
// start to last byte), and the page rendered (charts, trajectory, contexts
// drawn), all in ms from navigation start, plus the JSON size.
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
const samples = { fcp: [], fetch: [], rendered: [] };
let bytes = 0;
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
    const api = performance
      .getEntriesByType("resource")
      .find((e) => e.name.includes("/features/") && e.name.includes("contexts=1"));
    const rendered = performance.getEntriesByName("saetrack:rendered")[0];
    return {
      fcp: fcp ? fcp.startTime : NaN,
      fetch: api ? api.responseEnd - api.startTime : NaN,
      bytes: api ? api.encodedBodySize : 0,
      rendered: rendered ? rendered.startTime : NaN,
      points: Number(document.querySelector("[data-testid=chart-cos]")?.getAttribute("data-points") ?? 0),
    };
  });
  if (errors.length || (await page.locator("[data-testid=error]").count())) {
    console.error(`load ${i}: ${errors.join(" | ")} ${await page.locator("[data-testid=error]").allTextContents()}`);
    process.exit(1);
  }
  samples.fcp.push(t.fcp);
  samples.fetch.push(t.fetch);
  samples.rendered.push(t.rendered);
  bytes = t.bytes;
  points = t.points;
  await context.close();
}
await browser.close();
const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.round(q * (s.length - 1)))];
};
const result = {
  loads,
  checkpoints: points,
  json_bytes: bytes,
  fcp_ms_p50: pct(samples.fcp, 0.5),
  fcp_ms_p90: pct(samples.fcp, 0.9),
  data_fetch_ms_p50: pct(samples.fetch, 0.5),
  data_fetch_ms_p90: pct(samples.fetch, 0.9),
  rendered_ms_p50: pct(samples.rendered, 0.5),
  rendered_ms_p90: pct(samples.rendered, 0.9),
};
if (opts.json) {
  console.log(JSON.stringify(result));
} else {
  console.log(`feature page, ${points} checkpoints, ${loads} cold loads, feature JSON ${(bytes / 1024).toFixed(0)} KiB`);
  console.log(`  first contentful paint  p50 ${result.fcp_ms_p50.toFixed(0)} ms  p90 ${result.fcp_ms_p90.toFixed(0)} ms`);
  console.log(`  feature data fetch      p50 ${result.data_fetch_ms_p50.toFixed(1)} ms  p90 ${result.data_fetch_ms_p90.toFixed(1)} ms`);
  console.log(`  page rendered           p50 ${result.rendered_ms_p50.toFixed(0)} ms  p90 ${result.rendered_ms_p90.toFixed(0)} ms`);
}
