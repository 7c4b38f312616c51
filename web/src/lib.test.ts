import { describe, expect, it } from "vitest";
import {
  ApiError,
  bestPerColumn,
  formatDuration,
  formatError,
  lineErrors,
  mergePages,
  sameAnswer,
  nextCursor,
  pageQuery,
  parseApiError,
  parseJsonl,
} from "./lib";

describe("API errors", () => {
  it("parses the OpenAI error shape", () => {
    const e = parseApiError(400, JSON.stringify({ error: { message: "lora_r must be…", type: "invalid_request_error", param: "hyperparameters.extra.lora_r", code: "invalid_hyperparameters" } }));
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(400);
    expect(formatError(e)).toBe("lora_r must be… (param: hyperparameters.extra.lora_r, code: invalid_hyperparameters)");
  });
  it("keeps non-JSON bodies readable", () => {
    expect(formatError(parseApiError(502, "Bad Gateway"))).toBe("Bad Gateway (HTTP 502)");
    expect(formatError(parseApiError(500, ""))).toBe("HTTP 500");
  });
  it("extracts line errors from details or from the message", () => {
    const body = {
      error: {
        message: "The file is not a valid fine-tune file: 2 invalid lines.\nline 1: bad\nline 2: worse",
        param: "file",
        code: "invalid_file",
        details: { error_count: 2, errors: [{ line: 1, reason: "bad" }, { line: 2, reason: "worse" }] },
      },
    };
    expect(lineErrors(parseApiError(400, JSON.stringify(body)))).toEqual(["line 1: bad", "line 2: worse"]);
    const noDetails = { error: { ...body.error, details: undefined } };
    expect(lineErrors(parseApiError(400, JSON.stringify(noDetails)))).toEqual(["line 1: bad", "line 2: worse"]);
    expect(lineErrors(new Error("x"))).toEqual([]);
  });
});

describe("pagination", () => {
  it("builds query strings without empty values", () => {
    expect(pageQuery({ limit: 20, after: undefined, purpose: "" })).toBe("?limit=20");
    expect(pageQuery({})).toBe("");
  });
  it("finds the next cursor", () => {
    expect(nextCursor({ data: [{ id: "a" }, { id: "b" }], has_more: true, last_id: "b" })).toBe("b");
    expect(nextCursor({ data: [{ id: "a" }], has_more: true })).toBe("a");
    expect(nextCursor({ data: [{ id: "a" }], has_more: false, last_id: "a" })).toBeNull();
  });
  it("merges pages without duplicates", () => {
    expect(mergePages([{ id: "a" }], [{ id: "a" }, { id: "b" }]).map((x) => x.id)).toEqual(["a", "b"]);
  });
});

describe("JSONL", () => {
  it("parses lines, skips blanks and BOM, reports bad lines", () => {
    const r = parseJsonl('\uFEFF{"a":1}\r\n\n{bad}\n{"b":2}\n');
    expect(r.rows).toEqual([{ a: 1 }, { b: 2 }]);
    expect(r.errors.map((e) => e.line)).toEqual([3]);
  });
  it("stops at max rows", () => {
    expect(parseJsonl('{"a":1}\n{"a":2}\n{"a":3}', 2).rows).toHaveLength(2);
  });
});

describe("metrics table", () => {
  it("highlights the best per column, lower is better for perplexity/loss", () => {
    const best = bestPerColumn({
      base: { exact_match: 0.1, perplexity: 12, loss: 2.5, output_length: 10 },
      ft: { exact_match: 0.6, perplexity: 3, loss: 1.1, output_length: 5 },
      ft2: { exact_match: 0.6, perplexity: null, loss: 1.3, output_length: 8 },
    });
    expect(best.exact_match).toEqual(["ft", "ft2"]);
    expect(best.perplexity).toEqual(["ft"]);
    expect(best.loss).toEqual(["ft"]);
    expect(best.output_length).toBeUndefined();
  });
  it("counts an external model's failed items as worse", () => {
    expect(bestPerColumn({ "conn:a/m": { errors: 5 }, "conn:b/m": { errors: 2 } }).errors).toEqual(["conn:b/m"]);
  });
  it("highlights nothing when every model ties", () => {
    expect(bestPerColumn({ a: { exact_match: 0, bleu: 1 }, b: { exact_match: 0, bleu: 2 } })).toEqual({ bleu: ["b"] });
  });
  it("highlights nothing with one model", () => {
    expect(bestPerColumn({ base: { exact_match: 1 } })).toEqual({});
  });
});

describe("formatting", () => {
  it("formats durations", () => {
    expect(formatDuration(5)).toBe("5s");
    expect(formatDuration(125)).toBe("2m 05s");
    expect(formatDuration(3720)).toBe("1h 02m");
  });
});

describe("sameAnswer", () => {
  it("ignores case and runs of whitespace, nothing else", () => {
    expect(sameAnswer(" Meow.\n", "meow.")).toBe(true);
    expect(sameAnswer("Meow", "Meow.")).toBe(false);
    expect(sameAnswer(undefined, "")).toBe(true);
  });
});
