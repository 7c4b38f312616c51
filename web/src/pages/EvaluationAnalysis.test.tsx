import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { NO_FILTERS } from "../evaluationAnalysis";
import { TestResult } from "./Connections";
import { Leaderboard, TagChips } from "./EvaluationAnalysis";

const count = (html: string, testId: string) => html.split(`data-testid="${testId}"`).length - 1;

describe("the ratings leaderboard", () => {
  it("ranks the models, marks external ones and shows each pair's rates", () => {
    const html = renderToStaticMarkup(
      <Leaderboard
        ratings={[
          { model: "base", rating: 960.4, ci_low: 900, ci_high: 1001, games: 8 },
          { model: "conn:peer/m", rating: 1039.6, ci_low: 999, ci_high: 1100, games: 8 },
        ]}
        pairwise={[{ model_a: "base", model_b: "conn:peer/m", wins: 1, ties: 1, losses: 2, invalid: 4 }]}
      />,
    );
    expect(count(html, "rating-row")).toBe(2);
    expect(html.indexOf('data-model="conn:peer/m"')).toBeLessThan(html.indexOf('data-model="base"'));
    expect(html).toContain("999–1100");
    expect(html).toContain("external");
    expect(html).toContain("2 (50%)");
    expect(count(html, "no-ratings")).toBe(0);
  });
  it("says why there are no ratings when no judgment could be read, and is absent without a pairwise judge", () => {
    const html = renderToStaticMarkup(<Leaderboard ratings={[]} pairwise={[{ model_a: "a", model_b: "b", wins: 0, ties: 0, losses: 0, invalid: 4 }]} />);
    expect(count(html, "no-ratings")).toBe(1);
    expect(renderToStaticMarkup(<Leaderboard ratings={null} pairwise={null} />)).toBe("");
  });
});

describe("tag chips", () => {
  it("show each model's tags with counts, the picked one pressed", () => {
    const html = renderToStaticMarkup(
      <TagChips tagCounts={{ a: { cut_off: 2, empty: 1 }, b: { regressed: 3 } }} models={["a", "b"]} filters={{ ...NO_FILTERS, model: "b", tag: "regressed" }} onPick={() => {}} />,
    );
    expect(count(html, "tag-chip")).toBe(3);
    expect(html).toMatch(/aria-pressed="true"[^>]*data-tag="regressed"/);
    expect(html.match(/aria-pressed="true"/g)).toHaveLength(1);
  });
});

describe("a connection test", () => {
  it("lists the endpoint's models, or shows its error as an alert", () => {
    const ok = renderToStaticMarkup(<TestResult result={{ ok: true, models: ["tiny-llama"], latency_ms: 7, error: null }} />);
    expect(ok).toContain('data-ok="true"');
    expect(ok).toContain("<li>tiny-llama</li>");
    const failed = renderToStaticMarkup(
      <TestResult result={{ ok: false, models: [], latency_ms: 3, error: { code: "connection_error", message: "Connection refused" } }} />,
    );
    expect(failed).toContain('role="alert"');
    expect(failed).toContain("Failed (connection_error): Connection refused");
  });
});
