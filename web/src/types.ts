// The API's objects, as generated from its OpenAPI schema (`npm run types`
// writes src/generated/openapi.ts from openapi.json). Nothing here restates a
// field the schema types; the refinements at the end only narrow fields that
// the schema leaves as free-form objects.
import type { components } from "./generated/openapi";

export type Schemas = components["schemas"];

export type FileObject = Schemas["FileObject"];
export type FileReport = Schemas["FileReport"];
export type JobObject = Schemas["JobObject"];
export type JobStatus = JobObject["status"];
export type CreateJobRequest = Schemas["CreateJobRequest"];
export type EventObject = Schemas["EventObject"];
export type CheckpointObject = Schemas["CheckpointObject"];
export type ModelObject = Schemas["ModelObject"];
export type EvaluationObject = Schemas["EvaluationObject"];
export type BatchObject = Schemas["BatchObject"];
export type ChatMessage = Schemas["ChatMessage"];
export type EvaluationItem = Schemas["EvaluationItem"];

/** An OpenAI cursor list page: every `ListPage_*` schema is one (checked below). */
export interface CursorPage<T> {
  data: T[];
  has_more: boolean;
  first_id?: string | null;
  last_id?: string | null;
}
type IsCursorPage<P extends CursorPage<unknown>> = P;
export type CursorPages = [
  IsCursorPage<Schemas["ListPage_FileObject_"]>,
  IsCursorPage<Schemas["ListPage_JobObject_"]>,
  IsCursorPage<Schemas["ListPage_EventObject_"]>,
  IsCursorPage<Schemas["ListPage_CheckpointObject_"]>,
  IsCursorPage<Schemas["ListPage_EvaluationObject_"]>,
  IsCursorPage<Schemas["ListPage_BatchObject_"]>,
  IsCursorPage<Schemas["ListPage_ConnectionObject_"]>,
];

// ---------------------------------------------------------------------------
// Refinements of fields the schema types as `{ [key: string]: unknown }`.

/** `JobObject.progress`. */
export interface JobProgress {
  step: number | null;
  total_steps: number | null;
  checkpoint_step: number | null;
  attempt: number;
  pause_requested?: boolean;
}

/** A value of `JobObject.hyperparameter_details` and of the preview's `hyperparameters`. */
export interface HyperparameterDetail {
  value: unknown;
  origin: string;
  reason: string | null;
}

/** The estimate of a run's peak memory (domain/jobs/memory.py): the preview's and the recipe's `memory.estimate`. */
export interface MemoryEstimate {
  peak_bytes: number;
  parts: Record<string, number>;
  gradient_checkpointing: boolean;
  device: string;
  adapter: string;
  measured_as: string;
  assumptions: string[];
}

/** A training worker's device, as it reported it when it started. */
export interface WorkerDevice {
  worker: string;
  queues: string[];
  device: string;
  name: string | null;
  total_memory_bytes: number | null;
}

/** The preview's `memory`: the estimate and whether it fits the largest reported device of its kind. */
export interface MemoryPreview {
  estimate: MemoryEstimate | null;
  fits: boolean | "unknown";
  device: WorkerDevice | null;
  reason: string;
  devices: WorkerDevice[];
}

/** The answer of `POST /v1/fine_tuning/jobs/preview`. */
export interface JobPreview {
  device: string;
  note: string;
  hyperparameters: Record<string, HyperparameterDetail>;
  memory?: MemoryPreview;
}

/** A row of `JobMetrics.data`. */
export interface MetricRow {
  step: number;
  epoch?: number;
  train_loss?: number | null;
  valid_loss?: number | null;
  learning_rate?: number | null;
  tokens_per_second?: number | null;
  trained_tokens?: number | null;
  // Peak memory (worker/training/memory.py): CUDA allocated / reserved since the step began, CPU peak RSS; the device's total.
  peak_memory_bytes?: number | null;
  peak_reserved_bytes?: number | null;
  device_memory_bytes?: number | null;
  // DPO jobs (worker/training/preference.py).
  train_chosen_reward?: number | null;
  train_rejected_reward?: number | null;
  train_reward_margin?: number | null;
  train_preference_accuracy?: number | null;
  valid_chosen_reward?: number | null;
  valid_rejected_reward?: number | null;
  valid_reward_margin?: number | null;
  valid_preference_accuracy?: number | null;
}

/** `FileObject.report` / `FileReport.report`: the upload's validation report. */
export interface DatasetReport {
  examples?: number;
  requests?: number;
  lines?: number;
  split?: { train: number; test: number; description?: string };
  duplicates?: { count: number };
  distinct_system_prompts?: number;
  examples_with_system_prompt?: number;
  estimated_tokens?: {
    min: number;
    mean: number;
    p95: number;
    max: number;
    total: number;
    method: string;
    histogram?: { min: number; max: number; count: number }[];
  };
  roles?: Record<string, number>;
  messages_per_example?: { min: number; mean: number; max: number };
  warnings?: string[];
}

/** An item of `BatchObject.errors.data`. */
export interface BatchError {
  message: string;
  line?: number | null;
}

export function batchErrors(batch: BatchObject): BatchError[] {
  return (batch.errors?.data ?? []) as unknown as BatchError[];
}

export function jobProgress(job: JobObject): JobProgress | null {
  return (job.progress as unknown as JobProgress | undefined) ?? null;
}

export function hyperparameterDetails(job: JobObject): Record<string, HyperparameterDetail> | null {
  return (job.hyperparameter_details as unknown as Record<string, HyperparameterDetail> | null) ?? null;
}

export function datasetReport(report: FileObject["report"] | FileReport["report"]): DatasetReport | null {
  return (report as unknown as DatasetReport | null | undefined) ?? null;
}
