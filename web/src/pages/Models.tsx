import { useEffect, useState } from "react";
import { Link } from "react-router-dom";
import { api } from "../api";
import { ErrorBox } from "../common";

export interface ModelObj {
  id: string;
  kind: string;
  base_model: string | null;
  fine_tuning_job: string | null;
  created: number;
}

export default function ModelsPage() {
  const [models, setModels] = useState<ModelObj[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [delError, setDelError] = useState<unknown>(null);
  useEffect(() => {
    api<{ data: ModelObj[] }>("/v1/models").then((r) => setModels(r.data), setError);
  }, []);
  async function remove(m: ModelObj) {
    if (!confirm(`Delete the fine-tune ${m.id}?`)) return;
    setDelError(null);
    try {
      await api(`/v1/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
      setModels((ms) => (ms ?? []).filter((x) => x.id !== m.id));
    } catch (e) {
      setDelError(e);
    }
  }
  if (error) return <ErrorBox error={error} />;
  if (!models) return <p className="muted">Loading…</p>;
  const bases = models.filter((m) => m.kind === "base");
  const tunes = models.filter((m) => m.kind !== "base");
  return (
    <>
      <h1>Models</h1>
      <div className="card">
        <h2>Base models</h2>
        <ul data-testid="base-models">
          {bases.map((m) => (
            <li key={m.id} className="mono">
              {m.id}
            </li>
          ))}
        </ul>
      </div>
      <div className="card">
        <h2>Your fine-tunes</h2>
        <ErrorBox error={delError} />
        {tunes.length === 0 ? (
          <p className="empty">
            No fine-tuned models yet. <Link to="/jobs/new">Start a fine-tuning job</Link>; its model appears here when it succeeds.
          </p>
        ) : (
          <div className="table-wrap">
            <table data-testid="fine-tunes-table">
              <thead>
                <tr>
                  <th>Model</th>
                  <th>Base</th>
                  <th>Job</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {tunes.map((m) => (
                  <tr key={m.id} data-testid="fine-tune-row">
                    <td className="mono small">{m.id}</td>
                    <td className="small">{m.base_model}</td>
                    <td>{m.fine_tuning_job && <Link to={`/jobs/${m.fine_tuning_job}`} className="mono small">{m.fine_tuning_job}</Link>}</td>
                    <td>
                      <button type="button" className="danger small" onClick={() => remove(m)} aria-label={`Delete ${m.id}`}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
    </>
  );
}
