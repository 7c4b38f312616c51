// Server state: the query keys (one factory per resource) and the query
// options every page uses. Pages call useQuery/useInfiniteQuery with these;
// mutations (mutations.ts) invalidate by the same keys.
import { infiniteQueryOptions, queryOptions } from "@tanstack/react-query";
import { apiUrl, request, text } from "./api";
import { filterParams, type ItemFilters } from "./evaluationAnalysis";
import { FINAL_BATCH_STATUSES, FINAL_JOB_STATUSES, nextCursor, parseJsonl } from "./lib";
import type { CursorPage, CreateJobRequest, EvaluationItem, JobObject, JobPreview, MetricRow, Schemas } from "./types";

/** Active jobs, evaluations and batches are refreshed this often (ms). */
export const POLL_MS = 2000;
/** The evaluations list is refreshed less often. */
export const EVALUATIONS_LIST_POLL_MS = 3000;
/** Rows per page of a cursor list. */
export const PAGE_SIZE = 20;
/** `limit` when a form lists every file of a purpose in a <select>. */
export const ALL_FILES_LIMIT = 1000;
/** Events and checkpoints shown on a job's page. */
export const JOB_DETAIL_LIMIT = 100;

export interface FileListParams {
  purpose?: string;
}

// ---------------------------------------------------------------------------
// Keys. Every key of a resource starts with its `all` key, so invalidating
// `all` reaches its lists, details and sub-resources; `lists()` reaches only
// its lists; `detail(id)` reaches one object and its sub-resources.

const files = {
  all: ["files"] as const,
  lists: () => [...files.all, "list"] as const,
  /** A cursor list (infinite query). */
  pages: (params: FileListParams = {}) => [...files.lists(), "pages", params] as const,
  /** Every file of a purpose, for a <select>. */
  choices: (purpose: string) => [...files.lists(), "choices", purpose] as const,
  detail: (id: string) => [...files.all, "detail", id] as const,
  report: (id: string) => [...files.detail(id), "report"] as const,
  /** The first examples of the file's content. */
  preview: (id: string) => [...files.detail(id), "preview"] as const,
};

const jobs = {
  all: ["jobs"] as const,
  lists: () => [...jobs.all, "list"] as const,
  pages: () => [...jobs.lists(), "pages"] as const,
  detail: (id: string) => [...jobs.all, "detail", id] as const,
  metrics: (id: string) => [...jobs.detail(id), "metrics"] as const,
  events: (id: string) => [...jobs.detail(id), "events"] as const,
  checkpoints: (id: string) => [...jobs.detail(id), "checkpoints"] as const,
  recipe: (id: string) => [...jobs.detail(id), "recipe"] as const,
  /** What a job request's "auto" values resolve to. */
  preview: (body: CreateJobRequest) => [...jobs.all, "preview", body] as const,
};

const models = {
  all: ["models"] as const,
  list: () => [...models.all, "list"] as const,
};

const evaluations = {
  all: ["evaluations"] as const,
  lists: () => [...evaluations.all, "list"] as const,
  pages: () => [...evaluations.lists(), "pages"] as const,
  detail: (id: string) => [...evaluations.all, "detail", id] as const,
  /** The items under some filters (a cursor list). */
  items: (id: string, filters: ItemFilters) => [...evaluations.detail(id), "items", filters] as const,
  /** What a request would cost (calls, tokens). */
  estimate: (body: unknown) => [...evaluations.all, "estimate", body] as const,
};

const connections = {
  all: ["connections"] as const,
  list: () => [...connections.all, "list"] as const,
  /** The models an endpoint serves (through the allow-list). */
  models: (name: string) => [...connections.all, "models", name] as const,
};

const moves = {
  all: ["moves"] as const,
  list: () => [...moves.all, "list"] as const,
};

const batches = {
  all: ["batches"] as const,
  lists: () => [...batches.all, "list"] as const,
  pages: () => [...batches.lists(), "pages"] as const,
};

export const queryKeys = { files, jobs, models, evaluations, batches, connections, moves };

// ---------------------------------------------------------------------------
// Polling: a refetchInterval is a number while something shown is still
// active and false once everything is final.

export const isJobActive = (job: { status: string }) => !FINAL_JOB_STATUSES.has(job.status);
// An evaluation's statuses are a job's (queued, running, succeeded, failed, cancelled).
export const isEvaluationActive = isJobActive;
export const isBatchActive = (batch: { status: string }) => !FINAL_BATCH_STATUSES.has(batch.status);

/** `ms` while any of `items` is active, else false (no polling). */
export function pollWhileActive<T>(items: readonly T[] | undefined, isActive: (item: T) => boolean, ms: number): number | false {
  return items?.some(isActive) ? ms : false;
}

/**
 * For a job's metrics, events and checkpoints: poll while the job is active,
 * and once more after it is seen final (when this part's data is older than
 * the job's), so that the last steps and events show.
 */
export function pollWithJob(job: { status: string } | undefined, jobUpdatedAt: number, partUpdatedAt: number, ms = POLL_MS): number | false {
  if (!job) return false;
  if (isJobActive(job)) return ms;
  return partUpdatedAt < jobUpdatedAt ? ms : false;
}

/** The job a sub-resource follows: its data and when that was fetched. */
export interface FollowedJob {
  data: JobObject | undefined;
  dataUpdatedAt: number;
}

// ---------------------------------------------------------------------------
// Query options.

type Poll<T> = { isActive: (item: T) => boolean; ms: number };

/** An OpenAI cursor list as an infinite query: `after` is the page param; "Load more" fetches the next page. */
function cursorList<T extends { id: string }, K extends readonly unknown[]>(
  queryKey: K,
  fetchPage: (after: string | undefined) => Promise<CursorPage<T>>,
  poll?: Poll<T>,
) {
  return infiniteQueryOptions({
    queryKey,
    queryFn: ({ pageParam }) => fetchPage(pageParam ?? undefined),
    initialPageParam: null as string | null,
    getNextPageParam: (last: CursorPage<T>) => nextCursor(last),
    refetchInterval: poll ? (query) => pollWhileActive(query.state.data?.pages.flatMap((p) => p.data), poll.isActive, poll.ms) : undefined,
  });
}

export const filePagesQuery = (params: FileListParams = {}) =>
  cursorList(queryKeys.files.pages(params), (after: string | undefined) => request("get", "/v1/files", { query: { ...params, limit: PAGE_SIZE, after } }));

export const fileChoicesQuery = (purpose: string) =>
  queryOptions({
    queryKey: queryKeys.files.choices(purpose),
    queryFn: async () => (await request("get", "/v1/files", { query: { purpose, limit: ALL_FILES_LIMIT } })).data,
  });

export const fileReportQuery = (id: string) =>
  queryOptions({
    queryKey: queryKeys.files.report(id),
    queryFn: async () => (await request("get", "/v1/files/{file_id}/report", { path: { file_id: id } })).report,
    staleTime: Infinity, // a file never changes
  });

/** The first `max` lines of a file, parsed (the first 200 kB are enough). */
export const filePreviewQuery = (id: string, max = 3) =>
  queryOptions({
    queryKey: queryKeys.files.preview(id),
    queryFn: async () => parseJsonl((await text(apiUrl("/v1/files/{file_id}/content", { file_id: id }))).slice(0, 200_000), max).rows,
    staleTime: Infinity,
  });

export const jobPagesQuery = () =>
  cursorList(queryKeys.jobs.pages(), (after: string | undefined) => request("get", "/v1/fine_tuning/jobs", { query: { limit: PAGE_SIZE, after } }), {
    isActive: isJobActive,
    ms: POLL_MS,
  });

export const jobQuery = (id: string) =>
  queryOptions({
    queryKey: queryKeys.jobs.detail(id),
    queryFn: () => request("get", "/v1/fine_tuning/jobs/{job_id}", { path: { job_id: id } }),
    refetchInterval: (query) => pollWhileActive(query.state.data && [query.state.data], isJobActive, POLL_MS),
  });

export const jobMetricsQuery = (id: string, job: FollowedJob) =>
  queryOptions({
    queryKey: queryKeys.jobs.metrics(id),
    queryFn: async () => (await request("get", "/v1/fine_tuning/jobs/{job_id}/metrics", { path: { job_id: id } })).data as unknown as MetricRow[],
    refetchInterval: (query) => pollWithJob(job.data, job.dataUpdatedAt, query.state.dataUpdatedAt),
  });

export const jobEventsQuery = (id: string, job: FollowedJob) =>
  queryOptions({
    queryKey: queryKeys.jobs.events(id),
    queryFn: async () =>
      (await request("get", "/v1/fine_tuning/jobs/{job_id}/events", { path: { job_id: id }, query: { limit: JOB_DETAIL_LIMIT } })).data,
    refetchInterval: (query) => pollWithJob(job.data, job.dataUpdatedAt, query.state.dataUpdatedAt),
  });

export const jobCheckpointsQuery = (id: string, job: FollowedJob) =>
  queryOptions({
    queryKey: queryKeys.jobs.checkpoints(id),
    queryFn: async () =>
      (await request("get", "/v1/fine_tuning/jobs/{job_id}/checkpoints", { path: { job_id: id }, query: { limit: JOB_DETAIL_LIMIT } })).data,
    refetchInterval: (query) => pollWithJob(job.data, job.dataUpdatedAt, query.state.dataUpdatedAt),
  });

export const jobRecipeQuery = (id: string) =>
  queryOptions({
    queryKey: queryKeys.jobs.recipe(id),
    queryFn: () => request("get", "/v1/fine_tuning/jobs/{job_id}/recipe", { path: { job_id: id } }),
    staleTime: Infinity, // written once, when a worker resolves the hyperparameters
  });

export const jobPreviewQuery = (body: CreateJobRequest) =>
  queryOptions({
    queryKey: queryKeys.jobs.preview(body),
    queryFn: async () => (await request("post", "/v1/fine_tuning/jobs/preview", { json: body })) as unknown as JobPreview,
  });

export const modelsQuery = () =>
  queryOptions({
    queryKey: queryKeys.models.list(),
    queryFn: async () => (await request("get", "/v1/models")).data,
  });

export const evaluationPagesQuery = () =>
  cursorList(queryKeys.evaluations.pages(), (after: string | undefined) => request("get", "/v1/evaluations", { query: { limit: PAGE_SIZE, after } }), {
    isActive: isEvaluationActive,
    ms: EVALUATIONS_LIST_POLL_MS,
  });

export const evaluationQuery = (id: string) =>
  queryOptions({
    queryKey: queryKeys.evaluations.detail(id),
    queryFn: () => request("get", "/v1/evaluations/{evaluation_id}", { path: { evaluation_id: id } }),
    refetchInterval: (query) => pollWhileActive(query.state.data && [query.state.data], isEvaluationActive, POLL_MS),
  });

export const batchPagesQuery = () =>
  cursorList(queryKeys.batches.pages(), (after: string | undefined) => request("get", "/v1/batches", { query: { limit: PAGE_SIZE, after } }), {
    isActive: isBatchActive,
    ms: POLL_MS,
  });

/** Connections are few: one request lists them all. */
export const CONNECTIONS_LIMIT = 100;
/** Items per page of an evaluation's items. */
export const ITEMS_PAGE_SIZE = 20;
/** An endpoint's model list is asked for again after this long (ms): each ask is a call to the endpoint. */
export const CONNECTION_MODELS_STALE_MS = 5 * 60_000;

export const connectionsQuery = () =>
  queryOptions({
    queryKey: queryKeys.connections.list(),
    queryFn: async () => (await request("get", "/v1/connections", { query: { limit: CONNECTIONS_LIMIT } })).data,
  });

export const connectionModelsQuery = (name: string) =>
  queryOptions({
    queryKey: queryKeys.connections.models(name),
    queryFn: async () => (await request("get", "/v1/connections/{name}/models", { path: { name } })).data,
    staleTime: CONNECTION_MODELS_STALE_MS,
    retry: false, // an endpoint that is down says so at once
  });

/** An evaluation's items under some filters, a page at a time (the cursor is the last item's number). */
export const evaluationItemsQuery = (id: string, filters: ItemFilters) =>
  infiniteQueryOptions({
    queryKey: queryKeys.evaluations.items(id, filters),
    queryFn: ({ pageParam }) =>
      request("get", "/v1/evaluations/{evaluation_id}/items", {
        path: { evaluation_id: id },
        query: { ...filterParams(filters), limit: ITEMS_PAGE_SIZE, after: pageParam ?? undefined },
      }),
    initialPageParam: null as number | null,
    getNextPageParam: (last: { has_more: boolean; data: EvaluationItem[] }) => (last.has_more && last.data.length ? last.data[last.data.length - 1].item : null),
  });

/** What an evaluation request would call (models, judges, external endpoints), before it runs. */
export const evaluationEstimateQuery = (body: Schemas["CreateEvaluationRequest"] | null) =>
  queryOptions({
    queryKey: queryKeys.evaluations.estimate(body),
    queryFn: () => request("post", "/v1/evaluations/estimate", { json: body! }),
    enabled: body !== null,
    retry: false,
  });
