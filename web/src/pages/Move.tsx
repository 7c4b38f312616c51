// "Move from a provider": the four steps of moving fine-tuning jobs from an
// OpenAI-compatible provider (reached through a connection) to an open-weight
// base here: plan (its jobs, their files and how each setting maps), upload
// the local copies of files the provider will not give back, move (create
// the jobs), then compare the provider's fine-tune with the new one.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useNavigate } from "react-router-dom";
import { request, uploadFile } from "../api";
import { ErrorBox, fmtBytes, StatusChip } from "../common";
import { ModelSelect, useModelChoices } from "../ModelChoices";
import { choosable, FILE_STATE_TEXT, filesToUpload, mappingValue, moveRequest, type MovedJobRow, type MoveFile, type MovePlanJob } from "../moves";
import { connectionsQuery, isJobActive, modelsQuery, POLL_MS, queryKeys } from "../queries";

const fileSize = (f: MoveFile) => [f.bytes != null ? fmtBytes(f.bytes) : null, f.lines != null ? `${f.lines} lines` : null].filter(Boolean).join(" · ");

function PlanJob({ job, chosen, onChoose }: { job: MovePlanJob; chosen: boolean; onChoose: (c: boolean) => void }) {
  return (
    <div className="card" data-testid="plan-job" data-job={job.provider_job_id}>
      <label className="check">
        <input type="checkbox" checked={chosen} disabled={!choosable(job)} onChange={(e) => onChoose(e.target.checked)} data-testid="plan-job-choose" />
        <span className="mono">{job.provider_job_id}</span> → <span className="mono small">{job.provider_model ?? "no model yet"}</span>{" "}
        {job.status && <StatusChip status={job.status} />}
      </label>
      {job.problem && (
        <p className="warn small" data-testid="plan-job-problem">
          {job.problem}
        </p>
      )}
      {job.fine_tuning_job_id && (
        <p className="muted small">
          Moved before: <Link to={`/jobs/${job.fine_tuning_job_id}`}>{job.fine_tuning_job_id}</Link> (moving again keeps that job).
        </p>
      )}
      <h4>Files</h4>
      <table data-testid="plan-files">
        <thead>
          <tr>
            <th>Role</th>
            <th>File</th>
            <th>Size</th>
            <th>State</th>
          </tr>
        </thead>
        <tbody>
          {job.files.map((f) => (
            <tr key={f.provider_file_id} data-testid="plan-file" data-state={f.state}>
              <td>{f.role}</td>
              <td>
                <span className="mono small">{f.filename}</span> <span className="muted small">({f.provider_file_id})</span>
              </td>
              <td className="small">{fileSize(f)}</td>
              <td className="small">
                <span className={`chip chip-file-${f.state}`}>{f.state}</span> {FILE_STATE_TEXT[f.state]}
                {f.file_id && <span className="mono"> ({f.file_id})</span>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <h4>Settings carried over</h4>
      <table data-testid="plan-mapping" className="mapping">
        <thead>
          <tr>
            <th>Setting</th>
            <th>At the provider</th>
            <th>Here</th>
            <th>Why</th>
          </tr>
        </thead>
        <tbody>
          {job.mapping.map((m) => (
            <tr key={m.field} data-testid="plan-mapping-row" data-field={m.field}>
              <td className="mono small">{m.field}</td>
              <td className="mono small">{mappingValue(m.provider_value)}</td>
              <td className="mono small">{mappingValue(m.value)}</td>
              <td className="small">{m.reason}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function UploadCopy({ file, onUploaded }: { file: MoveFile; onUploaded: (fileId: string) => void }) {
  const upload = useMutation({
    mutationFn: (f: File) => uploadFile(f, "fine-tune", () => undefined),
    onSuccess: (uploaded) => onUploaded(uploaded.id),
  });
  return (
    <li data-testid="upload-needed" data-provider-file={file.provider_file_id}>
      <span className="mono small">{file.filename ?? file.provider_file_id}</span> ({[file.role, fileSize(file)].filter(Boolean).join(", ")}):{" "}
      <input
        type="file"
        accept=".jsonl,application/jsonl"
        aria-label={`Your copy of ${file.filename ?? file.provider_file_id}`}
        data-testid="upload-copy"
        disabled={upload.isPending}
        onChange={(e) => e.target.files?.[0] && upload.mutate(e.target.files[0])}
      />
      {upload.isPending && <span className="muted"> uploading…</span>}
      <ErrorBox error={upload.error} testId="upload-copy-error" />
    </li>
  );
}

function CompareMoved({ record }: { record: MovedJobRow }) {
  const nav = useNavigate();
  const { choices } = useModelChoices();
  const [judge, setJudge] = useState("");
  const compare = useMutation({
    mutationFn: () =>
      request("post", "/v1/moves/compare", {
        json: { fine_tuning_job_id: record.id, ...(judge ? { judges: [{ kind: "pairwise", model: judge }] } : {}) },
      }),
    onSuccess: (ev) => nav(`/compare/${ev.id}`),
  });
  if (record.comparison_evaluation_id)
    return (
      <Link to={`/compare/${record.comparison_evaluation_id}`} data-testid="moved-comparison">
        {record.comparison_evaluation_id}
      </Link>
    );
  if (record.status !== "succeeded") return <span className="muted small">once the job succeeds</span>;
  return (
    <div className="row wrap">
      {choices && (
        <label className="small">
          judge (optional) <ModelSelect id={`judge-${record.id}`} testId="moved-judge" choices={choices} value={judge} onChange={setJudge} />
        </label>
      )}
      <button type="button" className="small" data-testid="compare-moved" disabled={compare.isPending} onClick={() => compare.mutate()}>
        {judge ? "Compare with a pairwise judge" : "Compare"}
      </button>
      <ErrorBox error={compare.error} />
    </div>
  );
}

function MovedJobs() {
  const moved = useQuery({
    queryKey: queryKeys.moves.list(),
    queryFn: async () => (await request("get", "/v1/moves")).data,
    refetchInterval: (q) => (q.state.data?.some(isJobActive) ? POLL_MS : false),
  });
  return (
    <section className="card step" data-testid="moved-jobs">
      <h2>Compare</h2>
      <p className="muted small">
        Once a moved job succeeds, compare the provider's fine-tune (through the connection) with the new one on the same held-out items;
        a judge model (optional) adds pairwise ratings.
      </p>
      <ErrorBox error={moved.error} />
      {moved.data && moved.data.length === 0 && <p className="empty">No moved jobs yet.</p>}
      {moved.data && moved.data.length > 0 && (
        <table>
          <thead>
            <tr>
              <th>Provider job</th>
              <th>Job here</th>
              <th>Status</th>
              <th>Comparison</th>
            </tr>
          </thead>
          <tbody>
            {moved.data.map((r) => (
              <tr key={r.id} data-testid="moved-job" data-job={r.id}>
                <td className="mono small">
                  {r.moved_from.provider_job_id} <span className="muted">via {r.moved_from.connection}</span>
                  {r.moved_from.provider_model && <div className="muted">{r.moved_from.provider_model}</div>}
                </td>
                <td>
                  <Link to={`/jobs/${r.id}`} className="mono small">
                    {r.id}
                  </Link>
                  {r.fine_tuned_model && <div className="muted mono small">{r.fine_tuned_model}</div>}
                </td>
                <td>
                  <StatusChip status={r.status} />
                </td>
                <td>
                  <CompareMoved record={r} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export default function MovePage() {
  const qc = useQueryClient();
  const connections = useQuery(connectionsQuery());
  const models = useQuery(modelsQuery());
  const bases = (models.data ?? []).filter((m) => m.kind === "base");
  const [pickedConnection, setConnection] = useState("");
  const [pickedBase, setBase] = useState("");
  const connection = pickedConnection || connections.data?.[0]?.name || "";
  const baseModel = pickedBase || bases[0]?.id || "";
  const [jobIds, setJobIds] = useState("");
  const [chosen, setChosen] = useState<Record<string, boolean>>({});
  const [uploads, setUploads] = useState<Record<string, string>>({});

  const plan = useMutation({
    mutationFn: () => {
      const jobs = jobIds.split(/[\s,]+/).filter(Boolean);
      return request("post", "/v1/moves/plan", { json: { connection, base_model: baseModel, ...(jobs.length ? { jobs } : {}) } });
    },
    // Every movable job is chosen at first; a re-plan keeps the user's choices.
    onSuccess: (p) => setChosen((c) => Object.fromEntries(p.jobs.map((j) => [j.provider_job_id, choosable(j) && (c[j.provider_job_id] ?? true)]))),
  });
  const chosenJobs = (plan.data?.jobs ?? []).filter((j) => chosen[j.provider_job_id]);
  const missing = filesToUpload(chosenJobs, uploads);
  const move = useMutation({
    mutationFn: () => request("post", "/v1/moves", { json: moveRequest(connection, baseModel, chosenJobs, uploads) }),
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: queryKeys.moves.all });
      void qc.invalidateQueries({ queryKey: queryKeys.jobs.lists() });
    },
  });

  function submitPlan(e: FormEvent) {
    e.preventDefault();
    move.reset();
    plan.mutate();
  }

  return (
    <>
      <h1>Move from a provider</h1>
      <p className="muted">
        Bring your fine-tuning jobs from an OpenAI-compatible provider to an open-weight base here, then check that the new fine-tune is as good
        as the one you had.
      </p>
      <ol className="steps">
        <li>
          <form className="card form step" onSubmit={submitPlan} aria-label="Plan the move" data-testid="move-plan-form">
            <h2>Pick the provider and plan</h2>
            {connections.data && connections.data.length === 0 && (
              <p className="empty" data-testid="move-no-connections">
                No connections yet. <Link to="/connections">Add one for your provider</Link> (its base URL and API key) first.
              </p>
            )}
            <label htmlFor="move-connection">Connection</label>
            <select id="move-connection" data-testid="move-connection" value={connection} onChange={(e) => setConnection(e.target.value)}>
              {(connections.data ?? []).map((c) => (
                <option key={c.id} value={c.name}>
                  {c.name} ({c.base_url})
                </option>
              ))}
            </select>
            <label htmlFor="move-base">Open-weight base model here</label>
            <select id="move-base" data-testid="move-base-model" value={baseModel} onChange={(e) => setBase(e.target.value)}>
              {bases.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                </option>
              ))}
            </select>
            <label htmlFor="move-jobs">Only these provider job ids (optional; empty: every job it lists)</label>
            <input id="move-jobs" data-testid="move-job-ids" value={jobIds} onChange={(e) => setJobIds(e.target.value)} placeholder="ftjob-abc, ftjob-def" />
            <button type="submit" data-testid="move-plan" disabled={plan.isPending || !connection || !baseModel}>
              {plan.isPending ? "Asking the provider…" : plan.data ? "Plan again" : "Plan"}
            </button>
            <ErrorBox error={plan.error ?? connections.error ?? models.error} testId="move-plan-error" />
          </form>
        </li>
        {plan.data && (
          <li>
            <section className="card step" data-testid="move-plan">
              <h2>Review the plan</h2>
              {plan.data.jobs.length === 0 && <p className="empty">The provider lists no fine-tuning jobs.</p>}
              {plan.data.jobs.map((j) => (
                <PlanJob key={j.provider_job_id} job={j} chosen={!!chosen[j.provider_job_id]} onChoose={(c) => setChosen((x) => ({ ...x, [j.provider_job_id]: c }))} />
              ))}
            </section>
          </li>
        )}
        {plan.data && (
          <li>
            <section className="card step" data-testid="move-uploads">
              <h2>Upload what the provider keeps</h2>
              {missing.length === 0 ? (
                <p className="muted" data-testid="move-nothing-to-upload">
                  Nothing to upload: every file of the chosen jobs comes from the provider or is matched to one of yours.
                </p>
              ) : (
                <>
                  <p className="muted small">Your local copy is matched to the provider's file by name, size and line count.</p>
                  <ul className="plain">
                    {missing.map((f) => (
                      <UploadCopy key={f.provider_file_id} file={f} onUploaded={(id) => setUploads((u) => ({ ...u, [f.provider_file_id]: id }))} />
                    ))}
                  </ul>
                </>
              )}
              {Object.keys(uploads).length > 0 && (
                <p className="small" data-testid="move-uploaded">
                  Uploaded: {Object.entries(uploads).map(([provider, local]) => `${provider} → ${local}`).join(", ")}
                </p>
              )}
              <h2>Move</h2>
              <button type="button" data-testid="move-submit" disabled={move.isPending || chosenJobs.length === 0 || missing.length > 0} onClick={() => move.mutate()}>
                {move.isPending ? "Moving…" : `Create ${chosenJobs.length} job${chosenJobs.length === 1 ? "" : "s"} on ${baseModel}`}
              </button>
              <ErrorBox error={move.error} testId="move-error" />
              {move.data && (
                <ul className="plain" data-testid="move-created">
                  {move.data.jobs.map((j) => (
                    <li key={j.fine_tuning_job_id}>
                      <span className="mono small">{j.provider_job_id}</span> →{" "}
                      <Link to={`/jobs/${j.fine_tuning_job_id}`} className="mono small" data-testid="move-created-job">
                        {j.fine_tuning_job_id}
                      </Link>
                      {!j.created && <span className="muted small"> (moved before: that job is kept)</span>}
                    </li>
                  ))}
                </ul>
              )}
            </section>
          </li>
        )}
        <li>
          <MovedJobs />
        </li>
      </ol>
    </>
  );
}
