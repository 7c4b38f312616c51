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

/** The part of an OpenAI cursor list page that paging needs. */
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
export const LOWER_IS_BETTER = new Set(["perplexity", "loss", "errors"]); // errors: an external model's failed items

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

// The hyperparameter form's fields and ranges are in hyperparameters.ts.

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

export const FINAL_JOB_STATUSES = new Set(["succeeded", "failed", "cancelled"]);
export const FINAL_BATCH_STATUSES = new Set(["completed", "failed", "cancelled", "expired"]);
