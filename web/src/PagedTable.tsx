// The one table every list in the UI is shown with. A cursor list (the API's
// `data` / `has_more` / `last_id`, fetched with `limit` and `after`) comes
// from usePagedList, an infinite query whose "Load more" fetches the next
// page; a list the API returns whole (the models) from staticList.
import { useMemo, type ReactNode } from "react";
import { useInfiniteQuery, type InfiniteData, type QueryKey, type UseInfiniteQueryOptions } from "@tanstack/react-query";
import { ErrorBox } from "./common";
import { mergePages } from "./lib";
import type { CursorPage } from "./types";

export interface PagedList<T> {
  items: T[];
  error: unknown;
  /** The first page is not there yet. */
  isLoading: boolean;
  hasMore: boolean;
  isFetchingMore: boolean;
  loadMore: () => void;
}

/** All loaded pages as one list, without duplicates (a row may move to the next page between fetches). */
export function flattenPages<T extends { id: string }>(pages: readonly CursorPage<T>[] | undefined): T[] {
  return (pages ?? []).reduce<T[]>((items, page) => mergePages(items, page.data), []);
}

export function usePagedList<T extends { id: string }, K extends QueryKey>(
  options: UseInfiniteQueryOptions<CursorPage<T>, Error, InfiniteData<CursorPage<T>>, K, string | null>,
): PagedList<T> {
  const query = useInfiniteQuery(options);
  const items = useMemo(() => flattenPages(query.data?.pages), [query.data]);
  return {
    items,
    error: query.error,
    isLoading: query.isPending,
    hasMore: query.hasNextPage,
    isFetchingMore: query.isFetchingNextPage,
    loadMore: () => void query.fetchNextPage(),
  };
}

/** A list that is not paginated, in the same table. */
export function staticList<T>(items: T[], error: unknown = null, isLoading = false): PagedList<T> {
  return { items, error, isLoading, hasMore: false, isFetchingMore: false, loadMore: () => undefined };
}

/** What the table shows for a list's state. */
export function tableView(list: Pick<PagedList<unknown>, "items" | "error" | "isLoading" | "hasMore">) {
  return {
    empty: !list.isLoading && !list.error && list.items.length === 0,
    rows: list.items.length > 0,
    loadMore: list.hasMore,
  };
}

export interface Column<T> {
  header: ReactNode;
  cell: (row: T) => ReactNode;
  className?: string;
}

export function LoadMore({ hasMore, loading, onClick }: { hasMore: boolean; loading: boolean; onClick: () => void }) {
  if (!hasMore) return null;
  return (
    <button type="button" className="secondary" onClick={onClick} disabled={loading} data-testid="load-more">
      {loading ? "Loading…" : "Load more"}
    </button>
  );
}

export function PagedTable<T extends { id: string }>({
  list,
  columns,
  testId,
  rowTestId,
  empty,
  className,
}: {
  list: PagedList<T>;
  columns: Column<T>[];
  /** data-testid of the <table>. */
  testId: string;
  /** data-testid of each row. */
  rowTestId?: string;
  /** Shown when the list has loaded and is empty. */
  empty?: ReactNode;
  className?: string;
}) {
  const view = tableView(list);
  return (
    <>
      <ErrorBox error={list.error} />
      {view.empty && empty}
      {view.rows && (
        <div className="table-wrap">
          <table data-testid={testId} className={className}>
            <thead>
              <tr>
                {columns.map((c, i) => (
                  <th key={i}>{c.header}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {list.items.map((row) => (
                <tr key={row.id} data-testid={rowTestId}>
                  {columns.map((c, i) => (
                    <td key={i} className={c.className}>
                      {c.cell(row)}
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <LoadMore hasMore={view.loadMore} loading={list.isFetchingMore} onClick={list.loadMore} />
    </>
  );
}
