import { describe, expect, it } from "vitest";
import openapi from "../openapi.json";
import { schemaHyperparameters, type SchemaHp } from "./hyperparameterSchema";
import { API_HYPERPARAMETERS, buildHyperparameters, EXTRA_HPS, FIELDS, helpText, HYPERPARAMETERS, parseSeed, rangeText, type HpSpec } from "./hyperparameters";

describe("hyperparameter form", () => {
  it("maps auto, numbers and extras", () => {
    expect(buildHyperparameters({ n_epochs: "auto", batch_size: "", learning_rate_multiplier: "2" }, {})).toEqual({
      n_epochs: "auto",
      learning_rate_multiplier: 2,
    });
    expect(
      buildHyperparameters(
        { n_epochs: "3", batch_size: "auto", learning_rate_multiplier: "auto" },
        { lora_r: "8", packing: "false", target_modules: "q_proj, v_proj", max_seq_length: "auto", lr_scheduler: "cosine", lora_alpha: "" },
      ),
    ).toEqual({
      n_epochs: 3,
      batch_size: "auto",
      learning_rate_multiplier: "auto",
      extra: { lora_r: 8, packing: false, target_modules: ["q_proj", "v_proj"], max_seq_length: "auto", lr_scheduler: "cosine" },
    });
    expect(buildHyperparameters({ n_epochs: "", batch_size: "", learning_rate_multiplier: "" }, { target_modules: "all-linear" })).toEqual({
      extra: { target_modules: "all-linear" },
    });
  });
  it("rejects bad values before sending", () => {
    expect(() => buildHyperparameters({ n_epochs: "2.5", batch_size: "", learning_rate_multiplier: "" }, {})).toThrow(/integer/);
    expect(() => buildHyperparameters({ n_epochs: "", batch_size: "x", learning_rate_multiplier: "" }, {})).toThrow(/number/);
    expect(() => buildHyperparameters({ n_epochs: "", batch_size: "", learning_rate_multiplier: "" }, { lora_r: "auto" })).toThrow(/auto/);
  });
  it("reads the seed", () => {
    expect(parseSeed(" ")).toBeUndefined();
    expect(parseSeed("42")).toBe(42);
    expect(() => parseSeed("4.2")).toThrow(/integer/);
  });
  it("has one field per extension, each named once", () => {
    const names = HYPERPARAMETERS.map((s) => s.name);
    expect(new Set(names).size).toBe(names.length);
    expect(EXTRA_HPS.map((s) => s.name)).toContain("lora_r");
    expect(EXTRA_HPS.every((s) => s.group === "extra")).toBe(true);
  });
});

describe("help text from the ranges", () => {
  it("writes closed, open and half-open ranges", () => {
    expect(rangeText({ type: "int", limits: { minimum: 1, maximum: 512 } })).toBe("integer 1–512");
    expect(rangeText({ type: "number", limits: { exclusiveMinimum: 0, maximum: 1 } })).toBe("0 < x ≤ 1");
    expect(rangeText({ type: "number", limits: { minimum: 0, exclusiveMaximum: 1 } })).toBe("0 ≤ x < 1");
    expect(rangeText({ type: "number", limits: { minimum: 0, maximum: 0.5 } })).toBe("0–0.5");
    expect(rangeText({ type: "int", limits: { minimum: 1, maximum: 1_000_000_000 } })).toBe("integer ≥ 1");
    expect(rangeText({ type: "number", limits: { exclusiveMinimum: 0 } })).toBe("> 0");
    expect(rangeText({ type: "bool" })).toBe("");
  });
  const spec = (over: Partial<HpSpec>): HpSpec => ({ name: "x", group: "extra", type: "number", auto: false, options: [], limits: {}, ...over });
  it("words the help line: what it is, its range, then the note", () => {
    expect(helpText(spec({ type: "int", limits: { minimum: 1, maximum: 512 }, about: "LoRA rank", note: "Default 16." }))).toBe("LoRA rank, integer 1–512. Default 16.");
    expect(helpText(spec({ limits: { exclusiveMinimum: 0, maximum: 1 }, about: "Peak learning rate", note: "Default 2e-4 × multiplier; wins over the multiplier." }))).toBe(
      "Peak learning rate, 0 < x ≤ 1. Default 2e-4 × multiplier; wins over the multiplier.",
    );
    expect(helpText(spec({ limits: { minimum: 0, exclusiveMaximum: 1 }, about: "Dropout on LoRA layers", note: "Default 0.05." }))).toBe("Dropout on LoRA layers, 0 ≤ x < 1. Default 0.05.");
    expect(helpText(spec({ type: "enum", options: ["qlora", "lora"], note: "qlora on CUDA, lora on CPU when auto." }))).toBe("qlora on CUDA, lora on CPU when auto.");
    expect(helpText(spec({ limits: { minimum: 0, maximum: 1 } }))).toBe("0–1.");
  });
});

// A job request schema as pydantic writes it once the hyperparameters are a typed model.
const typedSchema = {
  components: {
    schemas: {
      CreateJobRequest: {
        properties: {
          seed: { anyOf: [{ type: "integer", minimum: 0, maximum: 2147483647 }, { type: "null" }] },
          hyperparameters: { anyOf: [{ $ref: "#/components/schemas/Hyperparameters" }, { type: "null" }] },
        },
      },
      Hyperparameters: {
        properties: {
          n_epochs: { anyOf: [{ const: "auto", type: "string" }, { type: "integer", minimum: 1, maximum: 100 }, { type: "null" }], description: "Passes." },
          learning_rate_multiplier: { anyOf: [{ const: "auto" }, { type: "number", exclusiveMinimum: 0, maximum: 100 }] },
          extra: { anyOf: [{ $ref: "#/components/schemas/Extensions" }, { type: "null" }] },
        },
      },
      Extensions: {
        properties: {
          lora_dropout: { type: "number", minimum: 0, exclusiveMaximum: 1 },
          adapter: { anyOf: [{ enum: ["auto", "qlora", "lora"], type: "string" }, { type: "null" }] },
          packing: { anyOf: [{ type: "boolean" }, { type: "null" }] },
          target_modules: { anyOf: [{ const: "all-linear", type: "string" }, { type: "array", items: { type: "string" } }, { type: "null" }] },
        },
      },
    },
  },
};

describe("hyperparameters in the API's schema", () => {
  it("reads ranges, choices and auto through $ref and anyOf", () => {
    const hp = (over: Partial<SchemaHp>): SchemaHp => ({ group: "extra", type: "number", auto: false, options: [], limits: {}, ...over });
    expect(schemaHyperparameters(typedSchema)).toEqual({
      seed: hp({ group: "request", type: "int", limits: { minimum: 0, maximum: 2147483647 } }),
      n_epochs: hp({ group: "openai", type: "int", auto: true, limits: { minimum: 1, maximum: 100 } }),
      learning_rate_multiplier: hp({ group: "openai", auto: true, limits: { exclusiveMinimum: 0, maximum: 100 } }),
      lora_dropout: hp({ limits: { minimum: 0, exclusiveMaximum: 1 } }),
      adapter: hp({ type: "enum", auto: true, options: ["qlora", "lora"] }),
      packing: hp({ type: "bool" }),
      target_modules: hp({ type: "modules", options: ["all-linear"] }),
    });
  });
  it("finds nothing in a free-form hyperparameters object", () => {
    const free = { components: { schemas: { CreateJobRequest: { properties: { hyperparameters: { anyOf: [{ type: "object", additionalProperties: true }, { type: "null" }] } } } } } };
    expect(schemaHyperparameters(free)).toEqual({});
    expect(schemaHyperparameters(undefined)).toEqual({});
  });

});

// openapi.json is rewritten from the API by `make web`; the bundle reads the
// form's kinds and ranges from it (vite.config.ts).
describe("the form and the API's schema", () => {
  it("builds the bundle from the current openapi.json", () => {
    expect(API_HYPERPARAMETERS).toEqual(schemaHyperparameters(openapi));
  });
  it("has every field of the form in the API's schema", () => {
    for (const f of FIELDS) expect(API_HYPERPARAMETERS[f.name], `the form has "${f.name}", the API's job request does not`).toBeDefined();
    expect(HYPERPARAMETERS.map((s) => s.name)).toEqual(FIELDS.map((f) => f.name));
  });
  it("has a field for every hyperparameter of the API's schema", () => {
    for (const name of Object.keys(API_HYPERPARAMETERS)) expect(FIELDS.map((f) => f.name), `the API has "${name}"; add a field to FIELDS`).toContain(name);
  });
  it("states a range for every number", () => {
    for (const s of HYPERPARAMETERS.filter((s) => s.type === "int" || s.type === "number")) expect(rangeText(s), s.name).not.toBe("");
  });
});
