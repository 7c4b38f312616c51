import { describe, expect, it } from "vitest";
import { withItem, withoutItem } from "./mutations";

const pages = {
  pages: [
    { data: [{ id: "a", status: "running" }, { id: "b", status: "running" }], has_more: true, last_id: "b" },
    { data: [{ id: "c", status: "running" }], has_more: false, last_id: "c" },
  ],
  pageParams: [null, "b"],
};

describe("cache updates after a mutation", () => {
  it("remove an object from a whole list and from a cursor list's pages", () => {
    expect(withoutItem([{ id: "a" }, { id: "b" }], "a")).toEqual([{ id: "b" }]);
    const out = withoutItem(pages, "c") as typeof pages;
    expect(out.pages.map((p) => p.data.map((x) => x.id))).toEqual([["a", "b"], []]);
    expect(out.pageParams).toEqual([null, "b"]);
    expect(withoutItem(undefined, "a")).toBeUndefined();
  });
  it("replace an object where it is", () => {
    const out = withItem(pages, { id: "b", status: "cancelled" }) as typeof pages;
    expect(out.pages[0].data).toEqual([{ id: "a", status: "running" }, { id: "b", status: "cancelled" }]);
    expect(pages.pages[0].data[1].status).toBe("running"); // not in place
    expect(withItem([{ id: "x", status: "running" }], { id: "x", status: "cancelled" })).toEqual([{ id: "x", status: "cancelled" }]);
  });
});
