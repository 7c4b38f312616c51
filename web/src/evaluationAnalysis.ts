// Judges, ratings and error analysis of an evaluation: the request the
// New-evaluation form sends, the leaderboard's order, the tag chips and the
// items' filters. Pure helpers, unit-tested in evaluationAnalysis.test.ts.
import { pageQuery } from "./lib";
import type { Schemas } from "./types";

export type JudgeSpec = Schemas["JudgeSpec"];
export type Rating = Schemas["Rating"];
export type PairwiseResult = Schemas["PairRecord"];
export type Estimate = Schemas["EvaluationEstimate"];

/** What the form holds; `toRequest` makes the API's body of it. */
export interface EvaluationForm {
  fileId: string;
  split: "test" | "train" | "all";
  limit: string;
  models: string[];
  referenceJudge: boolean;
  pairwiseJudge: boolean;
  judgeModel: string;
  rubric: string;
}

/** The body of POST /v1/evaluations (and of /v1/evaluations/estimate). Throws a readable error for a form that cannot be sent. */
export function toRequest(form: EvaluationForm): Schemas["CreateEvaluationRequest"] {
  const judges: JudgeSpec[] = [];
  if (form.referenceJudge || form.pairwiseJudge) {
    if (!form.judgeModel) throw new Error("Pick a judge model");
    if (form.referenceJudge) judges.push({ kind: "reference", model: form.judgeModel, ...(form.rubric.trim() ? { rubric: form.rubric.trim() } : {}) });
    if (form.pairwiseJudge) {
      if (form.models.length < 2) throw new Error("A pairwise judge compares two models or more: pick another");
      judges.push({ kind: "pairwise", model: form.judgeModel });
    }
  }
  const limit = form.limit.trim();
  if (limit && !(Number.isInteger(Number(limit)) && Number(limit) >= 1)) throw new Error("The item limit must be a whole number ≥ 1");
  return {
    file_id: form.fileId,
    split: form.split,
    models: form.models,
    ...(limit ? { limit: Number(limit) } : {}),
    ...(judges.length ? { judges } : {}),
  };
}

/** Highest rating first (equal ratings share a rank); the CI as "low–high". */
export function leaderboard(ratings: Rating[] | null | undefined): (Rating & { rank: number; interval: string })[] {
  const sorted = [...(ratings ?? [])].sort((a, b) => b.rating - a.rating || a.model.localeCompare(b.model));
  return sorted.map((r) => ({
    ...r,
    rank: 1 + sorted.filter((other) => other.rating > r.rating).length,
    interval: `${Math.round(r.ci_low)}–${Math.round(r.ci_high)}`,
  }));
}

/** A pair's win/tie/loss rates over its valid judgments (invalid ones are counted apart). */
export function pairwiseRates(p: PairwiseResult): { win: number; tie: number; loss: number; valid: number } {
  const valid = p.wins + p.ties + p.losses;
  if (!valid) return { win: 0, tie: 0, loss: 0, valid };
  return { win: p.wins / valid, tie: p.ties / valid, loss: p.losses / valid, valid };
}

export const pct = (x: number) => `${Math.round(x * 100)}%`;

/** Per model, its tags with their counts, most frequent first (ties by name); models with no tags are left out. */
export function tagChips(tagCounts: Record<string, Record<string, number>> | null | undefined, models: string[]): { model: string; tags: { tag: string; count: number }[] }[] {
  if (!tagCounts) return [];
  return models
    .map((model) => ({
      model,
      tags: Object.entries(tagCounts[model] ?? {})
        .filter(([, count]) => count > 0)
        .map(([tag, count]) => ({ tag, count }))
        .sort((a, b) => b.count - a.count || a.tag.localeCompare(b.tag)),
    }))
    .filter((m) => m.tags.length > 0);
}

/** Every tag any model has, sorted, for the tag filter. */
export function allTags(tagCounts: Record<string, Record<string, number>> | null | undefined): string[] {
  return Array.from(new Set(Object.values(tagCounts ?? {}).flatMap((t) => Object.keys(t)))).sort();
}

export type ItemFilter = "" | "disagree" | "worse_than_base";

export interface ItemFilters {
  tag: string;
  model: string;
  filter: ItemFilter;
}

export const NO_FILTERS: ItemFilters = { tag: "", model: "", filter: "" };

export const isFiltered = (f: ItemFilters) => Object.keys(filterParams(f)).length > 0;

/** The filters as query parameters (empty ones left out): the same for the list and for the download. */
export function filterParams(f: ItemFilters): { tag?: string; model?: string; filter?: Exclude<ItemFilter, ""> } {
  const params: { tag?: string; model?: string; filter?: Exclude<ItemFilter, ""> } = {};
  if (f.tag) params.tag = f.tag;
  if (f.model) params.model = f.model;
  if (f.filter) params.filter = f.filter;
  return params;
}

/** The filtered items' download path. */
export function itemsDownloadPath(evaluationId: string, f: ItemFilters, format: "jsonl" | "csv"): string {
  return `/v1/evaluations/${encodeURIComponent(evaluationId)}/items/download${pageQuery({ format, ...filterParams(f) })}`;
}

/** The user's tags as typed ("hallucination, Wrong unit"): trimmed, lower-cased, spaces as "-" (a tag is one word), no repeats, no blanks. */
export function parseTags(text: string): string[] {
  return Array.from(new Set(text.split(",").map((t) => t.trim().toLowerCase().replace(/\s+/g, "-")).filter(Boolean)));
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

/** The estimate in one line: what the run will call, before it runs. */
export function describeEstimate(e: Estimate): string {
  const parts = [plural(e.items, "item"), plural(e.generation_calls, "generation call")];
  if (e.judge_calls) parts.push(`${plural(e.judge_calls, "judge call")} (~${e.judge_prompt_tokens.toLocaleString("en-US")} judge prompt tokens)`);
  if (e.external_calls) parts.push(`${plural(e.external_calls, "call")} to external endpoints`);
  return parts.join(" · ");
}
