import { describe, expect, it } from "vitest";
import { linkAnswer, MAX_RETRY_MS, MIN_RETRY_MS } from "./links";
import { ApiError } from "./lib";

describe("answers to a download link request", () => {
  it("a link when the download is ready", () => {
    const body = JSON.stringify({ object: "download_link", url: "http://h/v1/downloads/abc.def", path: "/p", expires_at: 1700000300 });
    expect(linkAnswer(200, body, null)).toEqual({ kind: "ready", url: "http://h/v1/downloads/abc.def", expiresAt: 1700000300 });
  });
  it("a wait, bounded, while it is being made", () => {
    const body = JSON.stringify({ status: "running", stage: "quantizing" });
    expect(linkAnswer(202, body, "5")).toEqual({ kind: "preparing", retryMs: 5000, status: "running", stage: "quantizing" });
    expect(linkAnswer(202, "", null)).toMatchObject({ kind: "preparing", retryMs: MIN_RETRY_MS, status: null });
    expect(linkAnswer(202, "{}", "3600")).toMatchObject({ retryMs: MAX_RETRY_MS });
  });
  it("the API's error otherwise", () => {
    const body = JSON.stringify({ error: { message: "Job 'x' is running", type: "invalid_request_error", param: null, code: "adapter_not_ready" } });
    expect(() => linkAnswer(409, body, null)).toThrow(ApiError);
    try {
      linkAnswer(409, body, null);
    } catch (e) {
      expect((e as ApiError).body.code).toBe("adapter_not_ready");
    }
  });
});
