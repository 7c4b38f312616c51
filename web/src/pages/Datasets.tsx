import { useEffect, useState, type DragEvent, type FormEvent } from "react";
import { Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { api, text, uploadFile } from "../api";
import { ErrorBox, fmtBytes, fmtTime, LoadMore, ProgressBar, usePaged } from "../common";
import { lineErrors, parseJsonl } from "../lib";

export interface FileObj {
  id: string;
  filename: string;
  bytes: number;
  created_at: number;
  purpose: string;
  status: string;
  report?: any;
}

function LineErrorList({ error }: { error: unknown }) {
  const lines = lineErrors(error);
  const [copied, setCopied] = useState(false);
  if (!lines.length) return null;
  const all = lines.join("\n");
  return (
    <div className="line-errors">
      <div className="row">
        <strong>{lines.length} line error{lines.length === 1 ? "" : "s"}</strong>
        <button
          type="button"
          className="secondary small"
          data-testid="copy-line-errors"
          onClick={async () => {
            try {
              await navigator.clipboard.writeText(all);
              setCopied(true);
            } catch {
              setCopied(false);
            }
          }}
        >
          {copied ? "Copied" : "Copy"}
        </button>
      </div>
      <textarea readOnly aria-label="Line errors (copyable)" rows={Math.min(10, lines.length)} value={all} className="mono" />
      <ul data-testid="line-errors" aria-label="Line errors">
        {lines.map((l, i) => (
          <li key={i} className="mono">
            {l}
          </li>
        ))}
      </ul>
    </div>
  );
}

export function ChatBubbles({ messages }: { messages: { role: string; content?: string | null; tool_calls?: unknown }[] }) {
  return (
    <div className="chat">
      {messages.map((m, i) => (
        <div key={i} className={`bubble bubble-${m.role}`}>
          <div className="bubble-role">{m.role}</div>
          <div className="bubble-text">{m.content ?? (m.tool_calls ? JSON.stringify(m.tool_calls) : "")}</div>
        </div>
      ))}
    </div>
  );
}

function Preview({ fileId }: { fileId: string }) {
  const [rows, setRows] = useState<any[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let live = true;
    text(`/v1/files/${fileId}/content`)
      .then((t) => live && setRows(parseJsonl(t.slice(0, 200000), 3).rows))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [fileId]);
  return (
    <section data-testid="report-preview" aria-label="Preview">
      <h4>First examples</h4>
      <ErrorBox error={error} />
      {rows === null && !error && <p className="muted">Loading…</p>}
      {rows?.map((r, i) => (
        <div key={i} className="example">
          <div className="muted small">Example {i + 1}</div>
          {Array.isArray(r?.messages) ? (
            <ChatBubbles messages={r.messages} />
          ) : r?.body?.messages ? (
            <>
              <div className="muted small">
                {r.custom_id} → {r.body.model}
              </div>
              <ChatBubbles messages={r.body.messages} />
            </>
          ) : (
            <pre>{JSON.stringify(r, null, 2)}</pre>
          )}
        </div>
      ))}
    </section>
  );
}

export function ReportView({ file }: { file: FileObj }) {
  const [report, setReport] = useState<any>(file.report ?? null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    if (file.report) return;
    api(`/v1/files/${file.id}/report`).then(setReport, setError);
  }, [file.id, file.report]);
  if (error) return <ErrorBox error={error} />;
  if (!report) return <p className="muted">Loading report…</p>;
  const tok = report.estimated_tokens;
  // Examples per length bucket (doubling widths), from the report's histogram.
  const tokData: { name: string; examples: number }[] = (tok?.histogram ?? []).map(
    (b: { min: number; max: number; count: number }) => ({ name: `${b.min}–${b.max}`, examples: b.count }),
  );
  return (
    <div className="report" data-testid="file-report" aria-label={`Report for ${file.filename}`}>
      <h3>
        {file.filename} <span className="muted small mono">{file.id}</span>
      </h3>
      <div className="grid">
        <section data-testid="report-split" aria-label="Split">
          <h4>Examples and split</h4>
          <p>
            <b>{report.examples ?? report.requests ?? report.lines}</b> {report.examples !== undefined ? "examples" : "lines"}
            {report.split && (
              <>
                {" "}
                · <b data-testid="report-train-count">{report.split.train}</b> train · <b data-testid="report-test-count">{report.split.test}</b> test
              </>
            )}
          </p>
          {report.split?.description && <p data-testid="report-split-description">{report.split.description}</p>}
          {report.duplicates && <p>Duplicate lines: {report.duplicates.count}</p>}
          {report.distinct_system_prompts !== undefined && (
            <p>
              System prompts: {report.examples_with_system_prompt} examples, {report.distinct_system_prompts} distinct
            </p>
          )}
        </section>
        {tok && (
          <section data-testid="report-tokens" aria-label="Token lengths">
            <h4>Examples by estimated token length</h4>
            <div className="chart-sm">
              <ResponsiveContainer width="100%" height={180}>
                <BarChart data={tokData}>
                  <CartesianGrid strokeDasharray="3 3" />
                  <XAxis dataKey="name" />
                  <YAxis />
                  <Tooltip />
                  <Bar dataKey="examples" fill="#3b6ea5" isAnimationActive={false} />
                </BarChart>
              </ResponsiveContainer>
            </div>
            <p className="muted small">
              min {tok.min} · mean {tok.mean} · p95 {tok.p95} · max {tok.max} · total {tok.total} tokens ({tok.method})
            </p>
          </section>
        )}
        {report.roles && (
          <section data-testid="report-roles" aria-label="Role counts">
            <h4>Messages by role</h4>
            <table>
              <tbody>
                {Object.entries(report.roles).map(([role, n]) => (
                  <tr key={role}>
                    <td>{role}</td>
                    <td className="num">{String(n)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            {report.messages_per_example && (
              <p className="muted small">
                messages per example: min {report.messages_per_example.min}, mean {report.messages_per_example.mean}, max{" "}
                {report.messages_per_example.max}
              </p>
            )}
          </section>
        )}
      </div>
      <section data-testid="report-warnings" aria-label="Warnings">
        <h4>Warnings</h4>
        {report.warnings?.length ? (
          <ul>
            {report.warnings.map((w: string, i: number) => (
              <li key={i} className="warn">
                {w}
              </li>
            ))}
          </ul>
        ) : (
          <p className="muted">No warnings.</p>
        )}
      </section>
      <Preview fileId={file.id} />
    </div>
  );
}

function Uploader({ onUploaded }: { onUploaded: (f: FileObj) => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [purpose, setPurpose] = useState("fine-tune");
  const [progress, setProgress] = useState<number | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [drag, setDrag] = useState(false);
  const [inputKey, setInputKey] = useState(0);
  const [done, setDone] = useState<string | null>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (!file) return;
    setBusy(true);
    setError(null);
    setDone(null);
    setProgress(0);
    try {
      const obj = await uploadFile(file, purpose, setProgress);
      onUploaded(obj);
      setDone(`Uploaded ${obj.filename} as ${obj.id}.`);
      setFile(null);
      setInputKey((k) => k + 1);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
      setProgress(null);
    }
  }

  function onDrop(e: DragEvent) {
    e.preventDefault();
    setDrag(false);
    const f = e.dataTransfer.files?.[0];
    if (f) setFile(f);
  }

  return (
    <form className="card" onSubmit={submit} aria-label="Upload a dataset">
      <h2>Upload a JSONL file</h2>
      <div
        className={`dropzone${drag ? " drag" : ""}`}
        data-testid="dropzone"
        onDragOver={(e) => {
          e.preventDefault();
          setDrag(true);
        }}
        onDragLeave={() => setDrag(false)}
        onDrop={onDrop}
      >
        <p>{file ? `${file.name} (${fmtBytes(file.size)})` : "Drop a .jsonl file here, or choose one:"}</p>
        <label htmlFor="file-input" className="sr-only">
          JSONL file
        </label>
        <input
          key={inputKey}
          id="file-input"
          data-testid="file-input"
          type="file"
          accept=".jsonl,.json,.txt,application/jsonl"
          onChange={(e) => setFile(e.target.files?.[0] ?? null)}
        />
      </div>
      <div className="row">
        <label htmlFor="purpose">Purpose</label>
        <select id="purpose" data-testid="purpose-select" value={purpose} onChange={(e) => setPurpose(e.target.value)}>
          <option value="fine-tune">fine-tune</option>
          <option value="batch">batch</option>
        </select>
        <button type="submit" data-testid="upload-submit" disabled={!file || busy}>
          {busy ? "Uploading…" : "Upload"}
        </button>
      </div>
      {progress !== null && <ProgressBar value={progress} label="Upload progress" testId="upload-progress" />}
      {done && (
        <p className="ok" role="status" data-testid="upload-success">
          {done}
        </p>
      )}
      <div data-testid="upload-error-wrap">
        <ErrorBox error={error} testId="upload-error" />
        <LineErrorList error={error} />
      </div>
    </form>
  );
}

export default function DatasetsPage() {
  const list = usePaged<FileObj>("/v1/files");
  const [selected, setSelected] = useState<FileObj | null>(null);
  const [delError, setDelError] = useState<unknown>(null);

  async function remove(f: FileObj) {
    if (!confirm(`Delete ${f.filename} (${f.id})?`)) return;
    setDelError(null);
    try {
      await api(`/v1/files/${f.id}`, { method: "DELETE" });
      list.setItems((items) => items.filter((x) => x.id !== f.id));
      if (selected?.id === f.id) setSelected(null);
    } catch (e) {
      setDelError(e);
    }
  }

  return (
    <>
      <h1>Datasets</h1>
      <Uploader
        onUploaded={(f) => {
          list.setItems((items) => [f, ...items.filter((x) => x.id !== f.id)]);
          setSelected(f);
        }}
      />
      {selected && (
        <div className="card">
          <ReportView key={selected.id} file={selected} />
        </div>
      )}
      <div className="card">
        <h2>Your files</h2>
        <ErrorBox error={list.error} />
        <ErrorBox error={delError} />
        {!list.loading && !list.error && list.items.length === 0 && (
          <p className="empty">No files yet. Upload a JSONL file above: fine-tune data to train a model, or a batch file for batch inference.</p>
        )}
        {list.items.length > 0 && (
          <div className="table-wrap">
            <table data-testid="files-table">
              <thead>
                <tr>
                  <th>File</th>
                  <th>Purpose</th>
                  <th>Size</th>
                  <th>Created</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {list.items.map((f) => (
                  <tr key={f.id} data-testid="file-row">
                    <td>
                      {f.filename}
                      <div className="muted small mono">{f.id}</div>
                    </td>
                    <td>{f.purpose}</td>
                    <td className="num">{fmtBytes(f.bytes)}</td>
                    <td>{fmtTime(f.created_at)}</td>
                    <td className="actions">
                      <button type="button" className="secondary small" onClick={() => setSelected(f)}>
                        Report
                      </button>
                      <button type="button" className="danger small" onClick={() => remove(f)} aria-label={`Delete ${f.filename}`}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <LoadMore hasMore={list.hasMore} loading={list.loading} onClick={list.loadMore} />
      </div>
    </>
  );
}
