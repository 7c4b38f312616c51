// Connections to OpenAI-compatible endpoints (POST/GET/DELETE /v1/connections)
// and the model choices they add: `conn:{name}/{model}` beside the local
// models. Pure helpers, unit-tested in connections.test.ts.
import type { ModelObject, Schemas } from "./types";

export type ConnectionObject = Schemas["ConnectionObject"];
export type ConnectionTest = Schemas["ConnectionTest"];

/** The prefix of an external model's id. */
export const CONNECTION_PREFIX = "conn:";

/** "conn:openai/gpt-4o-mini" → { connection: "openai", model: "gpt-4o-mini" }; null for a local model. */
export function parseConnectionModel(id: string): { connection: string; model: string } | null {
  if (!id.startsWith(CONNECTION_PREFIX)) return null;
  const rest = id.slice(CONNECTION_PREFIX.length);
  const slash = rest.indexOf("/");
  if (slash <= 0 || slash === rest.length - 1) return null;
  return { connection: rest.slice(0, slash), model: rest.slice(slash + 1) };
}

export const isExternalModel = (id: string) => parseConnectionModel(id) !== null;

/** The allow-list typed in the form (one per line or comma-separated); null when empty: every model of the endpoint. */
export function parseAllowList(text: string): string[] | null {
  const models = Array.from(new Set(text.split(/[\n,]/).map((m) => m.trim()).filter(Boolean)));
  return models.length ? models : null;
}

/** A model a picker offers: a local one (base, fine-tune, checkpoint) or one reached through a connection. */
export interface ModelChoice {
  id: string;
  /** "base", "fine-tune", "checkpoint" or "external". */
  kind: string;
  /** The connection's name, for an external model. */
  connection?: string;
  /** The checkbox's text. */
  label: string;
}

/** What listing one connection's models gave: its models, or why not. */
export interface ConnectionModels {
  connection: string;
  models?: { id: string }[];
  error?: unknown;
}

/** Local models first (as /v1/models lists them), then each connection's models, labelled as external. */
export function modelChoices(local: Pick<ModelObject, "id" | "kind">[], external: ConnectionModels[]): ModelChoice[] {
  const choices: ModelChoice[] = local.map((m) => ({ id: m.id, kind: m.kind, label: m.id }));
  const seen = new Set(choices.map((c) => c.id));
  for (const { connection, models } of external)
    for (const m of models ?? []) {
      if (seen.has(m.id)) continue;
      seen.add(m.id);
      const parsed = parseConnectionModel(m.id);
      choices.push({ id: m.id, kind: "external", connection, label: parsed ? `${parsed.model} via ${connection}` : m.id });
    }
  return choices;
}

/** The result of POST /v1/connections/{name}/test, in one line. */
export function describeTest(result: Pick<ConnectionTest, "ok" | "models" | "latency_ms"> & { error?: ConnectionTest["error"] }): string {
  if (!result.ok) return `Failed${result.error ? ` (${result.error.code}): ${result.error.message}` : ""}`;
  const n = result.models.length;
  return `OK in ${result.latency_ms} ms: ${n} model${n === 1 ? "" : "s"}`;
}
