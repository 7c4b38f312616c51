// Moving fine-tuning jobs from a hosted provider (POST /v1/moves/plan,
// POST /v1/moves, GET /v1/moves, POST /v1/moves/compare): which files still
// need the user's local copy and what the move request carries. Pure helpers,
// unit-tested in moves.test.ts.
import type { Schemas } from "./types";

export type MovePlan = Schemas["PlanObject"];
export type MovePlanJob = Schemas["PlannedJob"];
export type MoveFile = Schemas["PlannedFile"];
export type MoveFileState = MoveFile["state"];
export type MovedJobRow = Schemas["MoveListItem"];

/** What each state means to the user. */
export const FILE_STATE_TEXT: Record<MoveFileState, string> = {
  downloadable: "will be downloaded from the provider",
  needs_upload: "the provider does not give it back: upload your copy",
  matched: "matched to a file you uploaded",
};

/** A job may be chosen when it moves as it stands, or once the user uploads the files the provider keeps. */
export const choosable = (job: MovePlanJob) => job.movable || job.files.some((f) => f.state === "needs_upload");

/** The files of the chosen jobs that still need a local copy (none uploaded for them in this session). */
export function filesToUpload(jobs: MovePlanJob[], uploads: Record<string, string>): MoveFile[] {
  const seen = new Set<string>();
  const out: MoveFile[] = [];
  for (const job of jobs)
    for (const f of job.files)
      if (f.state === "needs_upload" && !uploads[f.provider_file_id] && !seen.has(f.provider_file_id)) {
        seen.add(f.provider_file_id);
        out.push(f);
      }
  return out;
}

/** The body of POST /v1/moves: the chosen jobs, and the uploads for their files only. */
export function moveRequest(connection: string, baseModel: string, jobs: MovePlanJob[], uploads: Record<string, string>): Schemas["MoveRequest"] {
  const needed = new Set(jobs.flatMap((j) => j.files.map((f) => f.provider_file_id)));
  const used = Object.fromEntries(Object.entries(uploads).filter(([provider]) => needed.has(provider)));
  return {
    connection,
    base_model: baseModel,
    jobs: jobs.map((j) => j.provider_job_id),
    ...(Object.keys(used).length ? { uploads: used } : {}),
  };
}

/** A mapping's value as shown in the table. */
export function mappingValue(v: unknown): string {
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
