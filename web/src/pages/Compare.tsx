import { useCallback, useEffect, useMemo, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, download, saveBlob, text } from "../api";
import { ErrorBox, fmtTime, LoadMore, ProgressBar, StatusChip, usePaged, usePoll } from "../common";
import { bestPerColumn, FINAL_JOB_STATUSES, formatError, modelsDisagree, parseJsonl, sameAnswer, toCsv } from "../lib";
import type { FileObj } from "./Datasets";
import type { ModelObj } from "./Models";

interface Evaluation {
  id: string;
  status: string;
  file_id: string;
  split: string;
  models: string[];
  metrics: string[];
  created_at: number;
  finished_at: number | null;
  fine_tuning_job_id: string | null;
  progress: { items_total: number | null; items_done: number; items_skipped: number | null; attempt: number };
  results: Record<string, Record<string, number | null>>;
  error: { code: string; message: string } | null;
}

function useModels() {
  const [models, setModels] = useState<ModelObj[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api<{ data: ModelObj[] }>("/v1/models").then((r) => setModels(r.data), setError);
  }, []);
  return { models, error };
}

function ModelPicker({
  models,
  selected,
  onChange,
  testId,
  legend,
}: {
  models: ModelObj[];
  selected: string[];
  onChange: (s: string[]) => void;
  testId: string;
  legend: string;
}) {
  return (
    <fieldset data-testid={testId} className="model-picker">
      <legend>{legend}</legend>
      {models.map((m) => (
        <label key={m.id} className="check">
          <input
            type="checkbox"
            checked={selected.includes(m.id)}
            onChange={(e) => onChange(e.target.checked ? [...selected, m.id] : selected.filter((x) => x !== m.id))}
          />
          <span className="mono small">{m.id}</span> <span className="muted small">({m.kind})</span>
        </label>
      ))}
    </fieldset>
  );
}

function fmt(v: unknown): string {
  if (typeof v === "number") return (Math.round(v * 10000) / 10000).toString();
  if (v === null || v === undefined) return "—";
  return String(v);
}

function promptText(p: unknown): string {
  if (typeof p === "string") return p;
  if (Array.isArray(p)) return p.map((m: any) => `${m.role}: ${m.content ?? ""}`).join("\n");
  return JSON.stringify(p);
}

function EvaluationView({ id }: { id: string }) {
  const [ev, setEv] = useState<Evaluation | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [rows, setRows] = useState<Record<string, unknown>[] | null>(null);
  const [rowsError, setRowsError] = useState<unknown>(null);
  const [onlyDisagree, setOnlyDisagree] = useState(false);
  const [actionError, setActionError] = useState<unknown>(null);

  const refresh = useCallback(async () => {
    try {
      setEv(await api<Evaluation>(`/v1/evaluations/${id}`));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [id]);
  useEffect(() => {
    setEv(null);
    setRows(null);
    refresh();
  }, [refresh]);
  const active = !!ev && !FINAL_JOB_STATUSES.has(ev.status);
  usePoll(refresh, 2000, active);

  useEffect(() => {
    if (ev?.status !== "succeeded" || rows) return;
    text(`/v1/evaluations/${id}/predictions?format=jsonl`)
      .then((t) => setRows(parseJsonl(t).rows as Record<string, unknown>[]))
      .catch(setRowsError);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [ev?.status, id]);

  const best = useMemo(() => bestPerColumn(ev?.results ?? {}), [ev?.results]);
  if (!ev) return error ? <ErrorBox error={error} /> : <p className="muted">Loading…</p>;
  const metricNames = Array.from(new Set(Object.values(ev.results).flatMap((r) => Object.keys(r ?? {}))));
  const total = (ev.progress.items_total ?? 0) * ev.models.length;
  const shown = rows ? (onlyDisagree ? rows.filter((r) => modelsDisagree(r, ev.models)) : rows) : [];

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
                  <td className="mono small">{model}</td>
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
      {ev.status === "succeeded" && (
        <>
          <div className="row wrap between">
            <h3>Items</h3>
            <div className="row wrap">
              <label className="check">
                <input type="checkbox" data-testid="disagree-filter" checked={onlyDisagree} onChange={(e) => setOnlyDisagree(e.target.checked)} />
                Only items where models disagree
              </label>
              <button
                type="button"
                className="secondary small"
                data-testid="download-predictions-csv"
                onClick={() => download(`/v1/evaluations/${id}/predictions?format=csv`, `${id}-predictions.csv`).catch(setActionError)}
              >
                CSV
              </button>
              <button
                type="button"
                className="secondary small"
                data-testid="download-predictions-jsonl"
                onClick={() => download(`/v1/evaluations/${id}/predictions?format=jsonl`, `${id}-predictions.jsonl`).catch(setActionError)}
              >
                JSONL
              </button>
              {onlyDisagree && rows && (
                <button
                  type="button"
                  className="secondary small"
                  onClick={() => saveBlob(new Blob([toCsv(shown)], { type: "text/csv" }), `${id}-disagreements.csv`)}
                >
                  CSV of shown
                </button>
              )}
            </div>
          </div>
          <ErrorBox error={actionError} />
          {rowsError ? <div className="error" role="alert">{formatError(rowsError)}</div> : null}
          {!rows && !rowsError && <p className="muted">Loading predictions…</p>}
          {rows && (
            <>
              <p className="muted small">
                {shown.length} of {rows.length} items
              </p>
              {shown.length === 0 && (
                <p className="empty" data-testid="items-empty">
                  {onlyDisagree
                    ? ev.models.length < 2
                      ? "Disagreement needs two models or more; this evaluation has one. Untick the filter to see every item."
                      : "All models gave the same answer on every item. Untick the filter to see them."
                    : "This evaluation has no items."}
                </p>
              )}
              <div className="table-wrap">
                <table data-testid="items-table" className="items">
                  <thead>
                    <tr>
                      <th>#</th>
                      <th>Prompt</th>
                      <th>Reference</th>
                      {ev.models.map((m) => (
                        <th key={m} className="mono small">
                          {m}
                        </th>
                      ))}
                    </tr>
                  </thead>
                  <tbody>
                    {shown.map((r, i) => (
                      <tr key={String(r.item ?? i)} data-testid="item-row" data-disagree={modelsDisagree(r, ev.models)}>
                        <td className="num">{String(r.item ?? i)}</td>
                        <td className="pre">{promptText(r.prompt)}</td>
                        <td className="pre">{String(r.reference ?? "")}</td>
                        {ev.models.map((m) => (
                          <td
                            key={m}
                            className={`pre ${sameAnswer(r[m], r.reference) ? "answer-matches" : "answer-differs"}`}
                            title={sameAnswer(r[m], r.reference) ? "same as the reference" : "differs from the reference"}
                          >
                            {String(r[m] ?? "")}
                          </td>
                        ))}
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            </>
          )}
        </>
      )}
    </div>
  );
}

function Evaluations() {
  const { id } = useParams();
  const nav = useNavigate();
  const { models, error: modelsError } = useModels();
  const [files, setFiles] = useState<FileObj[] | null>(null);
  const [fileId, setFileId] = useState("");
  const [split, setSplit] = useState("test");
  const [limit, setLimit] = useState("");
  const [picked, setPicked] = useState<string[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const list = usePaged<Evaluation>("/v1/evaluations");
  const anyActive = list.items.some((e) => !FINAL_JOB_STATUSES.has(e.status));
  usePoll(
    async () => {
      const active = list.items.filter((e) => !FINAL_JOB_STATUSES.has(e.status));
      const fresh = await Promise.all(active.map((e) => api<Evaluation>(`/v1/evaluations/${e.id}`).catch(() => e)));
      const byId = new Map(fresh.map((e) => [e.id, e]));
      list.setItems((items) => items.map((e) => byId.get(e.id) ?? e));
    },
    3000,
    anyActive,
  );

  useEffect(() => {
    api<{ data: FileObj[] }>("/v1/files?purpose=fine-tune&limit=1000").then((r) => {
      setFiles(r.data);
      if (r.data[0]) setFileId(r.data[0].id);
    }, setError);
  }, []);

  async function run(e: FormEvent) {
    e.preventDefault();
    setError(null);
    const body: Record<string, unknown> = { file_id: fileId, split, models: picked };
    if (limit.trim()) body.limit = Number(limit);
    setBusy(true);
    try {
      const ev = await api<Evaluation>("/v1/evaluations", { json: body });
      list.setItems((items) => [ev, ...items]);
      nav(`/compare/${ev.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      {id && <EvaluationView key={id} id={id} />}
      <form className="card form" onSubmit={run} aria-label="New evaluation" data-testid="new-evaluation-form">
        <h2>New evaluation</h2>
        <ErrorBox error={modelsError} />
        {files && files.length === 0 && (
          <p className="empty">
            No fine-tune files to evaluate on. <Link to="/datasets">Upload one</Link> first.
          </p>
        )}
        <label htmlFor="eval-file">Items from file</label>
        <select id="eval-file" data-testid="eval-file" value={fileId} onChange={(e) => setFileId(e.target.value)}>
          {(files ?? []).map((f) => (
            <option key={f.id} value={f.id}>
              {f.filename} ({f.id})
            </option>
          ))}
        </select>
        <label htmlFor="eval-split">Split</label>
        <select id="eval-split" data-testid="eval-split" value={split} onChange={(e) => setSplit(e.target.value)}>
          <option value="test">test</option>
          <option value="train">train</option>
          <option value="all">all</option>
        </select>
        <label htmlFor="eval-limit">At most this many items (optional)</label>
        <input id="eval-limit" data-testid="eval-limit" value={limit} onChange={(e) => setLimit(e.target.value)} inputMode="numeric" />
        {models && <ModelPicker models={models} selected={picked} onChange={setPicked} testId="eval-models" legend="Models to compare (1–8)" />}
        <button type="submit" data-testid="run-evaluation" disabled={busy || !fileId || picked.length === 0}>
          {busy ? "Starting…" : "Run evaluation"}
        </button>
        <ErrorBox error={error} testId="evaluation-error" />
      </form>
      <div className="card">
        <h2>Evaluations</h2>
        <ErrorBox error={list.error} />
        {!list.loading && !list.error && list.items.length === 0 && (
          <p className="empty">No evaluations yet. Pick a file and models above; every successful fine-tuning job also gets one automatically.</p>
        )}
        <ul className="plain" data-testid="evaluations-list">
          {list.items.map((e) => (
            <li key={e.id}>
              <Link to={`/compare/${e.id}`} className="mono small">
                {e.id}
              </Link>{" "}
              <StatusChip status={e.status} /> <span className="muted small">{e.models.join(" vs ")}</span>
            </li>
          ))}
        </ul>
        <LoadMore hasMore={list.hasMore} loading={list.loading} onClick={list.loadMore} />
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

function Playground() {
  const { models, error: modelsError } = useModels();
  const [system, setSystem] = useState("");
  const [prompt, setPrompt] = useState("");
  const [picked, setPicked] = useState<string[]>([]);
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
    const messages = [...(system.trim() ? [{ role: "system", content: system }] : []), { role: "user", content: prompt }];
    const targets = [...picked];
    setOrder(targets);
    setAnswers(Object.fromEntries(targets.map((m) => [m, { status: "pending" } as Answer])));
    await Promise.all(
      targets.map(async (model) => {
        const t0 = performance.now();
        try {
          const r = await api<any>("/v1/chat/completions", { json: { model, messages, max_tokens: mt, temperature: temp } });
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
        {models && <ModelPicker models={models} selected={picked} onChange={setPicked} testId="playground-models" legend="Models" />}
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
                <h3 className="mono small">{m}</h3>
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
  const [tab, setTab] = useState<"evaluations" | "playground">("evaluations");
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
      {tab === "evaluations" ? <Evaluations /> : <Playground />}
    </>
  );
}
