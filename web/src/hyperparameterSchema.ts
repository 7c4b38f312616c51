// What the API's OpenAPI schema says about each hyperparameter of a job
// request: its place in the request, kind, "auto", choices and range.
// vite.config.ts runs schemaHyperparameters on openapi.json at build time and
// hands the (small) result to the app as __API_HYPERPARAMETERS__, so the form
// never restates a range. No imports here: the Vite config loads this file.

/** Bounds with JSON Schema's meaning (exclusive bounds are numbers, as in OpenAPI 3.1). */
export interface Limits {
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
}

export interface SchemaHp {
  /** "openai": top level of `hyperparameters`; "extra": under `hyperparameters.extra`; "request": a field of the job request itself. */
  group: "openai" | "extra" | "request";
  /** The form field it takes: a number, a choice, true/false, or a list of module names. */
  type: "int" | "number" | "enum" | "bool" | "modules";
  /** Accepts the string "auto". */
  auto: boolean;
  /** The strings it accepts besides "auto" (a choice's options; "all-linear" for the modules). */
  options: string[];
  limits: Limits;
}

type Node = Record<string, unknown>;

function resolve(doc: Node, node: unknown): Node {
  let n = (node ?? {}) as Node;
  for (let i = 0; i < 32 && typeof n.$ref === "string"; i++) {
    const path = (n.$ref as string).replace(/^#\//, "").split("/");
    n = path.reduce<Node>((at, key) => ((at?.[key] ?? {}) as Node), doc);
  }
  return n;
}

/** A schema's alternatives: the members of anyOf/oneOf/allOf, resolved and flattened. */
function alternatives(doc: Node, node: unknown): Node[] {
  const n = resolve(doc, node);
  const list = (n.anyOf ?? n.oneOf ?? n.allOf) as unknown[] | undefined;
  if (Array.isArray(list)) return list.flatMap((m) => alternatives(doc, m));
  return [n];
}

function properties(doc: Node, node: unknown): Record<string, Node> {
  for (const alt of alternatives(doc, node)) if (alt.properties && typeof alt.properties === "object") return alt.properties as Record<string, Node>;
  return {};
}

const LIMIT_KEYS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const;

function describe(doc: Node, node: unknown, group: SchemaHp["group"]): SchemaHp {
  const out: SchemaHp = { group, type: "enum", auto: false, options: [], limits: {} };
  const types = new Set<string>();
  for (const alt of alternatives(doc, node)) {
    if (typeof alt.type === "string") types.add(alt.type);
    const strings = [...(Array.isArray(alt.enum) ? alt.enum : []), ...(alt.const !== undefined ? [alt.const] : [])].filter(
      (v): v is string => typeof v === "string",
    );
    for (const s of strings) {
      if (s === "auto") out.auto = true;
      else out.options.push(s);
    }
    if (alt.type === "integer" || alt.type === "number") for (const k of LIMIT_KEYS) if (typeof alt[k] === "number") out.limits[k] = alt[k] as number;
  }
  out.type = types.has("array") ? "modules" : types.has("integer") ? "int" : types.has("number") ? "number" : types.has("boolean") ? "bool" : "enum";
  return out;
}

/** Every hyperparameter (and the seed) that the job request's schema names, with what it says about it. */
export function schemaHyperparameters(doc: unknown): Record<string, SchemaHp> {
  const d = (doc ?? {}) as Node;
  const fields = properties(d, { $ref: "#/components/schemas/CreateJobRequest" });
  const out: Record<string, SchemaHp> = {};
  const hp = properties(d, fields.hyperparameters);
  for (const [name, node] of Object.entries(hp)) if (name !== "extra") out[name] = describe(d, node, "openai");
  for (const [name, node] of Object.entries(properties(d, hp.extra))) out[name] = describe(d, node, "extra");
  if (fields.seed) out.seed = describe(d, fields.seed, "request");
  return out;
}
