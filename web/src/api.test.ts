import { describe, expect, it } from "vitest";
import { buildUrl } from "./api";

describe("URLs from the schema's paths", () => {
  it("fills path parameters (encoded) and adds the non-empty query parameters", () => {
    expect(buildUrl("/v1/files/{file_id}/content", { file_id: "file-1" })).toBe("/v1/files/file-1/content");
    expect(buildUrl("/v1/models/{model_id}", { model_id: "ft:base/x:y" })).toBe("/v1/models/ft%3Abase%2Fx%3Ay");
    expect(buildUrl("/v1/files", {}, { purpose: "batch", limit: 20, after: undefined })).toBe("/v1/files?purpose=batch&limit=20");
  });
  it("refuses a missing path parameter", () => {
    expect(() => buildUrl("/v1/batches/{batch_id}", {})).toThrow(/batch_id/);
  });
});
