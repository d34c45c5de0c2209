// The feature browser's router: every page has its own URL (history API),
// so any page can be shared, reloaded or opened directly; saetrack-web
// serves index.html for all of them.
import "./style.css";
import { h, link, errorBox } from "./ui";
import { jobsPage, jobPage } from "./pages/jobs";
import { layerPage } from "./pages/layer";
import { driftPage } from "./pages/drift";
import { featuresPage } from "./pages/features";
import { featurePage } from "./pages/feature";

export interface PageContext {
  app: HTMLElement;
  query: URLSearchParams;
  // Aborted when the user leaves the page.
  signal: AbortSignal;
  setCrumbs: (crumbs: [string, string][]) => void;
  setTitle: (title: string) => void;
}

type Page = (ctx: PageContext, ...args: string[]) => Promise<void>;

const routes: [RegExp, Page][] = [
  [/^\/jobs\/?$/, jobsPage],
  [/^\/jobs\/([^/]+)\/?$/, jobPage],
  [/^\/jobs\/([^/]+)\/layers\/(\d+)\/?$/, layerPage],
  [/^\/jobs\/([^/]+)\/layers\/(\d+)\/drift\/?$/, driftPage],
  [/^\/jobs\/([^/]+)\/layers\/(\d+)\/features\/?$/, featuresPage],
  [/^\/jobs\/([^/]+)\/layers\/(\d+)\/features\/(\d+)\/?$/, featurePage],
];

let current: AbortController | null = null;

async function render(): Promise<void> {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const app = document.getElementById("app")!;
  const crumbs = document.getElementById("crumbs")!;
  app.replaceChildren();
  document.body.dataset.loaded = "false";
  let path = location.pathname;
  if (path === "/" || path === "") {
    history.replaceState(null, "", "/jobs");
    path = "/jobs";
  }
  const ctx: PageContext = {
    app,
    query: new URLSearchParams(location.search),
    signal: controller.signal,
    setCrumbs: (list) =>
      crumbs.replaceChildren(
        ...list.flatMap(([label, href], i) => [
          i > 0 ? h("span", { class: "sep" }, "›") : "",
          i === list.length - 1 ? h("span", { "aria-current": "page" }, label) : link(href, label),
        ]),
      ),
    setTitle: (title) => {
      document.title = `${title} · saetrack`;
    },
  };
  for (const [pattern, page] of routes) {
    const m = pattern.exec(path);
    if (!m) continue;
    try {
      await page(ctx, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (controller.signal.aborted) return;
      app.append(errorBox(e));
    }
    if (!controller.signal.aborted) {
      document.body.dataset.loaded = "true";
      performance.mark("saetrack:rendered");
    }
    return;
  }
  ctx.setCrumbs([["not found", path]]);
  app.append(h("div", { class: "error", testid: "error" }, `No page at ${path}.`), link("/jobs", "All jobs"));
  document.body.dataset.loaded = "true";
}

export function navigate(href: string, replace = false): void {
  if (replace) history.replaceState(null, "", href);
  else history.pushState(null, "", href);
  void render();
}

document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest?.("a[data-link]") as HTMLAnchorElement | null;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  if (a.origin !== location.origin) return;
  e.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener("popstate", () => void render());
void render();
