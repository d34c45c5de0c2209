// Jobs: the list with state and live progress, and one job's page.
import { api, Job, JobUpdate, num } from "../api";
import { followSection, stateLabel } from "../follow";
import type { PageContext } from "../main";
import { fmt, h, isTerminal, link, stateName, table } from "../ui";

function progressText(job: Job): string {
  const p = job.progress;
  let s = `${p.tasks_done}/${p.tasks_total} SAEs`;
  if (p.analysis_tasks_total > 0) s += `, analysis ${p.analysis_tasks_done}/${p.analysis_tasks_total}`;
  return s;
}

function progressBar(job: Job): HTMLElement {
  const p = job.progress;
  const total = p.tasks_total + p.analysis_tasks_total;
  const done = p.tasks_done + p.analysis_tasks_done;
  const bar = h("progress", { max: Math.max(1, total), value: done });
  return h("span", { class: "progress", testid: "progress" }, bar, " ", progressText(job));
}

function created(job: Job): string {
  const ms = num(job.create_time_ms);
  return Number.isFinite(ms) && ms > 0 ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—";
}

// Follows a running job over server-sent events (JobService.WatchJob) and
// calls `onUpdate` with each update until the job ends or the page is left.
function watch(jobId: string, signal: AbortSignal, onUpdate: (u: JobUpdate) => void): void {
  const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/watch`);
  source.onmessage = (e) => {
    const update = JSON.parse(e.data) as JobUpdate;
    onUpdate(update);
    if (isTerminal(update.job.state)) source.close();
  };
  source.addEventListener("error", () => {
    // EventSource reconnects on its own; a closed page stops it.
    if (signal.aborted) source.close();
  });
  signal.addEventListener("abort", () => source.close());
}

function jobRow(job: Job): HTMLTableRowElement {
  const row = h(
    "tr",
    { "data-job": job.job_id },
    h("td", {}, link(`/jobs/${encodeURIComponent(job.job_id)}`, job.job_id)),
    h("td", {}, job.spec?.name ?? ""),
    h("td", { class: `state ${stateName(job.state)}`, testid: "state" }, stateLabel(job, stateName(job.state), isTerminal(job.state))),
    h("td", {}, progressBar(job)),
    h("td", { class: "num" }, fmt(num(job.progress.tokens_trained))),
    h("td", {}, job.submitter || "—"),
    h("td", {}, created(job)),
  );
  return row;
}

export async function jobsPage(ctx: PageContext): Promise<void> {
  ctx.setCrumbs([["jobs", "/jobs"]]);
  ctx.setTitle("jobs");
  const tbody = h("tbody", {});
  const t = h(
    "table",
    { testid: "jobs-table" },
    h(
      "thead",
      {},
      h("tr", {}, ...["job", "name", "state", "progress", "tokens trained", "submitter", "created"].map((s) => h("th", {}, s))),
    ),
    tbody,
  );
  const more = h("button", { type: "button", hidden: true }, "More jobs");
  ctx.app.append(h("h1", {}, "Jobs"), t, more);
  let token = "";
  const load = async () => {
    const page = await api.jobs(token);
    for (const job of page.jobs) {
      const row = jobRow(job);
      tbody.append(row);
      if (!isTerminal(job.state)) {
        watch(job.job_id, ctx.signal, (u) => {
          const fresh = jobRow(u.job);
          row.replaceChildren(...Array.from(fresh.childNodes));
        });
      }
    }
    token = page.next_page_token;
    more.hidden = !token;
  };
  more.addEventListener("click", () => void load());
  await load();
  if (tbody.childElementCount === 0) ctx.app.append(h("p", {}, "No jobs yet: submit one with `saetrack submit`."));
}

export async function jobPage(ctx: PageContext, jobId: string): Promise<void> {
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  ctx.setCrumbs([
    ["jobs", "/jobs"],
    [jobId, base],
  ]);
  ctx.setTitle(jobId);
  const job = await api.job(jobId);
  const status = h("div", { class: "status" });
  const rate = h("span", { testid: "rate" });
  const follow = h("div", {});
  const show = (j: Job) => {
    status.replaceChildren(
      h("span", { class: `state ${stateName(j.state)}`, testid: "state" }, stateLabel(j, stateName(j.state), isTerminal(j.state))),
      " ",
      progressBar(j),
      " · tokens trained ",
      fmt(num(j.progress.tokens_trained)),
      j.error ? h("div", { class: "error" }, j.error) : "",
    );
    follow.replaceChildren(followSection(j, Date.now()) ?? "");
  };
  show(job);
  const checkpoints = job.spec.model?.checkpoints ?? [];
  ctx.app.append(
    h("h1", {}, job.spec.name ? `${job.spec.name} ` : "", h("small", {}, jobId)),
    status,
    rate,
    follow,
    h(
      "p",
      {},
      `${checkpoints.length} checkpoints (steps ${checkpoints.map((c) => num(c.step)).join(", ")}), `,
      `${job.spec.sae?.architecture || "relu_l1"} SAE, created ${created(job)}`,
      job.submitter ? `, submitted by ${job.submitter}` : "",
      ".",
    ),
    h("h2", {}, "Hooked layers"),
    table(
      "layers-table",
      ["layer", "site", "pages"],
      (job.spec.hooks ?? []).map((hook) => {
        const lb = `${base}/layers/${hook.layer}`;
        return [
          String(hook.layer),
          hook.site || "resid_pre",
          h(
            "span",
            { class: "links" },
            link(lb, "metrics"),
            " · ",
            link(`${lb}/drift`, "drift"),
            " · ",
            link(`${lb}/features`, "features"),
          ),
        ];
      }),
    ),
  );
  if (!isTerminal(job.state)) {
    watch(jobId, ctx.signal, (u) => {
      show(u.job);
      rate.textContent = u.tokens_per_second > 0 ? `${fmt(u.tokens_per_second)} tokens/s` : "";
    });
  }
}
