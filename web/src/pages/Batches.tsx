import { useEffect, useState, type FormEvent } from "react";
import { Link } from "react-router-dom";
import { api, download } from "../api";
import { ErrorBox, fmtTime, LoadMore, ProgressBar, StatusChip, usePaged, usePoll } from "../common";
import { FINAL_BATCH_STATUSES } from "../lib";
import type { FileObj } from "./Datasets";

interface Batch {
  id: string;
  status: string;
  input_file_id: string;
  output_file_id: string | null;
  error_file_id: string | null;
  created_at: number;
  request_counts: { total: number; completed: number; failed: number } | null;
  errors?: { data?: { message: string; line?: number | null }[] } | null;
}

export default function BatchesPage() {
  const list = usePaged<Batch>("/v1/batches");
  const [files, setFiles] = useState<FileObj[] | null>(null);
  const [fileId, setFileId] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api<{ data: FileObj[] }>("/v1/files?purpose=batch&limit=1000").then((r) => {
      setFiles(r.data);
      if (r.data[0]) setFileId(r.data[0].id);
    }, setError);
  }, []);

  const anyActive = list.items.some((b) => !FINAL_BATCH_STATUSES.has(b.status));
  usePoll(
    async () => {
      const active = list.items.filter((b) => !FINAL_BATCH_STATUSES.has(b.status));
      const fresh = await Promise.all(active.map((b) => api<Batch>(`/v1/batches/${b.id}`).catch(() => b)));
      const byId = new Map(fresh.map((b) => [b.id, b]));
      list.setItems((items) => items.map((b) => byId.get(b.id) ?? b));
    },
    2000,
    anyActive,
  );

  async function create(e: FormEvent) {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      const b = await api<Batch>("/v1/batches", {
        json: { input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h" },
      });
      list.setItems((items) => [b, ...items]);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  async function act(fn: () => Promise<unknown>) {
    setActionError(null);
    try {
      await fn();
    } catch (e) {
      setActionError(e);
    }
  }

  return (
    <>
      <h1>Batches</h1>
      <form className="card form" onSubmit={create} aria-label="New batch" data-testid="new-batch-form">
        <h2>New batch</h2>
        {files && files.length === 0 ? (
          <p className="empty">
            No batch files yet. <Link to="/datasets">Upload a JSONL file with purpose “batch”</Link> (OpenAI Batch API lines).
          </p>
        ) : (
          <>
            <label htmlFor="batch-file">Input file</label>
            <select id="batch-file" data-testid="batch-file" value={fileId} onChange={(e) => setFileId(e.target.value)}>
              {(files ?? []).map((f) => (
                <option key={f.id} value={f.id}>
                  {f.filename} ({f.id})
                </option>
              ))}
            </select>
            <button type="submit" data-testid="create-batch" disabled={busy || !fileId}>
              {busy ? "Creating…" : "Create batch"}
            </button>
          </>
        )}
        <ErrorBox error={error} />
      </form>
      <div className="card">
        <h2>Your batches</h2>
        <ErrorBox error={list.error} />
        <ErrorBox error={actionError} />
        {!list.loading && !list.error && list.items.length === 0 && <p className="empty">No batches yet. Create one above.</p>}
        {list.items.length > 0 && (
          <div className="table-wrap">
            <table data-testid="batches-table">
              <thead>
                <tr>
                  <th>Batch</th>
                  <th>Status</th>
                  <th>Requests</th>
                  <th>Created</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {list.items.map((b) => {
                  const rc = b.request_counts;
                  const done = rc ? rc.completed + rc.failed : 0;
                  return (
                    <tr key={b.id} data-testid="batch-row">
                      <td className="mono small">
                        {b.id}
                        <div className="muted">{b.input_file_id}</div>
                      </td>
                      <td>
                        <StatusChip status={b.status} />
                        {b.errors?.data?.map((er, i) => (
                          <div key={i} className="error small">
                            {er.line ? `line ${er.line}: ` : ""}
                            {er.message}
                          </div>
                        ))}
                      </td>
                      <td>
                        {rc && rc.total ? (
                          <>
                            <ProgressBar value={done / rc.total} label={`Progress of ${b.id}`} testId="batch-progress" />
                            <span className="muted small">
                              {rc.completed} ok, {rc.failed} failed of {rc.total}
                            </span>
                          </>
                        ) : (
                          "—"
                        )}
                      </td>
                      <td>{fmtTime(b.created_at)}</td>
                      <td className="actions">
                        {b.output_file_id && (
                          <button type="button" className="small" onClick={() => act(() => download(`/v1/files/${b.output_file_id}/content`, `${b.id}-output.jsonl`))}>
                            Output
                          </button>
                        )}
                        {b.error_file_id && (
                          <button type="button" className="secondary small" onClick={() => act(() => download(`/v1/files/${b.error_file_id}/content`, `${b.id}-errors.jsonl`))}>
                            Errors
                          </button>
                        )}
                        {!FINAL_BATCH_STATUSES.has(b.status) && b.status !== "cancelling" && (
                          <button
                            type="button"
                            className="danger small"
                            onClick={() =>
                              act(async () => {
                                const nb = await api<Batch>(`/v1/batches/${b.id}/cancel`, { method: "POST" });
                                list.setItems((items) => items.map((x) => (x.id === nb.id ? nb : x)));
                              })
                            }
                          >
                            Cancel
                          </button>
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
        <LoadMore hasMore={list.hasMore} loading={list.loading} onClick={list.loadMore} />
      </div>
    </>
  );
}
