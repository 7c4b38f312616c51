// DPO's parts of the job pages: the method chooser of the New job form and
// the rewards / margin / accuracy charts of a DPO job.
import { StepChart } from "../StepChart";
import type { MetricRow } from "../types";

export type TrainingMethod = "supervised" | "dpo";

const FORMAT_WORDS: Record<string, string> = {
  chat: "chat examples",
  text: "raw text (continued pretraining)",
  prompt_completion: "prompt/completion pairs",
  preference: "preference pairs (DPO)",
};

/** The method a file's detected format trains with. */
export function methodForFormat(format: string | undefined): TrainingMethod {
  return format === "preference" ? "dpo" : "supervised";
}

export function formatWords(format: string | undefined): string {
  return FORMAT_WORDS[format ?? "chat"] ?? String(format);
}

/** "auto" or a number in (0, 2]; throws an Error naming the problem. */
export function parseBeta(raw: string): number | "auto" | undefined {
  const text = raw.trim();
  if (!text) return undefined;
  if (text === "auto") return "auto";
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0 || value > 2) throw new Error('beta must be "auto" or a number > 0 and <= 2');
  return value;
}

/** Shown for a DPO job: the rewards of the chosen and rejected outputs, their margin and the preference accuracy. */
export function PreferenceCharts({ metrics }: { metrics: MetricRow[] }) {
  if (!metrics.some((row) => row.train_reward_margin != null)) return null;
  return (
    <div className="card">
      <h2>Preference (DPO)</h2>
      <p className="muted small">
        Rewards are β × the fine-tune's log-probability ratio to the starting model; a pair is ranked the preferred way when the chosen output's reward is above the
        rejected one's.
      </p>
      <h3>Rewards and margin</h3>
      <div data-testid="dpo-reward-chart" role="figure" aria-label="DPO rewards chart">
        <StepChart
          data={metrics}
          height={220}
          lines={[
            { key: "train_chosen_reward", name: "chosen reward", color: "#5a9e5a" },
            { key: "train_rejected_reward", name: "rejected reward", color: "#c23b3b" },
            { key: "train_reward_margin", name: "margin", color: "#3b6ea5" },
            { key: "valid_reward_margin", name: "validation margin", color: "#d9822b", sparse: true },
          ]}
        />
      </div>
      <h3>Preference accuracy</h3>
      <div data-testid="dpo-accuracy-chart" role="figure" aria-label="DPO preference accuracy chart">
        <StepChart
          data={metrics}
          height={180}
          yDomain={[0, 1]}
          lines={[
            { key: "train_preference_accuracy", name: "train", color: "#3b6ea5" },
            { key: "valid_preference_accuracy", name: "validation", color: "#d9822b", sparse: true },
          ]}
        />
      </div>
    </div>
  );
}
