// The JSON API of saetrack-web: the proto JSON mapping of the coordinator's
// JobService / QueryService answers, with proto field names. 64-bit integers
// arrive as strings (proto JSON mapping); num() turns them into numbers.

export type Int64 = string | number;

export function num(v: Int64 | undefined | null): number {
  return v === undefined || v === null ? NaN : Number(v);
}

export interface JobProgress {
  tasks_total: number;
  tasks_done: number;
  tokens_trained: Int64;
  analysis_tasks_total: number;
  analysis_tasks_done: number;
}

// Follow mode (job.proto): a job that takes checkpoints of a training run
// as they appear.
export interface FollowSpec {
  dir: string;
  pattern: string;
  until_step?: Int64;
  analyse_every: number;
}

export interface FollowedCheckpoint {
  step: Int64;
  path: string;
  seen_ms: Int64;
  last_write_ms: Int64;
  taken_ms: Int64;
  stored_ms: Int64; // "0" until its SAEs are stored
}

export interface RefusedCheckpoint {
  step: Int64;
  path: string;
  reason: string;
  time_ms: Int64;
}

export interface FollowStatus {
  state: string; // FOLLOW_STATE_WAITING | _TRAINING | _CLOSED
  waiting_since_ms: Int64;
  last_step: Int64; // -1 before the first checkpoint
  last_taken_ms: Int64;
  checkpoints: FollowedCheckpoint[];
  refused: RefusedCheckpoint[];
  closed_ms: Int64;
  close_reason: string;
  analysis_round: number;
  analysed_checkpoints: number;
  analysis_running: boolean;
  refresh_pending: boolean;
  final_round: boolean;
}

export interface Job {
  job_id: string;
  spec: {
    name: string;
    model: { architecture: string; checkpoints: { step: Int64; path: string }[]; follow?: FollowSpec };
    hooks: { layer: number; site: string }[];
    sae: { architecture: string; expansion_factor?: number };
  };
  state: string;
  progress: JobProgress;
  error: string;
  create_time_ms: Int64;
  update_time_ms: Int64;
  request_id: string;
  // Set by coordinators that know who submitted the job.
  submitter?: string;
  // Set for a following job.
  follow?: FollowStatus;
}

export interface JobUpdate {
  job: Job;
  tokens_per_second: number;
  loss?: number;
  eta_seconds?: Int64;
}

export interface CheckpointMetrics {
  layer: number;
  step: Int64;
  chain_index: number;
  tokens_trained: Int64;
  fvu: number;
  l0: number;
  dead_fraction: number;
  lm?: { loss_recovered: number; ce_clean: number; ce_spliced: number };
  d_sae: number;
  converged: boolean;
}

export interface QualityVerdict {
  check: string;
  step: Int64;
  passed: boolean;
  verdict: string;
}

export interface Quantiles {
  q10: number;
  q25: number;
  q50: number;
  q75: number;
  q90: number;
}

export interface PhaseFit {
  breakpoint1_x: number;
  breakpoint2_x: number;
  breakpoint1_step: number;
  breakpoint2_step: number;
  slope1: number;
  slope2: number;
  slope3: number;
  intercept: number;
  r_squared: number;
  segments: number;
}

export interface CheckpointDrift {
  step: Int64;
  chain_index: number;
  cos_to_final?: Quantiles;
  cos_to_previous?: Quantiles;
  formed: number;
}

export interface KindSummary {
  kind: string;
  count: number;
  formed: number;
  mean_formation_step: number;
  median_formation_step: number;
}

export interface DriftSummary {
  checkpoints: CheckpointDrift[];
  phases?: PhaseFit;
  kinds: KindSummary[];
  formation_tau: number;
  token_level_threshold: number;
  // A following job before its final analysis: over the checkpoints up to
  // through_step, against that one as the final.
  provisional?: boolean;
  through_step?: Int64;
}

export interface FeatureSummary {
  feature_id: number;
  kind: string;
  top_token: number;
  top_token_share: number;
  top_token_text: string;
  formation_step?: Int64;
  final_frequency: number;
  cos_first_to_final: number;
}

export interface FeatureContext {
  position: Int64;
  activation: number;
  token: number;
  window: number[];
  focus: number;
  text: string;
}

export interface FeaturePoint {
  step: Int64;
  chain_index: number;
  frequency: number;
  mean_activation: number;
  max_activation: number;
  decoder_cos_prev?: number;
  decoder_cos_final?: number;
  analysed: boolean;
  progress_activation?: number;
  progress_feature?: number;
  progress_token_controlled?: number;
  pca_x?: number;
  pca_y?: number;
  contexts: FeatureContext[];
  // From the analysis pass when the job computes them (FeaturePoint.logit_effects).
  logit_effects?: LogitEffects;
}

export interface LogitEffect {
  token_id: number;
  value: number;
  token: string; // decoded with the job's tokenizer; "" without one
}

export interface LogitEffects {
  promoted: LogitEffect[]; // descending value
  suppressed: LogitEffect[]; // ascending value
}

export interface FeatureHistory {
  job_id: string;
  layer: number;
  feature_id: number;
  points: FeaturePoint[];
  // A following job before its final analysis (against the latest analysed
  // checkpoint).
  provisional?: boolean;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function get<T>(path: string, signal?: AbortSignal): Promise<T> {
  const res = await fetch(path, { headers: authHeaders(), signal });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(res.status, "BAD_RESPONSE", `${path}: ${res.status} ${text.slice(0, 200)}`);
  }
  if (!res.ok) {
    const e = (body as { error?: { code: string; message: string } }).error;
    throw new ApiError(res.status, e?.code ?? "UNKNOWN", e?.message ?? `${path}: ${res.status}`);
  }
  return body as T;
}

// A bearer token the user stored for this origin (sessionStorage), sent as
// the Authorization header; saetrack-web passes it to the coordinator.
function authHeaders(): Record<string, string> {
  const token = sessionStorage.getItem("saetrack-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export const api = {
  jobs: (pageToken = "") =>
    get<{ jobs: Job[]; next_page_token: string }>(
      `/api/jobs?page_size=50${pageToken ? `&page_token=${encodeURIComponent(pageToken)}` : ""}`,
    ),
  job: (job: string) => get<Job>(`/api/jobs/${enc(job)}`),
  metrics: (job: string, layer: number) =>
    get<{ checkpoints: CheckpointMetrics[] }>(`/api/jobs/${enc(job)}/layers/${layer}/metrics`),
  quality: (job: string, layer: number) =>
    get<{ checkpoints: CheckpointMetrics[]; verdicts: QualityVerdict[] }>(
      `/api/jobs/${enc(job)}/layers/${layer}/quality`,
    ),
  drift: (job: string, layer: number) =>
    get<DriftSummary>(`/api/jobs/${enc(job)}/layers/${layer}/drift`),
  features: (job: string, layer: number, query: URLSearchParams) =>
    get<{ features: FeatureSummary[]; next_page_token: string; total: number }>(
      `/api/jobs/${enc(job)}/layers/${layer}/features?${query}`,
    ),
  feature: (job: string, layer: number, id: number, contexts: boolean, signal?: AbortSignal) =>
    get<FeatureHistory>(
      `/api/jobs/${enc(job)}/layers/${layer}/features/${id}${contexts ? "?contexts=1&before=24&after=8" : ""}`,
      signal,
    ),
};

function enc(s: string): string {
  return encodeURIComponent(s);
}
