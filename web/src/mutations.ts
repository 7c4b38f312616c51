// Everything that changes server state. Each mutation updates or invalidates
// the query keys it affects (queries.ts), so every page showing them follows.
import { useMutation, useQueryClient, type InfiniteData, type QueryClient, type QueryKey } from "@tanstack/react-query";
import { download, request, uploadFile } from "./api";
import { queryKeys } from "./queries";
import type { CreateJobRequest, CursorPage, Schemas } from "./types";

type WithId = { id: string };

/** A cached list: an array (a <select>'s choices, the models) or the pages of a cursor list. */
type CachedList<T> = T[] | InfiniteData<CursorPage<T>, unknown> | undefined;

function mapList<T extends WithId>(data: CachedList<T>, fn: (items: T[]) => T[]): CachedList<T> {
  if (!data) return data;
  if (Array.isArray(data)) return fn(data);
  if (Array.isArray(data.pages)) return { ...data, pages: data.pages.map((p) => ({ ...p, data: fn(p.data) })) };
  return data;
}

/** The cached list without the object `id` (both list shapes). */
export function withoutItem<T extends WithId>(data: CachedList<T>, id: string): CachedList<T> {
  return mapList(data, (items) => items.filter((x) => x.id !== id));
}

/** The cached list with `item` in place of the object of the same id. */
export function withItem<T extends WithId>(data: CachedList<T>, item: T): CachedList<T> {
  return mapList(data, (items) => items.map((x) => (x.id === item.id ? item : x)));
}

/** Show the change at once in every cached list under `key`, then refetch those lists in the background. */
function updateLists<T extends WithId>(qc: QueryClient, key: QueryKey, update: (data: CachedList<T>) => CachedList<T>) {
  qc.setQueriesData<CachedList<T>>({ queryKey: key }, update);
  void qc.invalidateQueries({ queryKey: key });
}

// ------------------------------------------------------------------- files

export function useUploadFile() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (v: { file: File; purpose: string; onProgress: (fraction: number) => void }) => uploadFile(v.file, v.purpose, v.onProgress),
    onSuccess: () => void qc.invalidateQueries({ queryKey: queryKeys.files.lists() }),
  });
}

export function useDeleteFile() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (id: string) => request("delete", "/v1/files/{file_id}", { path: { file_id: id } }),
    onSuccess: (_, id) => {
      qc.removeQueries({ queryKey: queryKeys.files.detail(id) });
      updateLists(qc, queryKeys.files.lists(), (data) => withoutItem(data, id));
    },
  });
}

// -------------------------------------------------------------------- jobs

export function useCreateJob() {
  const qc = useQueryClient();
  return useMutation({
    // The body is built inside, so a form error is this mutation's error too.
    mutationFn: (body: () => CreateJobRequest) => request("post", "/v1/fine_tuning/jobs", { json: body() }),
    onSuccess: (job) => {
      qc.setQueryData(queryKeys.jobs.detail(job.id), job);
      void qc.invalidateQueries({ queryKey: queryKeys.jobs.lists() });
    },
  });
}

export function useCancelJob() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (id: string) => request("post", "/v1/fine_tuning/jobs/{job_id}/cancel", { path: { job_id: id } }),
    onSuccess: (job) => {
      qc.setQueryData(queryKeys.jobs.detail(job.id), job);
      updateLists(qc, queryKeys.jobs.lists(), (data) => withItem(data, job));
    },
  });
}

/** Pause or resume a job (OpenAI's endpoints); the job page follows the answer. */
export function useJobControl() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: ({ id, action }: { id: string; action: "pause" | "resume" }) =>
      action === "pause"
        ? request("post", "/v1/fine_tuning/jobs/{job_id}/pause", { path: { job_id: id } })
        : request("post", "/v1/fine_tuning/jobs/{job_id}/resume", { path: { job_id: id } }),
    onSuccess: (job) => {
      qc.setQueryData(queryKeys.jobs.detail(job.id), job);
      updateLists(qc, queryKeys.jobs.lists(), (data) => withItem(data, job));
    },
  });
}

// ------------------------------------------------------------------ models

export function useDeleteModel() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (id: string) => request("delete", "/v1/models/{model_id}", { path: { model_id: id } }),
    onSuccess: (_, id) => updateLists(qc, queryKeys.models.all, (data) => withoutItem(data, id)),
  });
}

// ------------------------------------------------------------- evaluations

export function useCreateEvaluation() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (body: Schemas["CreateEvaluationRequest"]) => request("post", "/v1/evaluations", { json: body }),
    onSuccess: (evaluation) => {
      qc.setQueryData(queryKeys.evaluations.detail(evaluation.id), evaluation);
      void qc.invalidateQueries({ queryKey: queryKeys.evaluations.lists() });
    },
  });
}

// ----------------------------------------------------------------- batches

export function useCreateBatch() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (body: Schemas["CreateBatchRequest"]) => request("post", "/v1/batches", { json: body }),
    onSuccess: () => void qc.invalidateQueries({ queryKey: queryKeys.batches.lists() }),
  });
}

export function useCancelBatch() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (id: string) => request("post", "/v1/batches/{batch_id}/cancel", { path: { batch_id: id } }),
    onSuccess: (batch) => updateLists(qc, queryKeys.batches.lists(), (data) => withItem(data, batch)),
  });
}

// --------------------------------------------------------------- downloads

/** An authenticated download (saved as a file); its error is the mutation's. */
export function useDownload() {
  return useMutation({ mutationFn: (v: { path: string; filename: string }) => download(v.path, v.filename) });
}
