import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { ApiError } from "./lib";
import { flattenPages, PagedTable, staticList, tableView, type PagedList } from "./PagedTable";

type Row = { id: string; name: string };

function list(over: Partial<PagedList<Row>> = {}): PagedList<Row> {
  return { ...staticList<Row>([]), ...over };
}

function render(l: PagedList<Row>) {
  return renderToStaticMarkup(
    <PagedTable
      list={l}
      testId="things-table"
      rowTestId="thing-row"
      empty={<p className="empty">No things yet.</p>}
      columns={[
        { header: "Name", cell: (r) => r.name },
        { header: "", cell: (r) => <button aria-label={`Delete ${r.name}`}>Delete</button>, className: "actions" },
      ]}
    />,
  );
}

describe("paged table", () => {
  it("joins loaded pages into one list without repeating a row that moved", () => {
    const pages = [
      { data: [{ id: "a", name: "A" }, { id: "b", name: "B" }], has_more: true, last_id: "b" },
      { data: [{ id: "b", name: "B" }, { id: "c", name: "C" }], has_more: false, last_id: "c" },
    ];
    expect(flattenPages(pages).map((r) => r.id)).toEqual(["a", "b", "c"]);
    expect(flattenPages(undefined)).toEqual([]);
  });
  it("shows the empty message only once the first page is in and empty", () => {
    expect(tableView(list({ isLoading: true }))).toEqual({ empty: false, rows: false, loadMore: false });
    expect(tableView(list())).toEqual({ empty: true, rows: false, loadMore: false });
    expect(tableView(list({ error: new Error("x") }))).toEqual({ empty: false, rows: false, loadMore: false });
    expect(tableView(list({ items: [{ id: "a", name: "A" }], hasMore: true }))).toEqual({ empty: false, rows: true, loadMore: true });
  });
  it("renders one row per item with the row test id, and Load more while there is more", () => {
    const html = render(list({ items: [{ id: "a", name: "A" }, { id: "b", name: "B" }], hasMore: true }));
    expect(html).toContain('data-testid="things-table"');
    expect(html.match(/data-testid="thing-row"/g)).toHaveLength(2);
    expect(html).toContain("<th>Name</th>");
    expect(html).toContain('<td class="actions"><button aria-label="Delete A">');
    expect(html).toContain('data-testid="load-more"');
    expect(html).toContain(">Load more<");
    expect(html).not.toContain("No things yet.");
  });
  it("disables Load more while the next page loads, and hides it at the end", () => {
    const loading = render(list({ items: [{ id: "a", name: "A" }], hasMore: true, isFetchingMore: true }));
    expect(loading).toMatch(/<button[^>]*disabled=""[^>]*data-testid="load-more"[^>]*>Loading…<\/button>/);
    expect(render(list({ items: [{ id: "a", name: "A" }] }))).not.toContain("load-more");
  });
  it("shows the empty message, and an error as an alert", () => {
    expect(render(list())).toContain('<p class="empty">No things yet.</p>');
    const failed = render(list({ error: new ApiError(500, { message: "boom" }) }));
    expect(failed).toContain('role="alert"');
    expect(failed).toContain("boom");
    expect(failed).not.toContain("No things yet.");
  });
});
