// The job page's lineage parts: pause/resume, the checkpoints as models
// (each opens in the playground) and the fine-tune a job continued.
import { Link } from "react-router-dom";
import { ErrorBox } from "../common";
import { useJobControl } from "../mutations";
import type { CheckpointObject, JobObject } from "../types";
import { jobProgress } from "../types";

/** Pause (a running or queued job) and Resume (a paused one). */
export function PauseResumeButtons({ job }: { job: JobObject }) {
  const control = useJobControl();
  const pausing = jobProgress(job)?.pause_requested ?? false;
  const canPause = ["validating_files", "queued", "running"].includes(job.status) && !pausing;
  return (
    <>
      {canPause && (
        <button type="button" className="secondary" data-testid="pause-job" disabled={control.isPending} onClick={() => control.mutate({ id: job.id, action: "pause" })}>
          Pause
        </button>
      )}
      {pausing && (
        <span className="muted small" data-testid="pausing">
          Pausing: the worker saves a checkpoint at its next step…
        </span>
      )}
      {(job.status === "paused" || pausing) && (
        <button type="button" data-testid="resume-job" disabled={control.isPending} onClick={() => control.mutate({ id: job.id, action: "resume" })}>
          Resume
        </button>
      )}
      <ErrorBox error={control.error} testId="pause-resume-error" />
    </>
  );
}

/** A link that opens the playground with `model` chosen. */
export function PlaygroundLink({ model, testId }: { model: string; testId?: string }) {
  return (
    <Link to={`/compare?playground=${encodeURIComponent(model)}`} className="button secondary small" data-testid={testId}>
      Open in playground
    </Link>
  );
}

/** Every checkpoint is a model (`…:ckpt-step-N`): listed with a playground link each. */
export function CheckpointModels({ checkpoints }: { checkpoints: CheckpointObject[] }) {
  if (checkpoints.length === 0) return null;
  const ordered = [...checkpoints].sort((a, b) => a.step_number - b.step_number);
  return (
    <div data-testid="checkpoint-models">
      <h3>Checkpoint models</h3>
      <p className="muted small">Each checkpoint answers chat, batches and evaluations like a fine-tune, by this name.</p>
      <ul className="plain">
        {ordered.map((c) => (
          <li key={c.id} data-testid="checkpoint-model" data-step={c.step_number}>
            <span className="mono small">{c.fine_tuned_model_checkpoint}</span> <PlaygroundLink model={c.fine_tuned_model_checkpoint} testId="checkpoint-playground-link" />
          </li>
        ))}
      </ul>
    </div>
  );
}
