// The models a form offers: the local ones (/v1/models) and each connection's
// (/v1/connections/{name}/models), external ones labelled as such. A
// connection whose endpoint cannot list its models says so beside the others.
import { useQueries, useQuery } from "@tanstack/react-query";
import { Link } from "react-router-dom";
import { formatError } from "./lib";
import { modelChoices, type ConnectionModels, type ModelChoice } from "./connections";
import { connectionModelsQuery, connectionsQuery, modelsQuery } from "./queries";

export function useModelChoices(): { choices: ModelChoice[] | undefined; error: unknown; unreachable: ConnectionModels[] } {
  const local = useQuery(modelsQuery());
  const connections = useQuery(connectionsQuery());
  const external = useQueries({
    queries: (connections.data ?? []).map((c) => connectionModelsQuery(c.name)),
    combine: (results) =>
      results.map((r, i): ConnectionModels => ({ connection: connections.data![i].name, models: r.data, error: r.error ?? undefined })),
  });
  return {
    // Local models do not wait for the endpoints: those join as they answer.
    choices: local.data && modelChoices(local.data, external),
    // Without connections (an older server, or none yet) the local models are still offered.
    error: local.error,
    unreachable: external.filter((e) => e.error),
  };
}

function ExternalBadge({ choice }: { choice: ModelChoice }) {
  if (choice.kind !== "external") return <span className="muted small">({choice.kind})</span>;
  return (
    <span className="chip chip-external" data-testid="external-badge" title={`Reached through the connection ${choice.connection}`}>
      external
    </span>
  );
}

export function ModelPicker({
  choices,
  unreachable = [],
  selected,
  onChange,
  testId,
  legend,
}: {
  choices: ModelChoice[];
  unreachable?: ConnectionModels[];
  selected: string[];
  onChange: (s: string[]) => void;
  testId: string;
  legend: string;
}) {
  return (
    <fieldset data-testid={testId} className="model-picker">
      <legend>{legend}</legend>
      {/* Checkpoint models only when chosen (a job page's "Open in playground"): a job may have many. */}
      {choices
        .filter((m) => m.kind !== "checkpoint" || selected.includes(m.id))
        .map((m) => (
          <label key={m.id} className="check" data-kind={m.kind}>
            <input
              type="checkbox"
              aria-label={m.id}
              checked={selected.includes(m.id)}
              onChange={(e) => onChange(e.target.checked ? [...selected, m.id] : selected.filter((x) => x !== m.id))}
            />
            <span className="mono small" title={m.id}>
              {m.label}
            </span>{" "}
            <ExternalBadge choice={m} />
          </label>
        ))}
      {unreachable.map((u) => (
        <p key={u.connection} className="warn small" data-testid="unreachable-connection">
          Models of <Link to="/connections">{u.connection}</Link> could not be listed: {formatError(u.error)}
        </p>
      ))}
    </fieldset>
  );
}

/** One model, e.g. a judge: local models, then external ones in their own group. */
export function ModelSelect({ choices, value, onChange, id, testId }: { choices: ModelChoice[]; value: string; onChange: (v: string) => void; id: string; testId: string }) {
  const local = choices.filter((c) => c.kind !== "external" && c.kind !== "checkpoint");
  const external = choices.filter((c) => c.kind === "external");
  return (
    <select id={id} data-testid={testId} value={value} onChange={(e) => onChange(e.target.value)}>
      <option value="">— pick a model —</option>
      <optgroup label="Local models">
        {local.map((c) => (
          <option key={c.id} value={c.id}>
            {c.label}
          </option>
        ))}
      </optgroup>
      {external.length > 0 && (
        <optgroup label="External models (through connections)">
          {external.map((c) => (
            <option key={c.id} value={c.id}>
              {c.label} (external)
            </option>
          ))}
        </optgroup>
      )}
    </select>
  );
}
