import { useCallback, useEffect, useRef, useState } from "react";
import { api } from "./api";
import { ApiError, formatError, mergePages, nextCursor, pageQuery, type Page } from "./lib";

export function ErrorBox({ error, testId = "error" }: { error: unknown; testId?: string }) {
  if (!error) return null;
  const lines = error instanceof ApiError ? error.body.message.split("\n") : [];
  return (
    <div className="error" role="alert" data-testid={testId}>
      <strong>{formatError(error)}</strong>
      {lines.length > 1 && lines.length <= 3 && <div>{lines.slice(1).join(" ")}</div>}
    </div>
  );
}

export function ProgressBar({ value, label, testId }: { value: number | null; label: string; testId?: string }) {
  const pct = value === null ? undefined : Math.max(0, Math.min(100, Math.round(value * 100)));
  return (
    <div className="progress-wrap">
      <progress aria-label={label} data-testid={testId} max={100} value={pct} />
      <span className="muted">{pct === undefined ? "…" : `${pct}%`}</span>
    </div>
  );
}

export function StatusChip({ status }: { status: string }) {
  return (
    <span className={`chip chip-${status}`} data-testid="status-chip">
      {status}
    </span>
  );
}

export function fmtTime(unix: number | null | undefined): string {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleString();
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** A paginated list: first page on mount, "Load more" appends. */
export function usePaged<T extends { id: string }>(path: string, params: Record<string, string | number | undefined> = {}, limit = 20) {
  const [items, setItems] = useState<T[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const key = path + JSON.stringify(params);
  const keyRef = useRef(key);
  keyRef.current = key;

  const load = useCallback(
    async (after: string | null, append: boolean) => {
      setLoading(true);
      setError(null);
      const myKey = key;
      try {
        const page = await api<Page<T>>(path + pageQuery({ ...params, limit, after: after ?? undefined }));
        if (keyRef.current !== myKey) return;
        setItems((old) => (append ? mergePages(old, page.data) : page.data));
        setCursor(nextCursor(page));
      } catch (e) {
        setError(e);
      } finally {
        setLoading(false);
      }
    },
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [key, limit],
  );

  useEffect(() => {
    load(null, false);
  }, [load]);

  return {
    items,
    setItems,
    loading,
    error,
    hasMore: cursor !== null,
    loadMore: () => load(cursor, true),
    reload: () => load(null, false),
  };
}

export function LoadMore({ hasMore, loading, onClick }: { hasMore: boolean; loading: boolean; onClick: () => void }) {
  if (!hasMore) return null;
  return (
    <button type="button" className="secondary" onClick={onClick} disabled={loading} data-testid="load-more">
      {loading ? "Loading…" : "Load more"}
    </button>
  );
}

/** Call fn every `ms` while `active`; fn errors are passed to onError. */
export function usePoll(fn: () => Promise<void>, ms: number, active: boolean) {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  useEffect(() => {
    if (!active) return;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout>;
    const tick = async () => {
      try {
        await fnRef.current();
      } finally {
        if (!stopped) timer = setTimeout(tick, ms);
      }
    };
    timer = setTimeout(tick, ms);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [ms, active]);
}
