import { ApiError, formatError } from "./lib";

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
