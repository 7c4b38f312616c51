import { useCallback, useEffect, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { api, download } from "../api";
import { ErrorBox, fmtTime, LoadMore, ProgressBar, StatusChip, usePaged, usePoll } from "../common";
import { buildHyperparameters, EXTRA_HPS, FINAL_JOB_STATUSES, formatDuration } from "../lib";
import type { FileObj } from "./Datasets";

export interface Job {
  id: string;
  model: string;
  status: string;
  created_at: number;
  finished_at: number | null;
  fine_tuned_model: string | null;
  training_file: string;
  validation_file: string | null;
  hyperparameters: Record<string, unknown>;
  hyperparameter_details: Record<string, { value: unknown; origin: string; reason: string | null }> | null;
  trained_tokens: number | null;
  error: { message?: string; code?: string } | null;
  user_provided_suffix: string | null;
  seed: number;
  estimated_finish: number | null;
  progress: { step: number | null; total_steps: number | null; checkpoint_step: number | null; attempt: number } | null;
  evaluation_id: string | null;
}

function JobProgress({ job }: { job: Job }) {
  const p = job.progress;
  if (job.status === "succeeded") return <span className="muted">done</span>;
  if (!p?.total_steps) return <span className="muted">{job.status === "queued" ? "waiting for a worker" : "—"}</span>;
  return (
    <div>
      <ProgressBar value={(p.step ?? 0) / p.total_steps} label={`Progress of ${job.id}`} testId="job-progress" />
      <span className="muted small">
        step {p.step ?? 0} / {p.total_steps}
      </span>
    </div>
  );
}

export function JobsPage() {
  const list = usePaged<Job>("/v1/fine_tuning/jobs");
  const anyActive = list.items.some((j) => !FINAL_JOB_STATUSES.has(j.status));
  usePoll(
    async () => {
      // refresh only the active jobs shown
      const active = list.items.filter((j) => !FINAL_JOB_STATUSES.has(j.status));
      const fresh = await Promise.all(active.map((j) => api<Job>(`/v1/fine_tuning/jobs/${j.id}`).catch(() => j)));
      const byId = new Map(fresh.map((j) => [j.id, j]));
      list.setItems((items) => items.map((j) => byId.get(j.id) ?? j));
    },
    2000,
    anyActive,
  );
  return (
    <>
      <div className="row between">
        <h1>Fine-tuning jobs</h1>
        <Link to="/jobs/new" className="button" data-testid="new-job-link">
          New job
        </Link>
      </div>
      <div className="card">
        <ErrorBox error={list.error} />
        {!list.loading && !list.error && list.items.length === 0 && (
          <p className="empty">
            No jobs yet. <Link to="/datasets">Upload a fine-tune file</Link>, then <Link to="/jobs/new">create a job</Link>.
          </p>
        )}
        {list.items.length > 0 && (
          <div className="table-wrap">
            <table data-testid="jobs-table">
              <thead>
                <tr>
                  <th>Job</th>
                  <th>Status</th>
                  <th>Progress</th>
                  <th>Base model</th>
                  <th>Created</th>
                </tr>
              </thead>
              <tbody>
                {list.items.map((j) => (
                  <tr key={j.id} data-testid="job-row">
                    <td>
                      <Link to={`/jobs/${j.id}`} className="mono">
                        {j.id}
                      </Link>
                      {j.user_provided_suffix && <div className="muted small">{j.user_provided_suffix}</div>}
                    </td>
                    <td>
                      <StatusChip status={j.status} />
                    </td>
                    <td>
                      <JobProgress job={j} />
                    </td>
                    <td className="small">{j.model}</td>
                    <td>{fmtTime(j.created_at)}</td>
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

async function allFiles(purpose: string): Promise<FileObj[]> {
  const r = await api<{ data: FileObj[] }>(`/v1/files?purpose=${purpose}&limit=1000`);
  return r.data;
}

export function NewJobPage() {
  const nav = useNavigate();
  const [files, setFiles] = useState<FileObj[] | null>(null);
  const [models, setModels] = useState<{ id: string }[] | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [trainingFile, setTrainingFile] = useState("");
  const [validationFile, setValidationFile] = useState("");
  const [model, setModel] = useState("");
  const [suffix, setSuffix] = useState("");
  const [seed, setSeed] = useState("");
  const [basic, setBasic] = useState({ n_epochs: "auto", batch_size: "auto", learning_rate_multiplier: "auto" });
  const [extra, setExtra] = useState<Record<string, string>>({});
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [preview, setPreview] = useState<Preview | null>(null);
  const [previewError, setPreviewError] = useState<unknown>(null);

  useEffect(() => {
    Promise.all([allFiles("fine-tune"), api<{ data: { id: string; kind: string }[] }>("/v1/models")])
      .then(([f, m]) => {
        setFiles(f);
        const bases = m.data.filter((x) => x.kind === "base");
        setModels(bases);
        if (f[0]) setTrainingFile(f[0].id);
        if (bases[0]) setModel(bases[0].id);
      })
      .catch(setLoadError);
  }, []);

  // The request body, or an Error naming what is wrong with the form.
  function requestBody(): Record<string, unknown> {
    const hyperparameters = buildHyperparameters(basic, extra);
    const body: Record<string, unknown> = { model, training_file: trainingFile, hyperparameters };
    if (validationFile) body.validation_file = validationFile;
    if (suffix.trim()) body.suffix = suffix.trim();
    if (seed.trim()) {
      const n = Number(seed);
      if (!Number.isInteger(n)) throw new Error("seed must be an integer");
      body.seed = n;
    }
    return body;
  }

  // What `auto` will resolve to, refreshed as the form changes (debounced).
  useEffect(() => {
    if (!trainingFile || !model) return;
    let body: Record<string, unknown>;
    try {
      body = requestBody();
    } catch (err) {
      setPreview(null);
      setPreviewError(err);
      return;
    }
    let cancelled = false;
    const timer = window.setTimeout(() => {
      api<Preview>("/v1/fine_tuning/jobs/preview", { json: body })
        .then((p) => {
          if (!cancelled) {
            setPreview(p);
            setPreviewError(null);
          }
        })
        .catch((err) => {
          if (!cancelled) {
            setPreview(null);
            setPreviewError(err);
          }
        });
    }, 400);
    return () => {
      cancelled = true;
      window.clearTimeout(timer);
    };
  }, [trainingFile, validationFile, model, suffix, seed, basic, extra]);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(null);
    let body: Record<string, unknown>;
    try {
      body = requestBody();
    } catch (err) {
      setError(err);
      return;
    }
    setBusy(true);
    try {
      const job = await api<Job>("/v1/fine_tuning/jobs", { json: body });
      nav(`/jobs/${job.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  if (loadError) return <ErrorBox error={loadError} />;
  if (!files || !models) return <p className="muted">Loading…</p>;
  if (files.length === 0)
    return (
      <>
        <h1>New fine-tuning job</h1>
        <p className="empty">
          You have no fine-tune files yet. <Link to="/datasets">Upload one</Link> first.
        </p>
      </>
    );

  return (
    <>
      <h1>New fine-tuning job</h1>
      <form className="card form" onSubmit={submit} aria-label="New fine-tuning job" data-testid="new-job-form">
        <label htmlFor="training-file">Training file</label>
        <select id="training-file" data-testid="training-file" value={trainingFile} onChange={(e) => setTrainingFile(e.target.value)}>
          {files.map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <label htmlFor="validation-file">Validation file (optional; otherwise the file's TEST split)</label>
        <select id="validation-file" data-testid="validation-file" value={validationFile} onChange={(e) => setValidationFile(e.target.value)}>
          <option value="">— none —</option>
          {files.map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <label htmlFor="base-model">Base model</label>
        <select id="base-model" data-testid="base-model" value={model} onChange={(e) => setModel(e.target.value)}>
          {models.map((m) => (
            <option key={m.id} value={m.id}>
              {m.id}
            </option>
          ))}
        </select>
        <label htmlFor="suffix">Suffix (optional, part of the model name)</label>
        <input id="suffix" data-testid="suffix" value={suffix} onChange={(e) => setSuffix(e.target.value)} />
        {(["n_epochs", "batch_size", "learning_rate_multiplier"] as const).map((k) => (
          <div key={k}>
            <label htmlFor={`hp-${k}`}>{k} (“auto” or a number)</label>
            <input
              id={`hp-${k}`}
              data-testid={`hp-${k}`}
              value={basic[k]}
              onChange={(e) => setBasic({ ...basic, [k]: e.target.value })}
            />
          </div>
        ))}
        <details data-testid="advanced-hyperparameters">
          <summary>Advanced hyperparameters (leave empty to let the service choose)</summary>
          {EXTRA_HPS.map((spec) => (
            <div key={spec.name} className="hp-field">
              <label htmlFor={`hp-${spec.name}`}>{spec.name}</label>
              {spec.type === "enum" || spec.type === "bool" ? (
                <select
                  id={`hp-${spec.name}`}
                  data-testid={`hp-${spec.name}`}
                  value={extra[spec.name] ?? ""}
                  onChange={(e) => setExtra({ ...extra, [spec.name]: e.target.value })}
                >
                  <option value="">(choose for me)</option>
                  {(spec.type === "bool" ? ["true", "false"] : [...(spec.auto ? ["auto"] : []), ...(spec.options ?? [])]).map((o) => (
                    <option key={o} value={o}>
                      {o}
                    </option>
                  ))}
                </select>
              ) : (
                <input
                  id={`hp-${spec.name}`}
                  data-testid={`hp-${spec.name}`}
                  value={extra[spec.name] ?? ""}
                  placeholder={spec.auto ? "auto" : ""}
                  onChange={(e) => setExtra({ ...extra, [spec.name]: e.target.value })}
                />
              )}
              <div className="muted small">{spec.help}</div>
            </div>
          ))}
          <label htmlFor="seed">seed (optional integer)</label>
          <input id="seed" data-testid="seed" value={seed} onChange={(e) => setSeed(e.target.value)} />
        </details>
        <button type="submit" data-testid="create-job-submit" disabled={busy || !trainingFile || !model}>
          {busy ? "Creating…" : "Create job"}
        </button>
        <ErrorBox error={error} testId="new-job-error" />
      </form>
      <div className="card" data-testid="hyperparameter-preview">
        <h2>What these settings resolve to</h2>
        <ErrorBox error={previewError} testId="preview-error" />
        {preview ? (
          <>
            <p className="muted small">{preview.note}</p>
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th>Name</th>
                    <th>Value</th>
                    <th>Origin</th>
                    <th>Reason</th>
                  </tr>
                </thead>
                <tbody>
                  {Object.entries(preview.hyperparameters).map(([name, d]) => (
                    <tr key={name} data-testid="preview-row" data-name={name}>
                      <td className="mono small">{name}</td>
                      <td className="mono small">{String(d.value)}</td>
                      <td>
                        <span className={`chip chip-origin-${d.origin}`}>{d.origin}</span>
                      </td>
                      <td className="small">{d.reason ?? ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </>
        ) : (
          !previewError && <p className="muted">Pick a training file and a base model to see how every “auto” resolves.</p>
        )}
      </div>
    </>
  );
}

interface Preview {
  device: string;
  note: string;
  hyperparameters: Record<string, { value: unknown; origin: string; reason: string | null }>;
}

interface MetricRow {
  step: number;
  epoch?: number;
  train_loss?: number | null;
  valid_loss?: number | null;
  learning_rate?: number | null;
  tokens_per_second?: number | null;
  trained_tokens?: number | null;
}

function MergedDownload({ jobId }: { jobId: string }) {
  const [state, setState] = useState<"idle" | "preparing" | "done">("idle");
  const [error, setError] = useState<unknown>(null);
  const attempt = useCallback(async () => {
    try {
      const status = await download(`/v1/fine_tuning/jobs/${jobId}/merged`, `${jobId}-merged.zip`);
      setState(status === 202 ? "preparing" : "done");
    } catch (e) {
      setError(e);
      setState("idle");
    }
  }, [jobId]);
  usePoll(attempt, 3000, state === "preparing");
  return (
    <>
      <button
        type="button"
        className="secondary"
        data-testid="download-merged"
        disabled={state === "preparing"}
        onClick={() => {
          setError(null);
          setState("preparing");
          attempt();
        }}
      >
        {state === "preparing" ? "Merging weights… (download starts when ready)" : "Download merged weights"}
      </button>
      <ErrorBox error={error} />
    </>
  );
}

function fmtNum(v: unknown): string {
  if (typeof v === "number") return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : String(Math.round(v * 10000) / 10000);
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

export function JobDetailPage() {
  const { id } = useParams();
  const [job, setJob] = useState<Job | null>(null);
  const [metrics, setMetrics] = useState<MetricRow[]>([]);
  const [events, setEvents] = useState<{ id: string; created_at: number; level: string; message: string; type: string }[]>([]);
  const [checkpoints, setCheckpoints] = useState<{ id: string; step_number: number; metrics: Record<string, unknown>; created_at: number }[]>([]);
  const [recipe, setRecipe] = useState<unknown>(null);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);

  const refresh = useCallback(async () => {
    try {
      const [j, m, ev, ck] = await Promise.all([
        api<Job>(`/v1/fine_tuning/jobs/${id}`),
        api<{ data: MetricRow[] }>(`/v1/fine_tuning/jobs/${id}/metrics`),
        api<{ data: any[] }>(`/v1/fine_tuning/jobs/${id}/events?limit=100`),
        api<{ data: any[] }>(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`),
      ]);
      setJob(j);
      setMetrics(m.data);
      setEvents(ev.data);
      setCheckpoints(ck.data);
      setError(null);
      if (j.hyperparameter_details && !recipe) {
        api(`/v1/fine_tuning/jobs/${id}/recipe`).then(setRecipe, () => undefined);
      }
    } catch (e) {
      setError(e);
    }
  }, [id, recipe]);

  useEffect(() => {
    setJob(null);
    setRecipe(null);
    refresh();
  }, [id]);
  const active = !!job && !FINAL_JOB_STATUSES.has(job.status);
  usePoll(refresh, 2000, active);

  if (!job) return error ? <ErrorBox error={error} /> : <p className="muted">Loading…</p>;
  const last = metrics[metrics.length - 1];
  const p = job.progress;
  const eta = job.estimated_finish ? job.estimated_finish - Date.now() / 1000 : null;

  async function cancel() {
    setActionError(null);
    try {
      setJob(await api<Job>(`/v1/fine_tuning/jobs/${id}/cancel`, { method: "POST" }));
    } catch (e) {
      setActionError(e);
    }
  }
  async function dl(path: string, name: string) {
    setActionError(null);
    try {
      await download(path, name);
    } catch (e) {
      setActionError(e);
    }
  }

  return (
    <>
      <div className="row between">
        <h1 className="mono">{job.id}</h1>
        <StatusChip status={job.status} />
      </div>
      <ErrorBox error={error} />
      <div className="card">
        <div className="grid">
          <div>
            <div className="muted small">Base model</div>
            {job.model}
          </div>
          <div>
            <div className="muted small">Fine-tuned model</div>
            <span className="mono" data-testid="fine-tuned-model">{job.fine_tuned_model ?? "—"}</span>
          </div>
          <div>
            <div className="muted small">Training file</div>
            <span className="mono">{job.training_file}</span>
          </div>
          <div>
            <div className="muted small">Created / finished</div>
            {fmtTime(job.created_at)} / {fmtTime(job.finished_at)}
          </div>
          <div>
            <div className="muted small">Tokens/s</div>
            <span data-testid="tokens-per-second">{last?.tokens_per_second ? Math.round(last.tokens_per_second) : "—"}</span>
          </div>
          <div>
            <div className="muted small">ETA</div>
            <span data-testid="eta">{active && eta !== null ? `${formatDuration(Math.max(0, eta))} (${fmtTime(job.estimated_finish)})` : "—"}</span>
          </div>
          <div>
            <div className="muted small">Trained tokens</div>
            {job.trained_tokens ?? last?.trained_tokens ?? "—"}
          </div>
          <div>
            <div className="muted small">Seed</div>
            {job.seed}
          </div>
        </div>
        {p?.total_steps ? (
          <div>
            <ProgressBar value={(p.step ?? 0) / p.total_steps} label="Training progress" testId="job-progress" />
            <span className="muted small">
              step {p.step ?? 0} of {p.total_steps}
              {p.checkpoint_step ? ` · last checkpoint at step ${p.checkpoint_step}` : ""}
              {p.attempt > 1 ? ` · attempt ${p.attempt}` : ""}
            </span>
          </div>
        ) : (
          active && <p className="muted">{job.status === "queued" ? "Queued: waiting for a training worker." : "Preparing…"}</p>
        )}
        {job.error && (job.error.message || job.error.code) && (
          <div className="error" role="alert" data-testid="job-error">
            {job.error.message} {job.error.code && <span className="muted">({job.error.code})</span>}
          </div>
        )}
        <div className="row wrap">
          {active && (
            <button type="button" className="danger" data-testid="cancel-job" onClick={cancel}>
              Cancel job
            </button>
          )}
          {job.status === "succeeded" && (
            <>
              <button type="button" data-testid="download-adapter" onClick={() => dl(`/v1/fine_tuning/jobs/${id}/adapter`, `${id}-adapter.zip`)}>
                Download adapter
              </button>
              <MergedDownload jobId={job.id} />
            </>
          )}
          {job.evaluation_id && (
            <Link to={`/compare/${job.evaluation_id}`} className="button secondary" data-testid="evaluation-link">
              Evaluation {job.evaluation_id}
            </Link>
          )}
          <button type="button" className="secondary" onClick={() => dl(`/v1/fine_tuning/jobs/${id}/metrics?format=csv`, `${id}-metrics.csv`)}>
            Metrics CSV
          </button>
        </div>
        <ErrorBox error={actionError} testId="job-action-error" />
      </div>

      <div className="card">
        <h2>Loss</h2>
        <div data-testid="loss-chart" aria-label="Loss chart" role="figure">
          {metrics.length === 0 ? (
            <p className="empty">No training steps yet; the curves appear as soon as the worker reports the first step.</p>
          ) : (
            <ResponsiveContainer width="100%" height={280}>
              <LineChart data={metrics}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis dataKey="step" type="number" domain={["dataMin", "dataMax"]} allowDecimals={false} />
                <YAxis />
                <Tooltip />
                <Legend />
                <Line dataKey="train_loss" name="train loss" stroke="#3b6ea5" dot={false} connectNulls isAnimationActive={false} />
                <Line dataKey="valid_loss" name="validation loss" stroke="#d9822b" connectNulls isAnimationActive={false} />
              </LineChart>
            </ResponsiveContainer>
          )}
        </div>
        {metrics.length > 0 && (
          <>
            <h3>Learning rate</h3>
            <div data-testid="lr-chart" role="figure" aria-label="Learning rate chart">
              <ResponsiveContainer width="100%" height={160}>
                <LineChart data={metrics}>
                  <CartesianGrid strokeDasharray="3 3" />
                  <XAxis dataKey="step" type="number" domain={["dataMin", "dataMax"]} allowDecimals={false} />
                  <YAxis tickFormatter={(v: number) => v.toExponential(1)} width={70} />
                  <Tooltip />
                  <Line dataKey="learning_rate" name="learning rate" stroke="#5a9e5a" dot={false} isAnimationActive={false} />
                </LineChart>
              </ResponsiveContainer>
            </div>
          </>
        )}
      </div>

      <div className="card">
        <h2>Hyperparameters</h2>
        {job.hyperparameter_details ? (
          <div className="table-wrap">
            <table data-testid="hyperparameters-table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Value</th>
                  <th>Origin</th>
                  <th>Reason</th>
                </tr>
              </thead>
              <tbody>
                {Object.entries(job.hyperparameter_details).map(([k, d]) => (
                  <tr key={k}>
                    <td className="mono">{k}</td>
                    <td className="mono">{fmtNum(d?.value)}</td>
                    <td>
                      <span className={`origin origin-${d?.origin}`}>{d?.origin}</span>
                    </td>
                    <td className="small">{d?.reason ?? ""}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <>
            <p className="muted">Resolved once a worker starts the job. Requested:</p>
            <pre>{JSON.stringify(job.hyperparameters, null, 2)}</pre>
          </>
        )}
      </div>

      <div className="card">
        <div className="row between">
          <h2>Recipe</h2>
          <div className="row">
            <button type="button" className="secondary small" data-testid="download-recipe-yaml" disabled={!recipe} onClick={() => dl(`/v1/fine_tuning/jobs/${id}/recipe?format=yaml`, `${id}-recipe.yaml`)}>
              Download YAML
            </button>
            <button type="button" className="secondary small" disabled={!recipe} onClick={() => dl(`/v1/fine_tuning/jobs/${id}/recipe`, `${id}-recipe.json`)}>
              Download JSON
            </button>
          </div>
        </div>
        {recipe ? (
          <details>
            <summary>Show recipe</summary>
            <pre data-testid="recipe">{JSON.stringify(recipe, null, 2)}</pre>
          </details>
        ) : (
          <p className="muted">The recipe is written once a worker has resolved the hyperparameters.</p>
        )}
      </div>

      <div className="card">
        <h2>Checkpoints</h2>
        {checkpoints.length === 0 ? (
          <p className="muted">No checkpoints yet.</p>
        ) : (
          <table data-testid="checkpoints-table">
            <thead>
              <tr>
                <th>Checkpoint</th>
                <th>Step</th>
                <th>Metrics</th>
              </tr>
            </thead>
            <tbody>
              {checkpoints.map((c) => (
                <tr key={c.id}>
                  <td className="mono small">{c.id}</td>
                  <td className="num">{c.step_number}</td>
                  <td className="small mono">
                    {Object.entries(c.metrics ?? {})
                      .map(([k, v]) => `${k}=${fmtNum(v)}`)
                      .join("  ")}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </div>

      <div className="card">
        <h2>Events</h2>
        <ul className="events" data-testid="event-log">
          {events
            .filter((e) => e.type !== "metrics")
            .map((e) => (
              <li key={e.id} className={`level-${e.level}`}>
                <span className="muted small">{fmtTime(e.created_at)}</span> {e.message}
              </li>
            ))}
        </ul>
      </div>
    </>
  );
}
