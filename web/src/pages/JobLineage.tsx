// The job page's lineage parts: pause/resume, the checkpoints as models
// (each opens in the playground) and the fine-tune a job continued.
import { Link } from "react-router-dom";
import { ErrorBox } from "../common";
import { useJobControl } from "../mutations";
import type { CheckpointObject, JobObject, ModelObject } from "../types";
import { jobProgress } from "../types";

/** Pause (a running or queued job) and Resume (a paused one). */
export function PauseResumeButtons({ job }: { job: JobObject }) {
  const control = useJobControl();
  // Asked to pause while a worker runs it (a job that finished meanwhile is not "pausing").
  const pausing = job.status === "running" && (jobProgress(job)?.pause_requested ?? false);
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
            <span className="mono small">{c.fine_tuned_model_checkpoint}</span> <PlaygroundLink model={c.fine_tuned_model_checkpoint} testId="checkpoint-playground-link" />{" "}
            <FineTuneFurtherLink model={c.fine_tuned_model_checkpoint} />
          </li>
        ))}
      </ul>
    </div>
  );
}

/** What this job continues: the parent fine-tune (or checkpoint), its job, and the root base model. */
export function JobParentInfo({ job }: { job: JobObject }) {
  if (!job.parent) return null;
  return (
    <div data-testid="job-parent">
      <div className="muted small">Continues</div>
      <span className="mono small">{job.parent.model}</span>{" "}
      {job.parent.fine_tuning_job && (
        <Link to={`/jobs/${job.parent.fine_tuning_job}`} className="mono small" data-testid="parent-job-link">
          {job.parent.fine_tuning_job}
          {job.parent.checkpoint_step != null ? ` (step ${job.parent.checkpoint_step})` : ""}
        </Link>
      )}
      <div className="muted small">on base model {job.base_model}</div>
    </div>
  );
}

/** The New job page's base model choices: base models, then the user's fine-tunes
 * (a job on one trains its adapter on), and a checkpoint model when it is the one picked. */
export function baseChoices(models: ModelObject[] | undefined, picked: string | null): ModelObject[] | undefined {
  return models?.filter((m) => m.kind === "base" || m.kind === "fine-tune" || m.id === picked);
}

/** A link to the New job page with `model` as the base: a fine-tune of this fine-tune. */
export function FineTuneFurtherLink({ model, testId }: { model: string; testId?: string }) {
  return (
    <Link to={`/jobs/new?model=${encodeURIComponent(model)}`} className="button secondary small" data-testid={testId}>
      Fine-tune further
    </Link>
  );
}
