import { useState, type DragEvent, type FormEvent } from "react";
import { useQuery } from "@tanstack/react-query";
import { Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { ErrorBox, fmtBytes, fmtTime, ProgressBar } from "../common";
import { lineErrors } from "../lib";
import { useDeleteFile, useUploadFile } from "../mutations";
import { PagedTable, usePagedList } from "../PagedTable";
import { filePagesQuery, filePreviewQuery, fileReportQuery } from "../queries";
import { datasetReport, type FileObject } from "../types";

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
  const { data: rows, error } = useQuery(filePreviewQuery(fileId));
  return (
    <section data-testid="report-preview" aria-label="Preview">
      <h4>First examples</h4>
      <ErrorBox error={error} />
      {rows === undefined && !error && <p className="muted">Loading…</p>}
      {(rows as any[] | undefined)?.map((r, i) => (
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

export function ReportView({ file }: { file: FileObject }) {
  // The upload's answer and the list carry the report; fetch it only when they do not.
  const fetched = useQuery({ ...fileReportQuery(file.id), enabled: !file.report });
  const report = datasetReport(file.report ?? fetched.data);
  if (fetched.error) return <ErrorBox error={fetched.error} />;
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

function Uploader({ onUploaded }: { onUploaded: (f: FileObject) => void }) {
  const [file, setFile] = useState<File | null>(null);
  const [purpose, setPurpose] = useState("fine-tune");
  const [progress, setProgress] = useState<number | null>(null);
  const [drag, setDrag] = useState(false);
  const [inputKey, setInputKey] = useState(0);
  const upload = useUploadFile();
  const busy = upload.isPending;
  const done = upload.data ? `Uploaded ${upload.data.filename} as ${upload.data.id}.` : null;

  function submit(e: FormEvent) {
    e.preventDefault();
    if (!file) return;
    setProgress(0);
    upload.mutate(
      { file, purpose, onProgress: setProgress },
      {
        onSuccess: (obj) => {
          onUploaded(obj);
          setFile(null);
          setInputKey((k) => k + 1);
        },
        onSettled: () => setProgress(null),
      },
    );
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
        <ErrorBox error={upload.error} testId="upload-error" />
        <LineErrorList error={upload.error} />
      </div>
    </form>
  );
}

export default function DatasetsPage() {
  const list = usePagedList(filePagesQuery());
  const [selected, setSelected] = useState<FileObject | null>(null);
  const remove = useDeleteFile();

  function confirmRemove(f: FileObject) {
    if (!confirm(`Delete ${f.filename} (${f.id})?`)) return;
    remove.mutate(f.id, { onSuccess: () => setSelected((s) => (s?.id === f.id ? null : s)) });
  }

  return (
    <>
      <h1>Datasets</h1>
      <Uploader onUploaded={setSelected} />
      {selected && (
        <div className="card">
          <ReportView key={selected.id} file={selected} />
        </div>
      )}
      <div className="card">
        <h2>Your files</h2>
        <ErrorBox error={remove.error} />
        <PagedTable
          list={list}
          testId="files-table"
          rowTestId="file-row"
          empty={
            <p className="empty">No files yet. Upload a JSONL file above: fine-tune data to train a model, or a batch file for batch inference.</p>
          }
          columns={[
            {
              header: "File",
              cell: (f) => (
                <>
                  {f.filename}
                  <div className="muted small mono">{f.id}</div>
                </>
              ),
            },
            { header: "Purpose", cell: (f) => f.purpose },
            { header: "Size", cell: (f) => fmtBytes(f.bytes), className: "num" },
            { header: "Created", cell: (f) => fmtTime(f.created_at) },
            {
              header: "",
              className: "actions",
              cell: (f) => (
                <>
                  <button type="button" className="secondary small" onClick={() => setSelected(f)}>
                    Report
                  </button>
                  <button type="button" className="danger small" onClick={() => confirmRemove(f)} aria-label={`Delete ${f.filename}`}>
                    Delete
                  </button>
                </>
              ),
            },
          ]}
        />
      </div>
    </>
  );
}
