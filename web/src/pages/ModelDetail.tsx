// A fine-tune's page: its model card (rendered from GET .../model_card), the
// forms it can be downloaded in (each through a signed link, so the browser
// streams it to disk; merged weights and GGUF show "preparing" while a worker
// makes them), and who it is shared with.
import { useEffect, useMemo, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { Link, useParams } from "react-router-dom";
import { apiUrl, raw, text } from "../api";
import { ErrorBox, StatusChip } from "../common";
import { useLinkedDownload, type LinkAnswer } from "../links";
import { renderCard, splitFrontMatter } from "../modelCard";
import { jobQuery, queryKeys } from "../queries";
import ModelSharing from "./ModelSharing";

const CURVES = "training_curves.png";

/** A download through a signed link; while its file is being made, says so and waits. */
export function LinkedDownloadButton({ path, label, testId, secondary = true }: { path: string; label: string; testId: string; secondary?: boolean }) {
  const [preparing, setPreparing] = useState<(LinkAnswer & { kind: "preparing" }) | null>(null);
  const download = useLinkedDownload(setPreparing);
  const busy = download.isPending;
  const state = preparing && busy ? `Preparing… ${preparing.stage ?? preparing.status ?? ""}`.trim() : busy ? "Starting…" : null;
  return (
    <span className="row">
      <button
        type="button"
        className={secondary ? "secondary" : undefined}
        data-testid={testId}
        disabled={busy}
        onClick={() => {
          setPreparing(null);
          download.mutate(path);
        }}
      >
        {label}
      </button>
      {state && (
        <span className="muted small" data-testid={`${testId}-state`}>
          {state}
        </span>
      )}
      <ErrorBox error={download.error} testId={`${testId}-error`} />
    </span>
  );
}

/** The forms a succeeded fine-tune leaves the service in. */
function ExportChoices({ jobId, full }: { jobId: string; full: boolean }) {
  const job = { job_id: jobId };
  return (
    <div className="card" data-testid="export-choices">
      <h2>Download</h2>
      <table>
        <tbody>
          {!full && (
            <tr>
              <td>PEFT adapter (zip, with this card)</td>
              <td>
                <LinkedDownloadButton path={apiUrl("/v1/fine_tuning/jobs/{job_id}/adapter", job)} label="Adapter" testId="export-adapter" secondary={false} />
              </td>
            </tr>
          )}
          <tr>
            <td>Merged weights (safetensors, loads with transformers)</td>
            <td>
              <LinkedDownloadButton path={apiUrl("/v1/fine_tuning/jobs/{job_id}/merged", job)} label="Merged weights" testId="export-merged" />
            </td>
          </tr>
          <tr>
            <td>GGUF for llama.cpp and Ollama (with a Modelfile)</td>
            <td className="row wrap">
              {(["f16", "q8_0", "q4_k_m"] as const).map((quantization) => (
                <LinkedDownloadButton
                  key={quantization}
                  path={apiUrl("/v1/fine_tuning/jobs/{job_id}/gguf", job, { quantization })}
                  label={quantization}
                  testId={`export-gguf-${quantization}`}
                />
              ))}
            </td>
          </tr>
          <tr>
            <td>Reproducibility bundle (weights, recipe, card, metrics, events, evaluation, SHA256SUMS)</td>
            <td className="row wrap">
              <LinkedDownloadButton path={apiUrl("/v1/fine_tuning/jobs/{job_id}/bundle", job)} label="Bundle" testId="export-bundle" />
              <LinkedDownloadButton
                path={apiUrl("/v1/fine_tuning/jobs/{job_id}/bundle", job, { include_data: true })}
                label="Bundle with the data"
                testId="export-bundle-data"
              />
            </td>
          </tr>
        </tbody>
      </table>
    </div>
  );
}

/** The card's curves, fetched with the key, as an object URL (revoked when left). */
function useCurvesUrl(jobId: string, enabled: boolean): string | null {
  const png = useQuery({
    queryKey: [...queryKeys.jobs.detail(jobId), "model-card", CURVES],
    queryFn: async () => (await raw(apiUrl("/v1/fine_tuning/jobs/{job_id}/model_card/training_curves.png", { job_id: jobId }))).blob(),
    enabled,
    staleTime: Infinity,
  });
  const [url, setUrl] = useState<string | null>(null);
  useEffect(() => {
    if (!png.data) return;
    const made = URL.createObjectURL(png.data);
    setUrl(made);
    return () => URL.revokeObjectURL(made);
  }, [png.data]);
  return url;
}

function ModelCard({ jobId }: { jobId: string }) {
  const card = useQuery({
    queryKey: [...queryKeys.jobs.detail(jobId), "model-card"],
    queryFn: () => text(apiUrl("/v1/fine_tuning/jobs/{job_id}/model_card", { job_id: jobId })),
  });
  const curves = useCurvesUrl(jobId, !!card.data);
  const parts = useMemo(() => (card.data ? splitFrontMatter(card.data) : null), [card.data]);
  const html = useMemo(() => (parts ? renderCard(parts.body, curves ? { [CURVES]: curves } : {}) : ""), [parts, curves]);
  if (card.error) return <ErrorBox error={card.error} />;
  if (!parts) return <p className="muted">Loading the model card…</p>;
  return (
    <div className="card">
      <div className="row between">
        <h2>Model card</h2>
        <span className="muted small">README.md, as in the downloads</span>
      </div>
      {parts.frontMatter && (
        <pre className="mono small" data-testid="model-card-meta">
          {parts.frontMatter}
        </pre>
      )}
      {/* Safe: markdown-it with raw HTML off; images only the card's own PNG (modelCard.ts). */}
      <div className="model-card" data-testid="model-card" dangerouslySetInnerHTML={{ __html: html }} />
    </div>
  );
}

export default function ModelDetailPage() {
  const { jobId = "" } = useParams();
  const { data: job, error } = useQuery(jobQuery(jobId));
  if (!job) return error ? <ErrorBox error={error} /> : <p className="muted">Loading…</p>;
  const name = job.fine_tuned_model ?? job.id;
  return (
    <>
      <div className="row between wrap">
        <h1 className="mono" data-testid="model-name">
          {name}
        </h1>
        <StatusChip status={job.status} />
      </div>
      <p className="muted">
        Base model <span className="mono">{job.model}</span> · trained by job <Link to={`/jobs/${job.id}`}>{job.id}</Link>
      </p>
      {job.status !== "succeeded" ? (
        <p className="muted" data-testid="model-not-ready">
          The model, its card and its downloads exist once the job has succeeded.
        </p>
      ) : (
        <>
          <ExportChoices jobId={job.id} full={job.hyperparameters.adapter === "full"} />
          <ModelSharing model={name} />
          <ModelCard jobId={job.id} />
        </>
      )}
    </>
  );
}
