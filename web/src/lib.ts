// Pure helpers (unit-tested in lib.test.ts).

export interface ApiErrorBody {
  message: string;
  type?: string | null;
  param?: string | null;
  code?: string | null;
  details?: { error_count?: number; errors?: { line: number; reason: string }[] } & Record<string, unknown>;
}

export class ApiError extends Error {
  status: number;
  body: ApiErrorBody;
  constructor(status: number, body: ApiErrorBody) {
    super(body.message);
    this.status = status;
    this.body = body;
  }
}

/** Turn a response status and its (maybe non-JSON) text into an ApiError. */
export function parseApiError(status: number, text: string): ApiError {
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object" && parsed.error && typeof parsed.error.message === "string") {
      return new ApiError(status, parsed.error);
    }
    if (parsed && typeof parsed.detail === "string") return new ApiError(status, { message: parsed.detail });
  } catch {
    /* not JSON */
  }
  const msg = text.trim() ? `${text.trim().slice(0, 500)} (HTTP ${status})` : `HTTP ${status}`;
  return new ApiError(status, { message: msg });
}

/** One human-readable line for any thrown value. */
export function formatError(err: unknown): string {
  if (err instanceof ApiError) {
    const b = err.body;
    const extra = [b.param ? `param: ${b.param}` : null, b.code ? `code: ${b.code}` : null].filter(Boolean);
    const first = b.message.split("\n")[0];
    return extra.length ? `${first} (${extra.join(", ")})` : first;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The structured line errors of an upload refusal, as "line N: reason" strings. */
export function lineErrors(err: unknown): string[] {
  if (!(err instanceof ApiError)) return [];
  const list = err.body.details?.errors;
  if (Array.isArray(list)) return list.map((e) => `line ${e.line}: ${e.reason}`);
  return err.body.message.split("\n").slice(1).filter((l) => /^line \d+/.test(l));
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
  last_id?: string | null;
}

/** Query string for a paginated list. */
export function pageQuery(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The cursor for the next page: last_id, else the id of the last item. */
export function nextCursor<T extends { id: string }>(page: Page<T>): string | null {
  if (!page.has_more) return null;
  if (page.last_id) return page.last_id;
  return page.data.length ? page.data[page.data.length - 1].id : null;
}

/** Append a page to a list without duplicating ids. */
export function mergePages<T extends { id: string }>(existing: T[], next: T[]): T[] {
  const seen = new Set(existing.map((x) => x.id));
  return existing.concat(next.filter((x) => !seen.has(x.id)));
}

/** Parse JSONL text; bad lines are reported, not thrown. */
export function parseJsonl(text: string, max = Infinity): { rows: unknown[]; errors: { line: number; reason: string }[] } {
  const rows: unknown[] = [];
  const errors: { line: number; reason: string }[] = [];
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  for (let i = 0; i < lines.length && rows.length < max; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    try {
      rows.push(JSON.parse(line));
    } catch (e) {
      errors.push({ line: i + 1, reason: e instanceof Error ? e.message : String(e) });
    }
  }
  return { rows, errors };
}

/** Metrics where a lower value is better. */
export const LOWER_IS_BETTER = new Set(["perplexity", "loss"]);

/** For each metric, the model(s) with the best value. Metrics with no clear direction (output_length) and metrics where all models tie are skipped. */
export function bestPerColumn(results: Record<string, Record<string, number | null | undefined>>): Record<string, string[]> {
  const best: Record<string, string[]> = {};
  const metrics = new Set<string>();
  for (const m of Object.values(results)) for (const k of Object.keys(m ?? {})) metrics.add(k);
  for (const metric of metrics) {
    if (metric === "output_length") continue;
    const lower = LOWER_IS_BETTER.has(metric);
    let bestVal: number | null = null;
    let who: string[] = [];
    for (const [model, vals] of Object.entries(results)) {
      const v = vals?.[metric];
      if (typeof v !== "number" || !Number.isFinite(v)) continue;
      if (bestVal === null || (lower ? v < bestVal : v > bestVal)) {
        bestVal = v;
        who = [model];
      } else if (v === bestVal) who.push(model);
    }
    const scored = Object.values(results).filter((vals) => typeof vals?.[metric] === "number" && Number.isFinite(vals[metric])).length;
    // Nothing stands out when every scored model ties.
    if (who.length && scored > 1 && who.length < scored) best[metric] = who;
  }
  return best;
}

function norm(s: unknown): string {
  return String(s ?? "").trim().replace(/\s+/g, " ").toLowerCase();
}

/** True when two answers are the same after whitespace/case normalization. */
export function sameAnswer(a: unknown, b: unknown): boolean {
  return norm(a) === norm(b);
}

/** True when the models' outputs in a prediction row are not all the same (after whitespace/case normalization). */
export function modelsDisagree(row: Record<string, unknown>, models: string[]): boolean {
  if (models.length < 2) return false;
  const first = norm(row[models[0]]);
  return models.some((m) => norm(row[m]) !== first);
}

export type HpValue = string; // "" or "auto" means auto; otherwise a number or text

export interface HpSpec {
  name: string;
  type: "int" | "number" | "enum" | "bool" | "modules";
  auto?: boolean; // accepts "auto"
  options?: string[];
  help: string;
}

export const EXTRA_HPS: HpSpec[] = [
  { name: "learning_rate", type: "number", help: "Peak learning rate, 0 < x ≤ 1. Default 2e-4 × multiplier; wins over the multiplier." },
  { name: "adapter", type: "enum", auto: true, options: ["qlora", "lora"], help: "qlora on CUDA, lora on CPU when auto." },
  { name: "lora_r", type: "int", help: "LoRA rank, integer 1–512. Default 16." },
  { name: "lora_alpha", type: "number", help: "LoRA scaling, 0 < x ≤ 4096. Default 2 × lora_r." },
  { name: "lora_dropout", type: "number", help: "Dropout on LoRA layers, 0 ≤ x < 1. Default 0.05." },
  { name: "target_modules", type: "modules", help: '"all-linear" (default) or a comma-separated list of module names, e.g. q_proj, v_proj.' },
  { name: "max_seq_length", type: "int", auto: true, help: "16–131072, at most the model's maximum. Auto: from the examples' token lengths." },
  { name: "warmup_ratio", type: "number", help: "Fraction of steps warming up, 0–0.5. Default 0.03." },
  { name: "lr_scheduler", type: "enum", options: ["linear", "cosine", "constant", "constant_with_warmup"], help: "Learning-rate schedule. Default linear." },
  { name: "weight_decay", type: "number", help: "0–1. Default 0." },
  { name: "gradient_accumulation_steps", type: "int", help: "1–256, at most batch_size. Default 1." },
  { name: "packing", type: "bool", help: "Pack several short examples per sequence. Default true." },
  { name: "checkpoint_interval", type: "int", auto: true, help: "Optimizer steps between checkpoints. Auto: a tenth of the run." },
  { name: "eval_interval", type: "int", auto: true, help: "Optimizer steps between validation losses. Auto: a tenth of the run." },
];

/** "auto"/"" → "auto" (or omitted), a number string → number. Throws on garbage. */
export function parseHpNumber(name: string, raw: string, integer: boolean, allowAuto: boolean): number | "auto" | undefined {
  const s = raw.trim();
  if (s === "" ) return undefined;
  if (s.toLowerCase() === "auto") {
    if (!allowAuto) throw new Error(`${name} does not accept "auto"; leave it empty to let the service choose`);
    return "auto";
  }
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got "${s}"`);
  if (integer && !Number.isInteger(n)) throw new Error(`${name} must be an integer, got "${s}"`);
  return n;
}

/** The `hyperparameters` object of a job request from the form's strings. */
export function buildHyperparameters(
  basic: { n_epochs: string; batch_size: string; learning_rate_multiplier: string },
  extra: Record<string, string>,
): Record<string, unknown> {
  const hp: Record<string, unknown> = {};
  const put = (k: string, v: unknown) => {
    if (v !== undefined) hp[k] = v;
  };
  put("n_epochs", parseHpNumber("n_epochs", basic.n_epochs, true, true));
  put("batch_size", parseHpNumber("batch_size", basic.batch_size, true, true));
  put("learning_rate_multiplier", parseHpNumber("learning_rate_multiplier", basic.learning_rate_multiplier, false, true));
  const ex: Record<string, unknown> = {};
  for (const spec of EXTRA_HPS) {
    const raw = (extra[spec.name] ?? "").trim();
    if (!raw) continue;
    if (spec.type === "int" || spec.type === "number") {
      const v = parseHpNumber(spec.name, raw, spec.type === "int", !!spec.auto);
      if (v !== undefined) ex[spec.name] = v;
    } else if (spec.type === "bool") {
      ex[spec.name] = raw === "true";
    } else if (spec.type === "modules") {
      ex[spec.name] = raw === "all-linear" ? "all-linear" : raw.split(",").map((s) => s.trim()).filter(Boolean);
    } else {
      ex[spec.name] = raw;
    }
  }
  if (Object.keys(ex).length) hp.extra = ex;
  return hp;
}

/** Seconds → "1h 02m", "3m 05s", "12s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

/** Rows → CSV text (RFC 4180 quoting). */
export function toCsv(rows: Record<string, unknown>[], columns?: string[]): string {
  const cols = columns ?? Array.from(new Set(rows.flatMap((r) => Object.keys(r))));
  const cell = (v: unknown) => {
    const s = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.map(cell).join(","), ...rows.map((r) => cols.map((c) => cell(r[c])).join(","))].join("\n") + "\n";
}

export const FINAL_JOB_STATUSES = new Set(["succeeded", "failed", "cancelled"]);
export const FINAL_BATCH_STATUSES = new Set(["completed", "failed", "cancelled", "expired"]);
