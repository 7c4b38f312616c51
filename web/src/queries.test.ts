import { QueryClient, type InfiniteData, type Query } from "@tanstack/react-query";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  batchPagesQuery,
  evaluationPagesQuery,
  evaluationQuery,
  EVALUATIONS_LIST_POLL_MS,
  filePagesQuery,
  jobMetricsQuery,
  jobPagesQuery,
  jobQuery,
  PAGE_SIZE,
  POLL_MS,
  pollWhileActive,
  pollWithJob,
  queryKeys,
} from "./queries";
import type { CursorPage } from "./types";

const startsWith = (key: readonly unknown[], prefix: readonly unknown[]) => prefix.every((part, i) => JSON.stringify(key[i]) === JSON.stringify(part));

describe("query keys", () => {
  it("nest every key of a resource under its `all` key", () => {
    const k = queryKeys;
    for (const key of [k.files.pages(), k.files.pages({ purpose: "batch" }), k.files.choices("fine-tune"), k.files.report("file-1"), k.files.preview("file-1")])
      expect(startsWith(key, k.files.all)).toBe(true);
    for (const key of [k.jobs.pages(), k.jobs.detail("j"), k.jobs.metrics("j"), k.jobs.events("j"), k.jobs.checkpoints("j"), k.jobs.recipe("j")])
      expect(startsWith(key, k.jobs.all)).toBe(true);
    expect(startsWith(k.evaluations.items("e", { tag: "", model: "", filter: "" }), k.evaluations.detail("e"))).toBe(true);
    expect(startsWith(k.batches.pages(), k.batches.lists())).toBe(true);
    expect(startsWith(k.models.list(), k.models.all)).toBe(true);
  });
  it("put a job's metrics, events, checkpoints and recipe under its detail key", () => {
    for (const key of [queryKeys.jobs.metrics("j"), queryKeys.jobs.events("j"), queryKeys.jobs.checkpoints("j"), queryKeys.jobs.recipe("j")])
      expect(startsWith(key, queryKeys.jobs.detail("j"))).toBe(true);
    expect(startsWith(queryKeys.jobs.metrics("j"), queryKeys.jobs.detail("j2"))).toBe(false);
  });
  it("keep lists apart from details, and cursor lists apart from whole lists", () => {
    expect(startsWith(queryKeys.files.report("f"), queryKeys.files.lists())).toBe(false);
    expect(startsWith(queryKeys.files.choices("batch"), queryKeys.files.pages())).toBe(false);
    expect(queryKeys.files.pages({ purpose: "batch" })).not.toEqual(queryKeys.files.pages());
    expect(queryKeys.jobs.preview({ model: "m", training_file: "f" })).toEqual(queryKeys.jobs.preview({ model: "m", training_file: "f" }));
  });
  it("invalidate what a mutation affects and nothing else", async () => {
    const qc = new QueryClient();
    const all = [
      queryKeys.files.pages(),
      queryKeys.files.choices("fine-tune"),
      queryKeys.files.report("f"),
      queryKeys.jobs.pages(),
      queryKeys.jobs.detail("j"),
      queryKeys.jobs.metrics("j"),
      queryKeys.jobs.detail("j2"),
      queryKeys.models.list(),
    ];
    for (const key of all) qc.setQueryData(key, []);
    await qc.invalidateQueries({ queryKey: queryKeys.files.lists() });
    await qc.invalidateQueries({ queryKey: queryKeys.jobs.detail("j") });
    const invalid = all.filter((key) => qc.getQueryState(key)?.isInvalidated).map((key) => JSON.stringify(key));
    expect(invalid).toEqual([queryKeys.files.pages(), queryKeys.files.choices("fine-tune"), queryKeys.jobs.detail("j"), queryKeys.jobs.metrics("j")].map((k) => JSON.stringify(k)));
  });
});

describe("polling", () => {
  const job = (status: string) => ({ id: status, status });
  it("polls while something is active and stops when all is final", () => {
    expect(pollWhileActive([job("running"), job("succeeded")], (j) => j.status === "running", 2000)).toBe(2000);
    expect(pollWhileActive([job("succeeded")], (j) => j.status === "running", 2000)).toBe(false);
    expect(pollWhileActive([], () => true, 2000)).toBe(false);
    expect(pollWhileActive(undefined, () => true, 2000)).toBe(false);
  });

  const page = <T,>(data: T[]): CursorPage<T> => ({ data, has_more: false, first_id: null, last_id: null });
  const listState = <T,>(...pages: T[][]) => ({ state: { data: { pages: pages.map(page), pageParams: pages.map(() => null) } } }) as unknown as Query<
    CursorPage<T>,
    Error,
    InfiniteData<CursorPage<T>>,
    readonly unknown[]
  >;
  const interval = (options: { refetchInterval?: unknown }, query: unknown) => (options.refetchInterval as (q: unknown) => number | false)(query);

  it("refreshes the jobs list while a job on any loaded page is not final", () => {
    expect(interval(jobPagesQuery(), listState([job("succeeded")], [job("queued")]))).toBe(POLL_MS);
    expect(interval(jobPagesQuery(), listState([job("validating_files")]))).toBe(POLL_MS);
    expect(interval(jobPagesQuery(), listState([job("succeeded"), job("failed")], [job("cancelled")]))).toBe(false);
    expect(interval(jobPagesQuery(), { state: { data: undefined } })).toBe(false);
  });
  it("refreshes batches until completed, failed, cancelled or expired; cancelling still moves", () => {
    expect(interval(batchPagesQuery(), listState([job("cancelling")]))).toBe(POLL_MS);
    expect(interval(batchPagesQuery(), listState([job("in_progress"), job("completed")]))).toBe(POLL_MS);
    expect(interval(batchPagesQuery(), listState([job("completed"), job("failed"), job("cancelled"), job("expired")]))).toBe(false);
  });
  it("refreshes the evaluations list every 3 s while one runs", () => {
    expect(interval(evaluationPagesQuery(), listState([job("running")]))).toBe(EVALUATIONS_LIST_POLL_MS);
    expect(interval(evaluationPagesQuery(), listState([job("succeeded")]))).toBe(false);
  });
  it("refreshes a job or an evaluation page until it is final", () => {
    expect(interval(jobQuery("j"), { state: { data: job("running") } })).toBe(POLL_MS);
    expect(interval(jobQuery("j"), { state: { data: job("succeeded") } })).toBe(false);
    expect(interval(evaluationQuery("e"), { state: { data: job("queued") } })).toBe(POLL_MS);
    expect(interval(evaluationQuery("e"), { state: { data: job("failed") } })).toBe(false);
  });
  it("refreshes a job's parts while it runs, and once more after it ends", () => {
    expect(pollWithJob(undefined, 0, 0)).toBe(false);
    expect(pollWithJob(job("running"), 100, 200)).toBe(POLL_MS);
    expect(pollWithJob(job("succeeded"), 300, 200)).toBe(POLL_MS); // the part is older than the final job
    expect(pollWithJob(job("succeeded"), 300, 400)).toBe(false);
    const followed = { data: { status: "succeeded" } as never, dataUpdatedAt: 300 };
    expect(interval(jobMetricsQuery("j", followed), { state: { dataUpdatedAt: 250 } })).toBe(POLL_MS);
    expect(interval(jobMetricsQuery("j", followed), { state: { dataUpdatedAt: 350 } })).toBe(false);
  });
});

describe("cursor lists", () => {
  afterEach(() => vi.unstubAllGlobals());

  it("fetch `limit` rows, then the next page `after` the last id, with the key", async () => {
    const urls: string[] = [];
    const headers: unknown[] = [];
    vi.stubGlobal("localStorage", { getItem: () => "th-key" });
    vi.stubGlobal("fetch", async (url: string, init: RequestInit) => {
      urls.push(url);
      headers.push(init.headers);
      const after = new URL(url, "http://x").searchParams.get("after");
      const body = after
        ? { object: "list", data: [{ id: "file-3" }], has_more: false, first_id: "file-3", last_id: "file-3" }
        : { object: "list", data: [{ id: "file-1" }, { id: "file-2" }], has_more: true, first_id: "file-1", last_id: "file-2" };
      return new Response(JSON.stringify(body), { status: 200 });
    });
    const qc = new QueryClient();
    const options = filePagesQuery({ purpose: "fine-tune" });
    await qc.fetchInfiniteQuery(options);
    await qc.fetchInfiniteQuery({ ...options, pages: 2 });
    expect(urls).toEqual([
      `/v1/files?purpose=fine-tune&limit=${PAGE_SIZE}`,
      `/v1/files?purpose=fine-tune&limit=${PAGE_SIZE}`,
      `/v1/files?purpose=fine-tune&limit=${PAGE_SIZE}&after=file-2`,
    ]);
    expect(headers[0]).toEqual({ Authorization: "Bearer th-key" });
    const data = qc.getQueryData(options.queryKey)!;
    expect(data.pages.flatMap((p) => p.data.map((f) => f.id))).toEqual(["file-1", "file-2", "file-3"]);
    expect(options.getNextPageParam(data.pages[1], data.pages, null, [])).toBeNull();
    expect(options.getNextPageParam(data.pages[0], data.pages, null, [])).toBe("file-2");
  });
});
