import { useEffect, useMemo, useState, type FormEvent } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { apiUrl } from "../api";
import { ErrorBox, fmtTime, ProgressBar, StatusChip } from "../common";
import { BASIC_HPS, buildHyperparameters, EXTRA_HPS, helpText, HP, parseSeed, type BasicHpName } from "../hyperparameters";
import { formatDuration } from "../lib";
import { useCancelJob, useCreateJob, useDownload } from "../mutations";
import { baseChoices, CheckpointModels, FineTuneFurtherLink, JobParentInfo, PauseResumeButtons } from "./JobLineage";
import { MemoryChart, MemoryFit } from "./JobMemory";
import { LinkedDownloadButton } from "./ModelDetail";
import { formatWords, methodForFormat, parseBeta, PreferenceCharts, type TrainingMethod } from "./JobPreference";
import { PagedTable, staticList, usePagedList } from "../PagedTable";
import { StepChart } from "../StepChart";
import {
  fileChoicesQuery,
  isJobActive,
  jobCheckpointsQuery,
  jobEventsQuery,
  jobMetricsQuery,
  jobPagesQuery,
  jobPreviewQuery,
  jobQuery,
  jobRecipeQuery,
  modelsQuery,
} from "../queries";
import { hyperparameterDetails, jobProgress, type CreateJobRequest, type JobObject } from "../types";

function JobProgress({ job }: { job: JobObject }) {
  const p = jobProgress(job);
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
  const list = usePagedList(jobPagesQuery());
  return (
    <>
      <div className="row between">
        <h1>Fine-tuning jobs</h1>
        <Link to="/jobs/new" className="button" data-testid="new-job-link">
          New job
        </Link>
      </div>
      <div className="card">
        <PagedTable
          list={list}
          testId="jobs-table"
          rowTestId="job-row"
          empty={
            <p className="empty">
              No jobs yet. <Link to="/datasets">Upload a fine-tune file</Link>, then <Link to="/jobs/new">create a job</Link>.
            </p>
          }
          columns={[
            {
              header: "Job",
              cell: (j) => (
                <>
                  <Link to={`/jobs/${j.id}`} className="mono">
                    {j.id}
                  </Link>
                  {j.user_provided_suffix && <div className="muted small">{j.user_provided_suffix}</div>}
                </>
              ),
            },
            { header: "Status", cell: (j) => <StatusChip status={j.status} /> },
            { header: "Progress", cell: (j) => <JobProgress job={j} /> },
            { header: "Base model", cell: (j) => j.model, className: "small" },
            { header: "Created", cell: (j) => fmtTime(j.created_at) },
          ]}
        />
      </div>
    </>
  );
}

/** `value`, once it has not changed for `ms`. */
function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setSettled(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return settled;
}

const PREVIEW_DEBOUNCE_MS = 400;

export function NewJobPage() {
  const nav = useNavigate();
  const files = useQuery(fileChoicesQuery("fine-tune"));
  const models = useQuery(modelsQuery());
  // ?model=ft:… (a job page's "Fine-tune further"): a fine-tune or checkpoint model as the base.
  const [params] = useSearchParams();
  const [pickedModel, setModel] = useState<string | null>(params.get("model"));
  const bases = useMemo(() => baseChoices(models.data, pickedModel), [models.data, pickedModel]);
  // A select shows the user's pick, else the first choice.
  const [pickedTrainingFile, setTrainingFile] = useState<string | null>(null);
  const trainingFile = pickedTrainingFile ?? files.data?.[0]?.id ?? "";
  const model = pickedModel ?? bases?.[0]?.id ?? "";
  const [validationFile, setValidationFile] = useState("");
  const [suffix, setSuffix] = useState("");
  const [seed, setSeed] = useState("");
  const [basic, setBasic] = useState<Record<BasicHpName, string>>({ n_epochs: "auto", batch_size: "auto", learning_rate_multiplier: "auto" });
  const [extra, setExtra] = useState<Record<string, string>>({});
  const [pickedMethod, setMethod] = useState<TrainingMethod | null>(null);
  const [beta, setBeta] = useState("auto");
  const fileFormat = files.data?.find((f) => f.id === trainingFile)?.report?.format as string | undefined;
  // The file's format picks the method until the user picks one.
  const method = pickedMethod ?? methodForFormat(fileFormat);
  const create = useCreateJob();

  // The request body; throws an Error naming what is wrong with the form.
  function requestBody(): CreateJobRequest {
    const hyperparameters = buildHyperparameters(basic, extra);
    const body: CreateJobRequest = { model, training_file: trainingFile };
    if (method === "dpo") {
      const b = parseBeta(beta);
      body.method = { type: "dpo", dpo: { hyperparameters: b === undefined ? hyperparameters : { ...hyperparameters, beta: b } } };
    } else {
      body.hyperparameters = hyperparameters;
    }
    if (validationFile) body.validation_file = validationFile;
    if (suffix.trim()) body.suffix = suffix.trim();
    const s = parseSeed(seed);
    if (s !== undefined) body.seed = s;
    return body;
  }

  // What `auto` will resolve to, refreshed as the form changes (debounced).
  const built = useMemo((): { body?: CreateJobRequest; error?: unknown } => {
    if (!trainingFile || !model) return {};
    try {
      return { body: requestBody() };
    } catch (error) {
      return { error };
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [trainingFile, validationFile, model, suffix, seed, basic, extra, method, beta]);
  const previewBody = useDebounced(built.body, PREVIEW_DEBOUNCE_MS);
  const previewQuery = useQuery({
    ...jobPreviewQuery(previewBody!),
    enabled: previewBody !== undefined,
    // the last answer stays until the next one comes
    placeholderData: keepPreviousData,
  });
  const previewError = built.error ?? previewQuery.error;
  const preview = built.error ? undefined : previewQuery.data;

  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate(requestBody, { onSuccess: (job) => nav(`/jobs/${job.id}`) });
  }

  const loadError = files.error ?? models.error;
  if (loadError) return <ErrorBox error={loadError} />;
  if (!files.data || !bases) return <p className="muted">Loading…</p>;
  if (files.data.length === 0)
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
          {files.data.map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <div className="muted small" data-testid="file-format">
          Detected format: {formatWords(fileFormat)}
        </div>
        <label htmlFor="method">Method</label>
        <select id="method" data-testid="method" value={method} onChange={(e) => setMethod(e.target.value as TrainingMethod)}>
          <option value="supervised">Supervised (chat, text, prompt/completion)</option>
          <option value="dpo">DPO (preference pairs)</option>
        </select>
        {method === "dpo" && (
          <div className="hp-field">
            <label htmlFor="hp-beta">beta (“auto” or a number)</label>
            <input id="hp-beta" data-testid="hp-beta" value={beta} onChange={(e) => setBeta(e.target.value)} />
            <div className="muted small">How far the fine-tune may move from the starting model; lower lets it move further. “auto”: 0.1.</div>
          </div>
        )}
        <label htmlFor="validation-file">Validation file (optional; otherwise the file's TEST split)</label>
        <select id="validation-file" data-testid="validation-file" value={validationFile} onChange={(e) => setValidationFile(e.target.value)}>
          <option value="">— none —</option>
          {files.data.map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <label htmlFor="base-model">Base model (or one of your fine-tunes, trained on further)</label>
        <select id="base-model" data-testid="base-model" value={model} onChange={(e) => setModel(e.target.value)}>
          {bases.map((m) => (
            <option key={m.id} value={m.id}>
              {m.id}
            </option>
          ))}
        </select>
        <label htmlFor="suffix">Suffix (optional, part of the model name)</label>
        <input id="suffix" data-testid="suffix" value={suffix} onChange={(e) => setSuffix(e.target.value)} />
        {BASIC_HPS.map((spec) => {
          const k = spec.name as BasicHpName;
          return (
            <div key={k} className="hp-field">
              <label htmlFor={`hp-${k}`}>{k} (“auto” or a number)</label>
              <input id={`hp-${k}`} data-testid={`hp-${k}`} value={basic[k]} onChange={(e) => setBasic({ ...basic, [k]: e.target.value })} />
              <div className="muted small">{helpText(spec)}</div>
            </div>
          );
        })}
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
              <div className="muted small">{helpText(spec)}</div>
            </div>
          ))}
          <div className="hp-field">
            <label htmlFor="seed">seed (optional integer)</label>
            <input id="seed" data-testid="seed" value={seed} onChange={(e) => setSeed(e.target.value)} />
            {HP.seed && <div className="muted small">{helpText(HP.seed)}</div>}
          </div>
        </details>
        <button type="submit" data-testid="create-job-submit" disabled={create.isPending || !trainingFile || !model}>
          {create.isPending ? "Creating…" : "Create job"}
        </button>
        <ErrorBox error={create.error} testId="new-job-error" />
      </form>
      <div className="card" data-testid="hyperparameter-preview">
        <h2>What these settings resolve to</h2>
        <ErrorBox error={previewError} testId="preview-error" />
        {preview ? (
          <>
            <p className="muted small">{preview.note}</p>
            <MemoryFit memory={preview.memory} />
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

function fmtNum(v: unknown): string {
  if (typeof v === "number") return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : String(Math.round(v * 10000) / 10000);
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

export function JobDetailPage() {
  const { id = "" } = useParams();
  const jobQ = useQuery(jobQuery(id));
  const job = jobQ.data;
  // Metrics, events and checkpoints are polled while the job runs (and once after).
  const followed = { data: job, dataUpdatedAt: jobQ.dataUpdatedAt };
  const metricsQ = useQuery(jobMetricsQuery(id, followed));
  const eventsQ = useQuery(jobEventsQuery(id, followed));
  const checkpointsQ = useQuery(jobCheckpointsQuery(id, followed));
  const { data: recipe } = useQuery({ ...jobRecipeQuery(id), enabled: !!job?.hyperparameter_details });
  const cancelJob = useCancelJob();
  const dl = useDownload();
  const error = jobQ.error ?? metricsQ.error ?? eventsQ.error ?? checkpointsQ.error;

  if (!job) return error ? <ErrorBox error={error} /> : <p className="muted">Loading…</p>;
  const metrics = metricsQ.data ?? [];
  const events = eventsQ.data ?? [];
  const checkpoints = checkpointsQ.data ?? [];
  const details = hyperparameterDetails(job);
  const active = isJobActive(job);
  const last = metrics[metrics.length - 1];
  const p = jobProgress(job);
  const eta = job.estimated_finish ? job.estimated_finish - Date.now() / 1000 : null;
  const actionError = cancelJob.error ?? dl.error;
  const cancel = () => cancelJob.mutate(id);
  const jobFile = (path: Parameters<typeof apiUrl>[0], query: Record<string, string> = {}) => apiUrl(path, { job_id: id }, query);
  const save = (path: string, filename: string) => dl.mutate({ path, filename });

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
          <JobParentInfo job={job} />
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
          <PauseResumeButtons job={job} />
          {active && (
            <button type="button" className="danger" data-testid="cancel-job" onClick={cancel}>
              Cancel job
            </button>
          )}
          {job.status === "succeeded" && (
            <>
              {job.hyperparameters.adapter !== "full" && ( // a full fine-tune has no adapter: its merged weights are the model
                <LinkedDownloadButton path={jobFile("/v1/fine_tuning/jobs/{job_id}/adapter")} label="Download adapter" testId="download-adapter" secondary={false} />
              )}
              <LinkedDownloadButton path={jobFile("/v1/fine_tuning/jobs/{job_id}/merged")} label="Download merged weights" testId="download-merged" />
              <Link to={`/models/${job.id}`} className="button secondary" data-testid="model-page-link">
                Model page: card, GGUF, bundle
              </Link>
              {job.fine_tuned_model && <FineTuneFurtherLink model={job.fine_tuned_model} testId="fine-tune-further" />}
            </>
          )}
          {job.evaluation_id && (
            <Link to={`/compare/${job.evaluation_id}`} className="button secondary" data-testid="evaluation-link">
              Evaluation {job.evaluation_id}
            </Link>
          )}
          <button type="button" className="secondary" onClick={() => save(jobFile("/v1/fine_tuning/jobs/{job_id}/metrics", { format: "csv" }), `${id}-metrics.csv`)}>
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
            <StepChart
              data={metrics}
              height={280}
              lines={[
                { key: "train_loss", name: "train loss", color: "#3b6ea5" },
                { key: "valid_loss", name: "validation loss", color: "#d9822b", sparse: true },
              ]}
            />
          )}
        </div>
        {metrics.length > 0 && (
          <>
            <h3>Learning rate</h3>
            <div data-testid="lr-chart" role="figure" aria-label="Learning rate chart">
              <StepChart
                data={metrics}
                height={160}
                legend={false}
                yWidth={70}
                yTickFormatter={(v: number) => v.toExponential(1)}
                lines={[{ key: "learning_rate", name: "learning rate", color: "#5a9e5a" }]}
              />
            </div>
          </>
        )}
      </div>

      <PreferenceCharts metrics={metrics} />
      <MemoryChart metrics={metrics} recipe={recipe} />

      <div className="card">
        <h2>Hyperparameters</h2>
        {details ? (
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
                {Object.entries(details).map(([k, d]) => (
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
            <button type="button" className="secondary small" data-testid="download-recipe-yaml" disabled={!recipe} onClick={() => save(jobFile("/v1/fine_tuning/jobs/{job_id}/recipe", { format: "yaml" }), `${id}-recipe.yaml`)}>
              Download YAML
            </button>
            <button type="button" className="secondary small" disabled={!recipe} onClick={() => save(jobFile("/v1/fine_tuning/jobs/{job_id}/recipe"), `${id}-recipe.json`)}>
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
        <PagedTable
          list={staticList(checkpoints)}
          testId="checkpoints-table"
          empty={<p className="muted">No checkpoints yet.</p>}
          columns={[
            { header: "Checkpoint", cell: (c) => c.id, className: "mono small" },
            { header: "Step", cell: (c) => c.step_number, className: "num" },
            {
              header: "Metrics",
              className: "small mono",
              cell: (c) =>
                Object.entries(c.metrics ?? {})
                  .map(([k, v]) => `${k}=${fmtNum(v)}`)
                  .join("  "),
            },
          ]}
        />
        <CheckpointModels checkpoints={checkpoints} />
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
