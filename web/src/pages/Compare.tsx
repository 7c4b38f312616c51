import { useEffect, useMemo, useState, type FormEvent } from "react";
import { useQuery } from "@tanstack/react-query";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { apiUrl, request } from "../api";
import { ErrorBox, fmtTime, ProgressBar, StatusChip } from "../common";
import { bestPerColumn } from "../lib";
import { useCreateEvaluation, useDownload } from "../mutations";
import { PagedTable, usePagedList } from "../PagedTable";
import { ModelPicker, ModelSelect, useModelChoices } from "../ModelChoices";
import { describeEstimate, toRequest, type EvaluationForm } from "../evaluationAnalysis";
import { evaluationEstimateQuery, evaluationPagesQuery, evaluationQuery, fileChoicesQuery, isEvaluationActive } from "../queries";
import type { ChatMessage, EvaluationObject, Schemas } from "../types";
import { EvaluationItems, Leaderboard, ModelName } from "./EvaluationAnalysis";

function fmt(v: unknown): string {
  if (typeof v === "number") return (Math.round(v * 10000) / 10000).toString();
  if (v === null || v === undefined) return "—";
  return String(v);
}

function EvaluationView({ id }: { id: string }) {
  const { data: ev, error } = useQuery(evaluationQuery(id));
  const dl = useDownload();
  const active = !!ev && isEvaluationActive(ev);

  const best = useMemo(() => bestPerColumn(ev?.results ?? {}), [ev?.results]);
  if (!ev) return error ? <ErrorBox error={error} /> : <p className="muted">Loading…</p>;
  const metricNames = Array.from(new Set(Object.values(ev.results).flatMap((r) => Object.keys(r ?? {}))));
  const total = (ev.progress.items_total ?? 0) * ev.models.length;
  const predictionsUrl = (format: "csv" | "jsonl") => apiUrl("/v1/evaluations/{evaluation_id}/predictions", { evaluation_id: id }, { format });

  return (
    <div className="card" data-testid="evaluation-view">
      <div className="row between">
        <h2 className="mono">{ev.id}</h2>
        <StatusChip status={ev.status} />
      </div>
      <p className="muted small">
        file {ev.file_id} · split {ev.split} · created {fmtTime(ev.created_at)}
        {ev.fine_tuning_job_id && (
          <>
            {" "}
            · job <Link to={`/jobs/${ev.fine_tuning_job_id}`}>{ev.fine_tuning_job_id}</Link>
          </>
        )}
      </p>
      <ErrorBox error={error} />
      {ev.error && (
        <div className="error" role="alert">
          {ev.error.message} ({ev.error.code})
        </div>
      )}
      {active && (
        <div>
          <ProgressBar value={total ? ev.progress.items_done / total : null} label="Evaluation progress" testId="evaluation-progress" />
          <span className="muted small">
            {ev.progress.items_done} of {total || "?"} predictions
          </span>
        </div>
      )}
      <h3>Metrics</h3>
      {metricNames.length === 0 ? (
        <p className="muted">Metrics appear as each model finishes.</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="metrics-table">
            <thead>
              <tr>
                <th>Model</th>
                {metricNames.map((m) => (
                  <th key={m}>{m}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {ev.models.map((model) => (
                <tr key={model}>
                  <td>
                    <ModelName model={model} />
                  </td>
                  {metricNames.map((m) => {
                    const isBest = best[m]?.includes(model);
                    return (
                      <td key={m} className={`num${isBest ? " best" : ""}`} data-best={isBest ? "true" : undefined} title={isBest ? "best" : undefined}>
                        {fmt(ev.results[model]?.[m])}
                      </td>
                    );
                  })}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {ev.judges && ev.judges.length > 0 && (
        <p className="muted small" data-testid="evaluation-judges">
          Judges: {ev.judges.map((j) => `${j.kind} by ${j.model}`).join(" · ")}
        </p>
      )}
      <Leaderboard ratings={ev.ratings} pairwise={ev.pairwise} />
      {ev.status === "succeeded" && (
        <>
          <div className="row wrap">
            <span className="muted small">Every prediction, score and judgment:</span>
            <button
              type="button"
              className="secondary small"
              data-testid="download-predictions-csv"
              onClick={() => dl.mutate({ path: predictionsUrl("csv"), filename: `${id}-predictions.csv` })}
            >
              CSV
            </button>
            <button
              type="button"
              className="secondary small"
              data-testid="download-predictions-jsonl"
              onClick={() => dl.mutate({ path: predictionsUrl("jsonl"), filename: `${id}-predictions.jsonl` })}
            >
              JSONL
            </button>
          </div>
          <ErrorBox error={dl.error} />
          <EvaluationItems evaluationId={id} models={ev.models} tagCounts={ev.tag_counts} />
        </>
      )}
    </div>
  );
}

/** `value`, once it has not changed for `ms` (the estimate is asked for when the form rests). */
function useDebounced<T>(value: T, ms = 400): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return settled;
}

/** What the run will call (POST /v1/evaluations/estimate), shown before it runs. */
function EstimateLine({ body }: { body: Schemas["CreateEvaluationRequest"] | null }) {
  // Debounced by value: the body is a new object at every render.
  const settled = useDebounced(body ? JSON.stringify(body) : null);
  const estimate = useQuery(evaluationEstimateQuery(settled ? JSON.parse(settled) : null));
  if (!body) return null;
  return (
    <div className="estimate" data-testid="evaluation-estimate">
      {estimate.data ? (
        <span>
          Estimated: <strong>{describeEstimate(estimate.data)}</strong>
        </span>
      ) : estimate.error ? (
        <ErrorBox error={estimate.error} testId="estimate-error" />
      ) : (
        <span className="muted">Estimating…</span>
      )}
    </div>
  );
}

function Evaluations() {
  const { id } = useParams();
  const nav = useNavigate();
  const { choices, error: modelsError, unreachable } = useModelChoices();
  const files = useQuery(fileChoicesQuery("fine-tune"));
  // The user's pick, else the newest fine-tune file.
  const [pickedFile, setFileId] = useState<string | null>(null);
  const [form, setForm] = useState<Omit<EvaluationForm, "fileId">>({
    split: "test",
    limit: "",
    models: [],
    referenceJudge: false,
    pairwiseJudge: false,
    judgeModel: "",
    rubric: "",
  });
  const set = (patch: Partial<typeof form>) => setForm((f) => ({ ...f, ...patch }));
  const fileId = pickedFile ?? files.data?.[0]?.id ?? "";
  const create = useCreateEvaluation();
  const list = usePagedList(evaluationPagesQuery());
  const judged = form.referenceJudge || form.pairwiseJudge;
  let body: Schemas["CreateEvaluationRequest"] | null = null;
  let formError: unknown = null;
  try {
    if (fileId && form.models.length) body = toRequest({ ...form, fileId });
  } catch (err) {
    formError = err;
  }

  function run(e: FormEvent) {
    e.preventDefault();
    if (body) create.mutate(body, { onSuccess: (ev) => nav(`/compare/${ev.id}`) });
  }

  return (
    <>
      {id && <EvaluationView key={id} id={id} />}
      <form className="card form" onSubmit={run} aria-label="New evaluation" data-testid="new-evaluation-form">
        <h2>New evaluation</h2>
        <ErrorBox error={modelsError} />
        {files.data && files.data.length === 0 && (
          <p className="empty">
            No fine-tune files to evaluate on. <Link to="/datasets">Upload one</Link> first.
          </p>
        )}
        <label htmlFor="eval-file">Items from file</label>
        <select id="eval-file" data-testid="eval-file" value={fileId} onChange={(e) => setFileId(e.target.value)}>
          {(files.data ?? []).map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <label htmlFor="eval-split">Split</label>
        <select id="eval-split" data-testid="eval-split" value={form.split} onChange={(e) => set({ split: e.target.value as EvaluationObject["split"] })}>
          <option value="test">test</option>
          <option value="train">train</option>
          <option value="all">all</option>
        </select>
        <label htmlFor="eval-limit">At most this many items (optional)</label>
        <input id="eval-limit" data-testid="eval-limit" value={form.limit} onChange={(e) => set({ limit: e.target.value })} inputMode="numeric" />
        {choices && (
          <ModelPicker
            choices={choices}
            unreachable={unreachable}
            selected={form.models}
            onChange={(models) => set({ models })}
            testId="eval-models"
            legend="Models to compare (1–8; external ones through your connections)"
          />
        )}
        <fieldset className="model-picker" data-testid="eval-judges">
          <legend>LLM judges (optional; supervised metrics are always computed)</legend>
          <label className="check">
            <input type="checkbox" data-testid="judge-reference" checked={form.referenceJudge} onChange={(e) => set({ referenceJudge: e.target.checked })} />
            Reference judge: a 1–5 score with a one-line rationale against the reference answer
          </label>
          <label className="check">
            <input type="checkbox" data-testid="judge-pairwise" checked={form.pairwiseJudge} onChange={(e) => set({ pairwiseJudge: e.target.checked })} />
            Pairwise judge: each pair of models per item, in both orders; gives ratings with intervals
          </label>
          {judged && choices && (
            <>
              <label htmlFor="judge-model">Judge model</label>
              <ModelSelect id="judge-model" testId="judge-model" choices={choices} value={form.judgeModel} onChange={(judgeModel) => set({ judgeModel })} />
            </>
          )}
          {form.referenceJudge && (
            <>
              <label htmlFor="judge-rubric">Rubric of the reference judge (optional; empty: the default rubric)</label>
              <textarea
                id="judge-rubric"
                data-testid="judge-rubric"
                rows={3}
                value={form.rubric}
                onChange={(e) => set({ rubric: e.target.value })}
                placeholder="e.g. 5: same meaning as the reference; 1: wrong or off-topic. Ignore style."
              />
            </>
          )}
        </fieldset>
        <EstimateLine body={body} />
        <button type="submit" data-testid="run-evaluation" disabled={create.isPending || !body}>
          {create.isPending ? "Starting…" : "Run evaluation"}
        </button>
        <ErrorBox error={create.error ?? formError ?? files.error} testId="evaluation-error" />
      </form>
      <div className="card">
        <h2>Evaluations</h2>
        <PagedTable
          list={list}
          testId="evaluations-list"
          rowTestId="evaluation-row"
          empty={<p className="empty">No evaluations yet. Pick a file and models above; every successful fine-tuning job also gets one automatically.</p>}
          columns={[
            {
              header: "Evaluation",
              cell: (e) => (
                <Link to={`/compare/${e.id}`} className="mono small">
                  {e.id}
                </Link>
              ),
            },
            { header: "Status", cell: (e) => <StatusChip status={e.status} /> },
            { header: "Models", cell: (e) => e.models.join(" vs "), className: "muted small" },
          ]}
        />
      </div>
    </>
  );
}

interface Answer {
  status: "pending" | "done" | "error";
  text?: string;
  error?: unknown;
  ms?: number;
}

function Playground({ initial = [] }: { initial?: string[] }) {
  const { choices, error: modelsError, unreachable } = useModelChoices();
  const [system, setSystem] = useState("");
  const [prompt, setPrompt] = useState("");
  const [picked, setPicked] = useState<string[]>(initial);
  const [maxTokens, setMaxTokens] = useState("256");
  const [temperature, setTemperature] = useState("0");
  const [answers, setAnswers] = useState<Record<string, Answer>>({});
  const [order, setOrder] = useState<string[]>([]);
  const [formError, setFormError] = useState<unknown>(null);

  async function send(e: FormEvent) {
    e.preventDefault();
    setFormError(null);
    const mt = Number(maxTokens);
    const temp = Number(temperature);
    if (!Number.isInteger(mt) || mt < 1) return setFormError(new Error("max_tokens must be a positive integer"));
    if (!Number.isFinite(temp) || temp < 0) return setFormError(new Error("temperature must be a number ≥ 0"));
    const messages: ChatMessage[] = [...(system.trim() ? [{ role: "system" as const, content: system }] : []), { role: "user", content: prompt }];
    const targets = [...picked];
    setOrder(targets);
    setAnswers(Object.fromEntries(targets.map((m) => [m, { status: "pending" } as Answer])));
    await Promise.all(
      targets.map(async (model) => {
        const t0 = performance.now();
        try {
          const r = await request("post", "/v1/chat/completions", { json: { model, messages, max_tokens: mt, temperature: temp } });
          const text = r.choices?.[0]?.message?.content ?? "";
          setAnswers((a) => ({ ...a, [model]: { status: "done", text, ms: performance.now() - t0 } }));
        } catch (err) {
          setAnswers((a) => ({ ...a, [model]: { status: "error", error: err } }));
        }
      }),
    );
  }
  const pending = Object.values(answers).some((a) => a.status === "pending");

  return (
    <>
      <form className="card form" onSubmit={send} aria-label="Playground" data-testid="playground-form">
        <h2>Playground</h2>
        <p className="muted">One conversation sent to several models at once.</p>
        <ErrorBox error={modelsError} />
        <label htmlFor="pg-system">System prompt (optional)</label>
        <textarea id="pg-system" data-testid="playground-system" rows={2} value={system} onChange={(e) => setSystem(e.target.value)} />
        <label htmlFor="pg-prompt">User message</label>
        <textarea id="pg-prompt" data-testid="playground-prompt" rows={4} value={prompt} onChange={(e) => setPrompt(e.target.value)} />
        <div className="row wrap">
          <label htmlFor="pg-max-tokens">max_tokens</label>
          <input id="pg-max-tokens" className="narrow" value={maxTokens} onChange={(e) => setMaxTokens(e.target.value)} />
          <label htmlFor="pg-temperature">temperature</label>
          <input id="pg-temperature" className="narrow" value={temperature} onChange={(e) => setTemperature(e.target.value)} />
        </div>
        {choices && (
          <ModelPicker choices={choices} unreachable={unreachable} selected={picked} onChange={setPicked} testId="playground-models" legend="Models (external ones through your connections)" />
        )}
        <button type="submit" data-testid="playground-send" disabled={pending || !prompt.trim() || picked.length === 0}>
          {pending ? "Waiting for answers…" : "Send"}
        </button>
        <ErrorBox error={formError} />
      </form>
      {order.length > 0 && (
        <div className="answers" data-testid="playground-answers">
          {order.map((m) => {
            const a = answers[m];
            return (
              <section key={m} className="card answer" data-testid="playground-answer" data-model={m} aria-label={`Answer from ${m}`}>
                <h3>
                  <ModelName model={m} />
                </h3>
                {a?.status === "pending" && <p className="muted">Generating… (the first request loads the model)</p>}
                {a?.status === "done" && (
                  <>
                    <div className="pre">{a.text}</div>
                    <p className="muted small">{Math.round((a.ms ?? 0) / 100) / 10} s</p>
                  </>
                )}
                {a?.status === "error" && <ErrorBox error={a.error} />}
              </section>
            );
          })}
        </div>
      )}
    </>
  );
}

export default function ComparePage() {
  // ?playground=MODEL (a job page's "Open in playground"): the playground, with that model chosen.
  const [params] = useSearchParams();
  const opened = params.getAll("playground");
  const [tab, setTab] = useState<"evaluations" | "playground">(opened.length ? "playground" : "evaluations");
  return (
    <>
      <h1>Compare</h1>
      <div role="tablist" className="tabs">
        <button type="button" role="tab" aria-selected={tab === "evaluations"} data-testid="tab-evaluations" onClick={() => setTab("evaluations")}>
          Evaluations
        </button>
        <button type="button" role="tab" aria-selected={tab === "playground"} data-testid="tab-playground" onClick={() => setTab("playground")}>
          Playground
        </button>
      </div>
      {tab === "evaluations" ? <Evaluations /> : <Playground initial={opened} />}
    </>
  );
}
