import { describe, expect, it } from "vitest";
import {
  allTags,
  describeEstimate,
  filterParams,
  isFiltered,
  itemsDownloadPath,
  leaderboard,
  NO_FILTERS,
  pairwiseRates,
  parseTags,
  tagChips,
  toRequest,
  type EvaluationForm,
} from "./evaluationAnalysis";

const form: EvaluationForm = {
  fileId: "file-1",
  split: "test",
  limit: "",
  models: ["base", "conn:peer/m"],
  referenceJudge: false,
  pairwiseJudge: false,
  judgeModel: "",
  rubric: "",
};

describe("the evaluation request", () => {
  it("has no judges unless asked (supervised metrics stay the default)", () => {
    expect(toRequest(form)).toEqual({ file_id: "file-1", split: "test", models: ["base", "conn:peer/m"] });
  });
  it("carries the judges with their model, and the rubric only when edited", () => {
    const body = toRequest({ ...form, limit: "5", referenceJudge: true, pairwiseJudge: true, judgeModel: "conn:peer/m", rubric: " Be strict. " });
    expect(body).toEqual({
      file_id: "file-1",
      split: "test",
      models: ["base", "conn:peer/m"],
      limit: 5,
      judges: [
        { kind: "reference", model: "conn:peer/m", rubric: "Be strict." },
        { kind: "pairwise", model: "conn:peer/m" },
      ],
    });
    expect(toRequest({ ...form, referenceJudge: true, judgeModel: "base" }).judges).toEqual([{ kind: "reference", model: "base" }]);
  });
  it("refuses what the API would refuse, with a reason", () => {
    expect(() => toRequest({ ...form, pairwiseJudge: true })).toThrow("judge model");
    expect(() => toRequest({ ...form, models: ["base"], pairwiseJudge: true, judgeModel: "base" })).toThrow("two models");
    expect(() => toRequest({ ...form, limit: "2.5" })).toThrow("whole number");
  });
});

describe("the leaderboard", () => {
  it("ranks by rating and shows the interval", () => {
    const rows = leaderboard([
      { model: "a", rating: 980.2, ci_low: 940.1, ci_high: 1010.6, games: 8 },
      { model: "b", rating: 1019.8, ci_low: 990, ci_high: 1050, games: 8 },
    ]);
    expect(rows.map((r) => [r.rank, r.model, r.interval])).toEqual([
      [1, "b", "990–1050"],
      [2, "a", "940–1011"],
    ]);
    expect(leaderboard(null)).toEqual([]);
    const tied = leaderboard([
      { model: "b", rating: 1000, ci_low: 990, ci_high: 1010, games: 4 },
      { model: "a", rating: 1000, ci_low: 990, ci_high: 1010, games: 4 },
      { model: "c", rating: 900, ci_low: 850, ci_high: 950, games: 4 },
    ]);
    expect(tied.map((r) => [r.rank, r.model])).toEqual([
      [1, "a"],
      [1, "b"],
      [3, "c"],
    ]);
  });
  it("gives win, tie and loss rates over the valid judgments", () => {
    expect(pairwiseRates({ model_a: "a", model_b: "b", wins: 2, ties: 1, losses: 1, invalid: 3 })).toEqual({ win: 0.5, tie: 0.25, loss: 0.25, valid: 4 });
    expect(pairwiseRates({ model_a: "a", model_b: "b", wins: 0, ties: 0, losses: 0, invalid: 2 }).valid).toBe(0);
  });
});

describe("tags", () => {
  const counts = { base: { cut_off: 3, empty: 1, exact_match: 0 }, ft: { regressed: 2, cut_off: 2 }, other: {} };
  it("give chips per model, most frequent first, without zero counts or tagless models", () => {
    expect(tagChips(counts, ["base", "ft", "other"])).toEqual([
      { model: "base", tags: [{ tag: "cut_off", count: 3 }, { tag: "empty", count: 1 }] },
      { model: "ft", tags: [{ tag: "cut_off", count: 2 }, { tag: "regressed", count: 2 }] },
    ]);
    expect(tagChips(null, ["base"])).toEqual([]);
    expect(allTags(counts)).toEqual(["cut_off", "empty", "exact_match", "regressed"]);
  });
  it("typed by the user are trimmed, lower-cased and not repeated", () => {
    expect(parseTags(" Wrong unit, hallucination,, wrong  unit ")).toEqual(["wrong-unit", "hallucination"]);
    expect(parseTags("")).toEqual([]);
  });
});

describe("item filters", () => {
  it("leave out empty filters, and the download asks for the same items", () => {
    expect(filterParams(NO_FILTERS)).toEqual({});
    expect(isFiltered({ ...NO_FILTERS })).toBe(false);
    expect(isFiltered({ ...NO_FILTERS, filter: "disagree" })).toBe(true);
    const f = { tag: "cut_off", model: "conn:peer/m", filter: "worse_than_base" as const };
    expect(filterParams(f)).toEqual({ tag: "cut_off", model: "conn:peer/m", filter: "worse_than_base" });
    expect(itemsDownloadPath("eval-1", f, "csv")).toBe(
      "/v1/evaluations/eval-1/items/download?format=csv&tag=cut_off&model=conn%3Apeer%2Fm&filter=worse_than_base",
    );
  });
});

describe("the estimate", () => {
  it("names every kind of call before the run", () => {
    expect(describeEstimate({ items: 4, generation_calls: 12, judge_calls: 24, judge_prompt_tokens: 12345, external_calls: 4 })).toBe(
      "4 items · 12 generation calls · 24 judge calls (~12,345 judge prompt tokens) · 4 calls to external endpoints",
    );
    expect(describeEstimate({ items: 4, generation_calls: 8, judge_calls: 0, judge_prompt_tokens: 0, external_calls: 0 })).toBe("4 items · 8 generation calls");
    expect(describeEstimate({ items: 1, generation_calls: 1, judge_calls: 1, judge_prompt_tokens: 1, external_calls: 1 })).toBe(
      "1 item · 1 generation call · 1 judge call (~1 judge prompt tokens) · 1 call to external endpoints",
    );
  });
});
