// The New-job form's hyperparameters. Their kinds, "auto", choices and
// ranges are the API's: read from its OpenAPI schema (web/openapi.json) at
// build time (vite.config.ts → __API_HYPERPARAMETERS__), never restated here.
// This file only orders the fields and words their help.
import type { Limits, SchemaHp } from "./hyperparameterSchema";
import type { CreateJobRequest } from "./types";

export type { Limits, SchemaHp } from "./hyperparameterSchema";

/** A field of the form: the schema's facts plus the form's wording. */
export interface HpSpec extends SchemaHp {
  name: string;
  /** What it is, before the range: "LoRA rank". */
  about?: string;
  /** After the range: "Default 16." */
  note?: string;
}

/** The form's fields in display order, with their wording. */
export const FIELDS: { name: string; about?: string; note?: string }[] = [
  { name: "n_epochs", about: "Passes over the training data" },
  { name: "batch_size", about: "Examples per optimizer step" },
  { name: "learning_rate_multiplier", about: "Times the base learning rate 2e-4" },
  { name: "learning_rate", about: "Peak learning rate", note: "Default 2e-4 × multiplier; wins over the multiplier." },
  { name: "adapter", note: "qlora on CUDA, lora on CPU when auto." },
  { name: "lora_r", about: "LoRA rank", note: "Default 16." },
  { name: "lora_alpha", about: "LoRA scaling", note: "Default 2 × lora_r." },
  { name: "lora_dropout", about: "Dropout on LoRA layers", note: "Default 0." },
  { name: "target_modules", note: '"all-linear" (default) or a comma-separated list of module names, e.g. q_proj, v_proj.' },
  { name: "max_seq_length", about: "Tokens per sequence", note: "At most the model's maximum. Auto: from the examples' token lengths." },
  { name: "warmup_ratio", about: "Fraction of steps warming up", note: "Default 0.03." },
  { name: "lr_scheduler", about: "Learning-rate schedule", note: "Default linear." },
  { name: "weight_decay", about: "Weight decay", note: "Default 0." },
  { name: "gradient_accumulation_steps", about: "Micro-batches per optimizer step", note: "At most batch_size. Default 1." },
  { name: "packing", note: "Pack several short examples per sequence. Default true." },
  { name: "compute_dtype", about: "Dtype the worker computes in", note: "Auto: bfloat16 where the worker measures it faster, else float32." },
  { name: "checkpoint_interval", about: "Optimizer steps between checkpoints", note: "Auto: a tenth of the run." },
  { name: "eval_interval", about: "Optimizer steps between validation losses", note: "Auto: a tenth of the run." },
  { name: "seed", about: "Seed of the run", note: "Random when empty." },
];

/** The API schema's hyperparameters, as built into this bundle. */
export const API_HYPERPARAMETERS: Record<string, SchemaHp> = __API_HYPERPARAMETERS__;

/** The form's fields that the API's schema knows (hyperparameters.test.ts fails when one is missing). */
export const HYPERPARAMETERS: HpSpec[] = FIELDS.flatMap((f) => (API_HYPERPARAMETERS[f.name] ? [{ ...API_HYPERPARAMETERS[f.name], ...f }] : []));

export const HP = Object.fromEntries(HYPERPARAMETERS.map((s) => [s.name, s])) as Record<string, HpSpec>;
export const BASIC_HPS = HYPERPARAMETERS.filter((s) => s.group === "openai");
export const EXTRA_HPS = HYPERPARAMETERS.filter((s) => s.group === "extra");
export type BasicHpName = "n_epochs" | "batch_size" | "learning_rate_multiplier";
type Hyperparameters = NonNullable<CreateJobRequest["hyperparameters"]>;

// A bound this large is left out of the help ("integer ≥ 1"): the checkpoint
// and eval intervals go up to 1e9 steps, which only means "never".
const HUGE = 1_000_000_000;

/** "integer 1–512", "0 < x ≤ 1", "0–0.5", "integer ≥ 1" (or "" without limits). */
export function rangeText(spec: { type: SchemaHp["type"]; limits?: Limits }): string {
  const l = spec.limits;
  if (!l || !Object.keys(l).length) return "";
  const prefix = spec.type === "int" ? "integer " : "";
  const low = l.minimum ?? l.exclusiveMinimum;
  const high = l.maximum ?? l.exclusiveMaximum;
  const lowOpen = l.minimum === undefined && l.exclusiveMinimum !== undefined;
  const highOpen = l.maximum === undefined && l.exclusiveMaximum !== undefined;
  if (low !== undefined && (high === undefined || high >= HUGE)) return `${prefix}${lowOpen ? ">" : "≥"} ${low}`;
  if (low === undefined && high !== undefined) return `${prefix}${highOpen ? "<" : "≤"} ${high}`;
  if (low === undefined || high === undefined) return "";
  if (!lowOpen && !highOpen) return `${prefix}${low}–${high}`;
  return `${prefix}${low} ${lowOpen ? "<" : "≤"} x ${highOpen ? "<" : "≤"} ${high}`;
}

/** The help line under a field: "LoRA rank, integer 1–512. Default 16." */
export function helpText(spec: HpSpec): string {
  const range = rangeText(spec);
  const head = [spec.about, range].filter(Boolean).join(", ");
  const sentence = head ? `${head.charAt(0).toUpperCase()}${head.slice(1)}.` : "";
  return [sentence, spec.note].filter(Boolean).join(" ");
}

/** "auto"/"" → "auto" (or omitted), a number string → number. Throws on garbage. */
export function parseHpNumber(name: string, raw: string, integer: boolean, allowAuto: boolean): number | "auto" | undefined {
  const s = raw.trim();
  if (s === "") return undefined;
  if (s.toLowerCase() === "auto") {
    if (!allowAuto) throw new Error(`${name} does not accept "auto"; leave it empty to let the service choose`);
    return "auto";
  }
  const n = Number(s);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got "${s}"`);
  if (integer && !Number.isInteger(n)) throw new Error(`${name} must be an integer, got "${s}"`);
  return n;
}

function parseValue(spec: HpSpec, raw: string): unknown {
  if (spec.type === "int" || spec.type === "number") return parseHpNumber(spec.name, raw, spec.type === "int", !!spec.auto);
  if (spec.type === "bool") return raw === "true";
  // "all-linear" (the schema's one string for it) or a list of module names
  if (spec.type === "modules") return spec.options.includes(raw) ? raw : raw.split(",").map((s) => s.trim()).filter(Boolean);
  return raw;
}

/** The `hyperparameters` object of a job request from the form's strings. */
export function buildHyperparameters(basic: Record<BasicHpName, string>, extra: Record<string, string>): Hyperparameters {
  const hp: Record<string, unknown> = {};
  for (const spec of BASIC_HPS) {
    const v = parseValue(spec, basic[spec.name as BasicHpName] ?? "");
    if (v !== undefined) hp[spec.name] = v;
  }
  const ex: Record<string, unknown> = {};
  for (const spec of EXTRA_HPS) {
    const raw = (extra[spec.name] ?? "").trim();
    if (!raw) continue;
    const v = parseValue(spec, raw);
    if (v !== undefined) ex[spec.name] = v;
  }
  if (Object.keys(ex).length) hp.extra = ex;
  // Each value was parsed by the kind the schema gives its name.
  return hp as Hyperparameters;
}

/** The optional seed field → a number, or undefined when empty. */
export function parseSeed(raw: string): number | undefined {
  if (!raw.trim()) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new Error("seed must be an integer");
  return n;
}

