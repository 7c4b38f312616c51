// Memory you can see: the preview's estimate and fit check (New job page), and
// the measured peak per step beside the estimate (job page).
import { ReferenceLine } from "recharts";
import { StepChart } from "../StepChart";
import type { MemoryEstimate, MemoryPreview, MetricRow } from "../types";

const MIB = 1 << 20;
const GIB = 1 << 30;

export function formatBytes(value: number | null | undefined): string {
  if (value == null) return "—";
  return value >= GIB ? `${(value / GIB).toFixed(1)} GiB` : `${Math.round(value / MIB)} MiB`;
}

const PART_NAMES: Record<string, string> = {
  runtime: "process (Python, torch)",
  weights: "weights",
  trainable_weights: "trainable weights",
  gradients: "gradients",
  optimizer: "optimizer state",
  activations: "activations",
  logits: "logits",
};

function Parts({ estimate }: { estimate: MemoryEstimate }) {
  return (
    <details>
      <summary className="small">What the estimate counts</summary>
      <table>
        <tbody>
          {Object.entries(estimate.parts).map(([name, bytes]) => (
            <tr key={name}>
              <td className="small">{PART_NAMES[name] ?? name}</td>
              <td className="mono small">{formatBytes(bytes)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <ul className="small muted">
        {estimate.assumptions.map((line) => (
          <li key={line}>{line}</li>
        ))}
      </ul>
    </details>
  );
}

/** The preview's memory section: the estimate and whether it fits a training worker's device. */
export function MemoryFit({ memory }: { memory: MemoryPreview | undefined }) {
  if (!memory) return null;
  const fits = memory.fits;
  const chip = fits === true ? "chip-succeeded" : fits === false ? "chip-failed" : "chip-queued";
  return (
    <div data-testid="memory-estimate" data-fits={String(fits)}>
      <h3>Memory</h3>
      <p>
        Estimated peak: <strong className="mono">{formatBytes(memory.estimate?.peak_bytes)}</strong>{" "}
        <span className={`chip ${chip}`}>{fits === true ? "fits" : fits === false ? "does not fit" : "fit unknown"}</span>
      </p>
      <p className="small muted">{memory.reason}</p>
      {memory.estimate && <Parts estimate={memory.estimate} />}
    </div>
  );
}

interface RecipeMemory {
  estimate?: MemoryEstimate | null;
}

function recipeEstimate(recipe: unknown): MemoryEstimate | null {
  if (!recipe || typeof recipe !== "object") return null;
  const memory = (recipe as { memory?: RecipeMemory }).memory;
  return memory?.estimate ?? null;
}

/** The job page's memory chart: each step's peak, the estimate and the device's total. */
export function MemoryChart({ metrics, recipe }: { metrics: MetricRow[]; recipe: unknown }) {
  const estimate = recipeEstimate(recipe);
  const rows = metrics.filter((row) => row.peak_memory_bytes != null);
  if (rows.length === 0 && !estimate) return null;
  const toMib = (v: number | null | undefined) => (v == null ? null : Math.round(v / MIB));
  const data = rows.map((row) => ({ step: row.step, peak: toMib(row.peak_memory_bytes), reserved: toMib(row.peak_reserved_bytes) }));
  const measured = rows.length ? Math.max(...rows.map((row) => row.peak_memory_bytes ?? 0)) : null;
  const total = rows.find((row) => row.device_memory_bytes != null)?.device_memory_bytes ?? null;
  const ratio = estimate && measured ? estimate.peak_bytes / measured : null;
  return (
    <div className="card" data-testid="memory-card">
      <h2>Memory</h2>
      <p data-testid="memory-summary">
        Measured peak <strong className="mono">{formatBytes(measured)}</strong>
        {" · "}estimated <strong className="mono">{formatBytes(estimate?.peak_bytes)}</strong>
        {ratio != null && <span className="muted"> (estimate / measured {ratio.toFixed(2)})</span>}
        {total != null && <span className="muted"> · device {formatBytes(total)}</span>}
      </p>
      <p className="small muted">{estimate?.measured_as ?? (rows.length ? "" : "No step measured yet.")}</p>
      {data.length > 0 && (
        <div data-testid="memory-chart" role="figure" aria-label="Memory chart">
          <StepChart
            data={data}
            height={200}
            yUnit=" MiB"
            yWidth={90}
            lines={[
              { key: "peak", name: "peak (MiB)", color: "#7a4fa3" },
              ...(data.some((d) => d.reserved != null) ? [{ key: "reserved", name: "reserved (MiB)", color: "#999" }] : []),
            ]}
          >
            {estimate && <ReferenceLine y={toMib(estimate.peak_bytes) ?? 0} stroke="#d9822b" strokeDasharray="6 3" label="estimate" />}
          </StepChart>
        </div>
      )}
      {estimate && <Parts estimate={estimate} />}
    </div>
  );
}
