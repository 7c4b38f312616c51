// Connections to OpenAI-compatible endpoints (OpenAI, another provider, a
// vLLM/Ollama/llama.cpp server, another tunehouse): list, add, test, remove.
// The API key is typed once and never shown again (the API never returns it).
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link } from "react-router-dom";
import { request } from "../api";
import { ErrorBox, fmtTime } from "../common";
import { describeTest, parseAllowList, type ConnectionObject, type ConnectionTest } from "../connections";
import type { Schemas } from "../types";
import { PagedTable, staticList } from "../PagedTable";
import { connectionsQuery, queryKeys } from "../queries";

export function TestResult({ result }: { result: ConnectionTest }) {
  return (
    <div data-testid="connection-test-result" data-ok={result.ok} className={result.ok ? "ok" : "error"} role={result.ok ? undefined : "alert"}>
      <strong>{describeTest(result)}</strong>
      {result.ok && result.models.length > 0 && (
        <ul className="plain mono small" data-testid="connection-test-models">
          {result.models.map((m) => (
            <li key={m}>{m}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

function AddConnection() {
  const qc = useQueryClient();
  const [name, setName] = useState("");
  const [baseUrl, setBaseUrl] = useState("");
  const [apiKey, setApiKey] = useState("");
  const [allowList, setAllowList] = useState("");
  const add = useMutation({
    mutationFn: (body: Schemas["CreateConnectionRequest"]) => request("post", "/v1/connections", { json: body }),
    onSuccess: () => {
      setName("");
      setBaseUrl("");
      setAllowList("");
      void qc.invalidateQueries({ queryKey: queryKeys.connections.all });
    },
    // The key leaves the form whatever the answer: it is typed again, never kept in the page.
    onSettled: () => setApiKey(""),
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    const models = parseAllowList(allowList);
    add.mutate({ name: name.trim(), base_url: baseUrl.trim(), api_key: apiKey, ...(models ? { models } : {}) });
  }
  return (
    <form className="card form" onSubmit={submit} aria-label="Add a connection" data-testid="add-connection-form">
      <h2>Add a connection</h2>
      <p className="muted small">
        Any OpenAI-compatible endpoint. Its models can then be compared, judged with and chatted with as <code>conn:NAME/MODEL</code>. The
        key is stored encrypted and never shown again.
      </p>
      <label htmlFor="conn-name">Name</label>
      <input id="conn-name" data-testid="connection-name" value={name} onChange={(e) => setName(e.target.value)} placeholder="openai" autoComplete="off" />
      <label htmlFor="conn-url">Base URL</label>
      <input
        id="conn-url"
        data-testid="connection-base-url"
        value={baseUrl}
        onChange={(e) => setBaseUrl(e.target.value)}
        placeholder="https://api.openai.com/v1"
        autoComplete="off"
      />
      <label htmlFor="conn-key">API key</label>
      <input
        id="conn-key"
        data-testid="connection-api-key"
        type="password"
        autoComplete="new-password"
        value={apiKey}
        onChange={(e) => setApiKey(e.target.value)}
      />
      <label htmlFor="conn-models">Models allowed (optional; one per line or comma-separated; empty: every model it lists)</label>
      <textarea id="conn-models" data-testid="connection-models" rows={2} value={allowList} onChange={(e) => setAllowList(e.target.value)} />
      <button type="submit" data-testid="add-connection-submit" disabled={add.isPending || !name.trim() || !baseUrl.trim() || !apiKey}>
        {add.isPending ? "Adding…" : "Add connection"}
      </button>
      <ErrorBox error={add.error} testId="add-connection-error" />
    </form>
  );
}

function ConnectionActions({ connection }: { connection: ConnectionObject }) {
  const qc = useQueryClient();
  const test = useMutation({
    mutationFn: () => request("post", "/v1/connections/{name}/test", { path: { name: connection.name } }),
    // A successful test lists the models: the pickers follow.
    onSuccess: (r) => r.ok && void qc.invalidateQueries({ queryKey: queryKeys.connections.models(connection.name) }),
  });
  const remove = useMutation({
    mutationFn: () => request("delete", "/v1/connections/{name}", { path: { name: connection.name } }),
    onSuccess: () => {
      qc.removeQueries({ queryKey: queryKeys.connections.models(connection.name) });
      void qc.invalidateQueries({ queryKey: queryKeys.connections.list() });
    },
  });
  return (
    <div>
      <div className="actions">
        <button type="button" className="secondary small" data-testid="test-connection" disabled={test.isPending} onClick={() => test.mutate()}>
          {test.isPending ? "Testing…" : "Test"}
        </button>
        <button
          type="button"
          className="danger small"
          aria-label={`Remove ${connection.name}`}
          data-testid="remove-connection"
          disabled={remove.isPending}
          onClick={() => confirm(`Remove the connection ${connection.name}? Evaluations that used it keep their results.`) && remove.mutate()}
        >
          Remove
        </button>
      </div>
      {test.data && <TestResult result={test.data} />}
      <ErrorBox error={test.error ?? remove.error} testId="connection-action-error" />
    </div>
  );
}

export default function ConnectionsPage() {
  const { data, error, isPending } = useQuery(connectionsQuery());
  return (
    <>
      <h1>Connections</h1>
      <div className="card">
        <h2>Your connections</h2>
        <PagedTable
          list={staticList(data ?? [], error, isPending)}
          testId="connections-table"
          rowTestId="connection-row"
          empty={<p className="empty">No connections yet. Add one below to compare external models with yours.</p>}
          columns={[
            { header: "Name", cell: (c) => <span className="mono" data-testid="connection-row-name">{c.name}</span> },
            { header: "Base URL", cell: (c) => <span className="mono small">{c.base_url}</span> },
            { header: "Models allowed", cell: (c) => (c.models ? c.models.join(", ") : <span className="muted">every model it lists</span>), className: "small" },
            { header: "Added", cell: (c) => fmtTime(c.created_at), className: "small muted" },
            { header: "", cell: (c) => <ConnectionActions connection={c} /> },
          ]}
        />
        <p className="muted small">
          Use them in <Link to="/compare">Compare</Link> (evaluations, judges and the playground) or to <Link to="/move">move your fine-tuning jobs from a provider</Link>.
        </p>
      </div>
      <AddConnection />
    </>
  );
}
