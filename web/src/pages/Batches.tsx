import { useState, type FormEvent } from "react";
import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router-dom";
import { apiUrl } from "../api";
import { ErrorBox, fmtTime, ProgressBar, StatusChip } from "../common";
import { useCancelBatch, useCreateBatch, useDownload } from "../mutations";
import { PagedTable, usePagedList } from "../PagedTable";
import { batchPagesQuery, fileChoicesQuery, isBatchActive } from "../queries";
import { batchErrors, type BatchObject } from "../types";

function BatchProgress({ batch }: { batch: BatchObject }) {
  const rc = batch.request_counts;
  if (!rc?.total) return <>—</>;
  const done = rc.completed + rc.failed;
  return (
    <>
      <ProgressBar value={done / rc.total} label={`Progress of ${batch.id}`} testId="batch-progress" />
      <span className="muted small">
        {rc.completed} ok, {rc.failed} failed of {rc.total}
      </span>
    </>
  );
}

export default function BatchesPage() {
  const list = usePagedList(batchPagesQuery());
  const files = useQuery(fileChoicesQuery("batch"));
  // The user's pick, else the newest batch file.
  const [picked, setPicked] = useState<string | null>(null);
  const fileId = picked ?? files.data?.[0]?.id ?? "";
  const create = useCreateBatch();
  const cancel = useCancelBatch();
  const dl = useDownload();

  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h" });
  }

  return (
    <>
      <h1>Batches</h1>
      <form className="card form" onSubmit={submit} aria-label="New batch" data-testid="new-batch-form">
        <h2>New batch</h2>
        {files.data && files.data.length === 0 ? (
          <p className="empty">
            No batch files yet. <Link to="/datasets">Upload a JSONL file with purpose “batch”</Link> (OpenAI Batch API lines).
          </p>
        ) : (
          <>
            <label htmlFor="batch-file">Input file</label>
            <select id="batch-file" data-testid="batch-file" value={fileId} onChange={(e) => setPicked(e.target.value)}>
              {(files.data ?? []).map((f) => (
                <option key={f.id} value={f.id}>
                  {f.filename} ({f.id})
                </option>
              ))}
            </select>
            <button type="submit" data-testid="create-batch" disabled={create.isPending || !fileId}>
              {create.isPending ? "Creating…" : "Create batch"}
            </button>
          </>
        )}
        <ErrorBox error={create.error ?? files.error} />
      </form>
      <div className="card">
        <h2>Your batches</h2>
        <ErrorBox error={cancel.error ?? dl.error} />
        <PagedTable
          list={list}
          testId="batches-table"
          rowTestId="batch-row"
          empty={<p className="empty">No batches yet. Create one above.</p>}
          columns={[
            {
              header: "Batch",
              className: "mono small",
              cell: (b) => (
                <>
                  {b.id}
                  <div className="muted">{b.input_file_id}</div>
                </>
              ),
            },
            {
              header: "Status",
              cell: (b) => (
                <>
                  <StatusChip status={b.status} />
                  {batchErrors(b).map((er, i) => (
                    <div key={i} className="error small">
                      {er.line ? `line ${er.line}: ` : ""}
                      {er.message}
                    </div>
                  ))}
                </>
              ),
            },
            { header: "Requests", cell: (b) => <BatchProgress batch={b} /> },
            { header: "Created", cell: (b) => fmtTime(b.created_at) },
            {
              header: "",
              className: "actions",
              cell: (b) => (
                <>
                  {b.output_file_id && (
                    <button
                      type="button"
                      className="small"
                      onClick={() => dl.mutate({ path: apiUrl("/v1/files/{file_id}/content", { file_id: b.output_file_id! }), filename: `${b.id}-output.jsonl` })}
                    >
                      Output
                    </button>
                  )}
                  {b.error_file_id && (
                    <button
                      type="button"
                      className="secondary small"
                      onClick={() => dl.mutate({ path: apiUrl("/v1/files/{file_id}/content", { file_id: b.error_file_id! }), filename: `${b.id}-errors.jsonl` })}
                    >
                      Errors
                    </button>
                  )}
                  {isBatchActive(b) && b.status !== "cancelling" && (
                    <button type="button" className="danger small" onClick={() => cancel.mutate(b.id)}>
                      Cancel
                    </button>
                  )}
                </>
              ),
            },
          ]}
        />
      </div>
    </>
  );
}
