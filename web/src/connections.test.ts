import { describe, expect, it } from "vitest";
import { describeTest, isExternalModel, modelChoices, parseAllowList, parseConnectionModel } from "./connections";

describe("connection model ids", () => {
  it("split conn:name/model at the first slash (a model's own name may have more)", () => {
    expect(parseConnectionModel("conn:peer/tiny-llama")).toEqual({ connection: "peer", model: "tiny-llama" });
    expect(parseConnectionModel("conn:hf/org/model-7b")).toEqual({ connection: "hf", model: "org/model-7b" });
    expect(parseConnectionModel("HuggingFaceTB/SmolLM2-135M-Instruct")).toBeNull();
    expect(parseConnectionModel("conn:/m")).toBeNull();
    expect(parseConnectionModel("conn:peer/")).toBeNull();
    expect(isExternalModel("ft:tiny:alice:x:ftjob-1")).toBe(false);
    expect(isExternalModel("conn:peer/m")).toBe(true);
  });
});

describe("the allow-list field", () => {
  it("takes lines or commas, drops blanks and repeats, and is null when empty", () => {
    expect(parseAllowList("gpt-4o-mini, gpt-4o\n\n gpt-4o ")).toEqual(["gpt-4o-mini", "gpt-4o"]);
    expect(parseAllowList("  \n , ")).toBeNull();
  });
});

describe("model choices", () => {
  const local = [
    { id: "tiny", kind: "base" as const },
    { id: "ft:tiny:alice:x:ftjob-1", kind: "fine-tune" as const },
  ];
  it("put local models first, then each connection's models labelled as external", () => {
    const choices = modelChoices(local, [
      { connection: "peer", models: [{ id: "conn:peer/tiny" }, { id: "conn:peer/org/m" }] },
      { connection: "down", error: new Error("refused") },
    ]);
    expect(choices.map((c) => c.id)).toEqual(["tiny", "ft:tiny:alice:x:ftjob-1", "conn:peer/tiny", "conn:peer/org/m"]);
    expect(choices[2]).toEqual({ id: "conn:peer/tiny", kind: "external", connection: "peer", label: "tiny via peer" });
    expect(choices[3].label).toBe("org/m via peer");
    expect(choices.filter((c) => c.kind === "external")).toHaveLength(2);
  });
  it("list a model once even when two answers name it", () => {
    const choices = modelChoices(local, [{ connection: "peer", models: [{ id: "conn:peer/a" }, { id: "conn:peer/a" }] }]);
    expect(choices.filter((c) => c.id === "conn:peer/a")).toHaveLength(1);
  });
});

describe("a connection test", () => {
  it("reads as the models and latency, or the error", () => {
    expect(describeTest({ ok: true, models: ["a", "b"], latency_ms: 12, error: null })).toBe("OK in 12 ms: 2 models");
    expect(describeTest({ ok: true, models: ["a"], latency_ms: 3 })).toBe("OK in 3 ms: 1 model");
    expect(describeTest({ ok: false, models: [], latency_ms: 5, error: { code: "connection_error", message: "refused" } })).toBe(
      "Failed (connection_error): refused",
    );
  });
});
