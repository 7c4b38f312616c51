import { describe, expect, it } from "vitest";
import { formatWords, methodForFormat, parseBeta } from "./JobPreference";

describe("the DPO parts of the New job form", () => {
  it("picks DPO for preference files and supervised for every other format", () => {
    expect(methodForFormat("preference")).toBe("dpo");
    expect(methodForFormat("chat")).toBe("supervised");
    expect(methodForFormat("text")).toBe("supervised");
    expect(methodForFormat(undefined)).toBe("supervised");
    expect(formatWords(undefined)).toBe("chat examples");
    expect(formatWords("prompt_completion")).toBe("prompt/completion pairs");
  });

  it("reads beta as auto, a number in (0, 2], or nothing", () => {
    expect(parseBeta("auto")).toBe("auto");
    expect(parseBeta(" 0.25 ")).toBe(0.25);
    expect(parseBeta("")).toBeUndefined();
    expect(() => parseBeta("0")).toThrow(/beta/);
    expect(() => parseBeta("3")).toThrow(/beta/);
    expect(() => parseBeta("high")).toThrow(/beta/);
  });
});
