// Small DOM helpers shared by the pages.
import { ApiError } from "./api";

type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number | boolean | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === "class") el.className = String(v);
    else if (k === "testid") el.dataset.testid = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// An in-app link (history navigation, see main.ts).
export function link(href: string, ...children: Child[]): HTMLAnchorElement {
  return h("a", { href, "data-link": true }, ...children);
}

// Numbers as the CLI prints them: 4 significant digits, exponent when tiny.
export function fmt(v: number | undefined | null, digits = 4): string {
  if (v === undefined || v === null || !Number.isFinite(v)) return "—";
  if (v === 0) return "0";
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e6) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

export function table(
  testid: string,
  headers: string[],
  rows: Child[][],
): HTMLTableElement {
  return h(
    "table",
    { testid },
    h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c) => h("td", {}, c))))),
  );
}

export function errorBox(e: unknown): HTMLElement {
  if (e instanceof ApiError) {
    return h("div", { class: "error", testid: "error", role: "alert" }, `${e.status} ${e.code}: ${e.message}`);
  }
  return h("div", { class: "error", testid: "error", role: "alert" }, String(e));
}

export function kindName(kind: string): string {
  switch (kind) {
    case "FEATURE_KIND_TOKEN_LEVEL":
      return "token-level";
    case "FEATURE_KIND_CONCEPT_LEVEL":
      return "concept-level";
    case "FEATURE_KIND_DEAD":
      return "dead";
    default:
      return "—";
  }
}

export function stateName(state: string): string {
  return state.replace("JOB_STATE_", "").toLowerCase();
}

export function isTerminal(state: string): boolean {
  return ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(state);
}
