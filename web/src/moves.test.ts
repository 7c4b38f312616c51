import { describe, expect, it } from "vitest";
import { choosable, filesToUpload, mappingValue, moveRequest, type MovePlanJob } from "./moves";

const file = (provider_file_id: string, state: "downloadable" | "needs_upload" | "matched", role: "training" | "validation" = "training") => ({
  role,
  provider_file_id,
  filename: `${provider_file_id}.jsonl`,
  bytes: 100,
  lines: 4,
  state,
});
const job = (id: string, files: ReturnType<typeof file>[]): MovePlanJob => ({
  provider_job_id: id,
  provider_model: `ft:${id}`,
  status: "succeeded",
  files,
  mapping: [],
  movable: true,
});

describe("moving jobs", () => {
  const jobs = [job("j1", [file("f-train", "needs_upload"), file("f-valid", "downloadable", "validation")]), job("j2", [file("f-train", "needs_upload"), file("f-3", "matched")])];

  it("ask for each refused file once, until a copy is uploaded for it", () => {
    expect(filesToUpload(jobs, {}).map((f) => f.provider_file_id)).toEqual(["f-train"]);
    expect(filesToUpload(jobs, { "f-train": "file-local" })).toEqual([]);
  });

  it("may be chosen when movable, or once the files the provider keeps are uploaded", () => {
    expect(choosable({ ...jobs[0], movable: false })).toBe(true);
    expect(choosable({ ...job("j4", [file("x", "downloadable")]), movable: false, problem: "still running" })).toBe(false);
    expect(choosable(job("j5", [file("y", "matched")]))).toBe(true);
  });

  it("send the chosen jobs and only the uploads their files need", () => {
    expect(moveRequest("openai", "tiny", [jobs[0]], { "f-train": "file-a", "f-other": "file-b" })).toEqual({
      connection: "openai",
      base_model: "tiny",
      jobs: ["j1"],
      uploads: { "f-train": "file-a" },
    });
    expect(moveRequest("openai", "tiny", [job("j3", [file("x", "downloadable")])], {})).toEqual({ connection: "openai", base_model: "tiny", jobs: ["j3"] });
  });

  it("show mapped values readably", () => {
    expect(mappingValue(null)).toBe("—");
    expect(mappingValue(3)).toBe("3");
    expect(mappingValue({ type: "lora" })).toBe('{"type":"lora"}');
  });
});
