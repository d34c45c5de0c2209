// Follow mode on the pages: a following job's state in words, its status
// section on the job page, and the badge on analysis pages that show the
// run so far (DriftSummary / FeatureHistory .provisional).
import { FeaturePoint, FollowStatus, Int64, Job, num } from "./api";
import { h, table } from "./ui";

// "12s", "3m05s", "2h10m", as the CLI prints durations.
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s >= 3600) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  return `${s}s`;
}

// "2026-12-04 20:21:00 UTC (12s ago)".
export function timeAndAgo(ms: Int64, now: number): string {
  const t = num(ms);
  if (!Number.isFinite(t) || t <= 0) return "—";
  const at = new Date(t).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  return `${at} (${duration((now - t) / 1000)} ago)`;
}

export function isFollowing(job: Job): boolean {
  return job.follow !== undefined || job.spec?.model?.follow !== undefined;
}

// "waiting for step > 32 since 12s", "training", "closed (closed by request)".
export function followStateText(f: FollowStatus, now: number): string {
  switch (f.state) {
    case "FOLLOW_STATE_WAITING": {
      const what = num(f.last_step) < 0 ? "waiting for the first checkpoint" : `waiting for step > ${num(f.last_step)}`;
      return `${what} since ${duration((now - num(f.waiting_since_ms)) / 1000)}`;
    }
    case "FOLLOW_STATE_TRAINING":
      return "training";
    case "FOLLOW_STATE_CLOSED":
      return f.close_reason ? `closed (${f.close_reason})` : "closed";
    default:
      return "starting";
  }
}

// The state cell of the jobs list: "running (following)" until the job ends.
export function stateLabel(job: Job, name: string, terminal: boolean): string {
  if (!isFollowing(job) || terminal) return name;
  return job.follow?.state === "FOLLOW_STATE_CLOSED" ? `${name} (following closed)` : `${name} (following)`;
}

export function analysisText(f: FollowStatus): string {
  let s =
    f.analysis_round > 0
      ? `${f.final_round ? "final" : "provisional"} round ${f.analysis_round} over ${f.analysed_checkpoints} checkpoints, ${f.analysis_running ? "running" : "done"}`
      : "no round yet";
  if (f.refresh_pending) s += "; a refresh starts after it";
  return s;
}

// The job page's follow section: state, last step, checkpoints taken and
// stored with the lag of the last stored, refused checkpoints, analysis.
export function followSection(job: Job, now: number): HTMLElement | null {
  const f = job.follow;
  if (!f) return null;
  const stored = f.checkpoints.filter((c) => num(c.stored_ms) > 0);
  const last = stored.reduce<(typeof stored)[number] | null>((a, c) => (a === null || num(c.stored_ms) >= num(a.stored_ms) ? c : a), null);
  const spec = job.spec.model.follow;
  let state = followStateText(f, now);
  if (f.state === "FOLLOW_STATE_WAITING") state = `${state.replace(/ since .*$/, "")} since ${timeAndAgo(f.waiting_since_ms, now)}`;
  if (f.state === "FOLLOW_STATE_CLOSED" && num(f.closed_ms) > 0) state += ` at ${timeAndAgo(f.closed_ms, now)}`;
  const items: [string, string][] = [
    ["following", spec?.dir ? `${spec.dir} (${spec.pattern || "step-{step}"})` : "checkpoints given by add-checkpoint only"],
    ["state", state],
    ["last step", num(f.last_step) >= 0 ? `${num(f.last_step)}, taken ${timeAndAgo(f.last_taken_ms, now)}` : "none taken yet"],
    [
      "checkpoints",
      `${f.checkpoints.length} taken, ${stored.length} stored` +
        (last ? `; lag of step ${num(last.step)}: ${duration((num(last.stored_ms) - num(last.last_write_ms)) / 1000)} from its last write to its SAEs stored` : ""),
    ],
    ["analysis", analysisText(f)],
  ];
  return h(
    "section",
    { testid: "follow" },
    h("h2", {}, "Following a training run"),
    h("dl", { class: "follow" }, ...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { testid: `follow-${k.replace(" ", "-")}` }, v)])),
    f.refused.length > 0
      ? table(
          "refused-table",
          ["refused step", "path", "reason"],
          f.refused.map((r) => [String(num(r.step)), r.path, r.reason]),
        )
      : null,
  );
}

// The step a feature history's provisional analysis ran against: the last
// analysed checkpoint (FeatureHistory carries no through_step).
export function analysedThrough(points: FeaturePoint[]): number | undefined {
  const steps = points.filter((p) => p.analysed).map((p) => num(p.step));
  return steps.length > 0 ? Math.max(...steps) : undefined;
}

// "provisional — run so far, up to step S" for an answer that is
// provisional; null otherwise, so final analyses show nothing.
export function provisionalBadge(provisional: boolean | undefined, throughStep: number | undefined): HTMLElement | null {
  if (!provisional) return null;
  const upTo = throughStep === undefined || !Number.isFinite(throughStep) ? "" : `, up to step ${throughStep}`;
  return h(
    "div",
    { class: "provisional", testid: "provisional", role: "status" },
    `provisional — run so far${upTo}; the final analysis runs after the job is closed`,
  );
}
