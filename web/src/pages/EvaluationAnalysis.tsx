// An evaluation's judges and error analysis: the ratings leaderboard and the
// pairwise table, the tag chips with their counts, the items under filters
// (tag, models disagree, fine-tune worse than base) with the user's own tags,
// and the filtered items' download.
import { useState, type FormEvent } from "react";
import { useInfiniteQuery, useMutation, useQueryClient } from "@tanstack/react-query";
import { request } from "../api";
import { ErrorBox } from "../common";
import { isExternalModel } from "../connections";
import {
  allTags,
  isFiltered,
  itemsDownloadPath,
  leaderboard,
  NO_FILTERS,
  pairwiseRates,
  parseTags,
  pct,
  tagChips,
  type ItemFilter,
  type ItemFilters,
  type PairwiseResult,
  type Rating,
} from "../evaluationAnalysis";
import { useDownload } from "../mutations";
import { sameAnswer } from "../lib";
import { LoadMore } from "../PagedTable";
import { evaluationItemsQuery, queryKeys } from "../queries";
import type { EvaluationItem } from "../types";

export function ModelName({ model }: { model: string }) {
  return (
    <span className="mono small">
      {model}
      {isExternalModel(model) && (
        <>
          {" "}
          <span className="chip chip-external">external</span>
        </>
      )}
    </span>
  );
}

export function Leaderboard({ ratings, pairwise }: { ratings: Rating[] | null | undefined; pairwise: PairwiseResult[] | null | undefined }) {
  const rows = leaderboard(ratings);
  if (!rows.length && !pairwise?.length) return null;
  return (
    <section data-testid="ratings" aria-label="Ratings">
      <h3>Ratings (pairwise judge)</h3>
      <p className="muted small">Bradley–Terry ratings on the Elo scale, with 95% bootstrap intervals over the items.</p>
      {rows.length === 0 && (
        <p className="empty" data-testid="no-ratings">
          No ratings: none of the judge's answers could be read (see the invalid judgments below and each item's judgments).
        </p>
      )}
      <div className="table-wrap" hidden={rows.length === 0}>
        <table data-testid="ratings-table">
          <thead>
            <tr>
              <th>#</th>
              <th>Model</th>
              <th>Rating</th>
              <th>95% interval</th>
              <th>Games</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.model} data-testid="rating-row" data-model={r.model}>
                <td className="num">{r.rank}</td>
                <td>
                  <ModelName model={r.model} />
                </td>
                <td className="num">{Math.round(r.rating)}</td>
                <td className="num">{r.interval}</td>
                <td className="num">{r.games}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pairwise && pairwise.length > 0 && (
        <div className="table-wrap">
          <h4>Wins, ties and losses per pair (both orders)</h4>
          <table data-testid="pairwise-table">
            <thead>
              <tr>
                <th>Model A</th>
                <th>Model B</th>
                <th>A wins</th>
                <th>Ties</th>
                <th>B wins</th>
                <th>Invalid</th>
              </tr>
            </thead>
            <tbody>
              {pairwise.map((p) => {
                const rates = pairwiseRates(p);
                return (
                  <tr key={`${p.model_a}|${p.model_b}`} data-testid="pairwise-row">
                    <td>
                      <ModelName model={p.model_a} />
                    </td>
                    <td>
                      <ModelName model={p.model_b} />
                    </td>
                    <td className="num">
                      {p.wins} ({pct(rates.win)})
                    </td>
                    <td className="num">
                      {p.ties} ({pct(rates.tie)})
                    </td>
                    <td className="num">
                      {p.losses} ({pct(rates.loss)})
                    </td>
                    <td className="num">{p.invalid}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

export function TagChips({
  tagCounts,
  models,
  filters,
  onPick,
}: {
  tagCounts: Record<string, Record<string, number>> | null | undefined;
  models: string[];
  filters: ItemFilters;
  onPick: (model: string, tag: string) => void;
}) {
  const chips = tagChips(tagCounts, models);
  if (!chips.length) return null;
  return (
    <div data-testid="tag-counts">
      {chips.map(({ model, tags }) => (
        <div key={model} className="row wrap tag-line" data-testid="model-tags" data-model={model}>
          <ModelName model={model} />
          {tags.map(({ tag, count }) => {
            const active = filters.model === model && filters.tag === tag;
            return (
              <button
                key={tag}
                type="button"
                className={`tag-chip${active ? " active" : ""}`}
                aria-pressed={active}
                data-testid="tag-chip"
                data-tag={tag}
                title={`Show the items where ${model} is tagged ${tag}`}
                onClick={() => onPick(model, tag)}
              >
                {tag} <span className="count">{count}</span>
              </button>
            );
          })}
        </div>
      ))}
    </div>
  );
}

function UserTags({ evaluationId, item, model, tags }: { evaluationId: string; item: number; model: string; tags: string[] }) {
  const qc = useQueryClient();
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(tags.join(", "));
  const save = useMutation({
    mutationFn: (next: string[]) =>
      request("put", "/v1/evaluations/{evaluation_id}/items/{item}/tags", { path: { evaluation_id: evaluationId, item }, json: { model, tags: next } }),
    onSuccess: () => {
      setEditing(false);
      // The counts and every filtered list may change.
      void qc.invalidateQueries({ queryKey: queryKeys.evaluations.detail(evaluationId) });
    },
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    save.mutate(parseTags(text));
  }
  if (!editing)
    return (
      <div className="row wrap" data-testid="user-tags">
        {tags.map((t) => (
          <span key={t} className="chip chip-user-tag" data-testid="user-tag">
            {t}
          </span>
        ))}
        <button type="button" className="secondary small" data-testid="edit-user-tags" aria-label={`Edit your tags of item ${item} for ${model}`} onClick={() => setEditing(true)}>
          {tags.length ? "Edit tags" : "Add tags"}
        </button>
      </div>
    );
  return (
    <form className="row wrap" onSubmit={submit} aria-label={`Your tags of item ${item} for ${model}`}>
      <input value={text} onChange={(e) => setText(e.target.value)} placeholder="wrong-unit, hallucination" data-testid="user-tags-input" autoFocus />
      <button type="submit" className="small" disabled={save.isPending} data-testid="save-user-tags">
        Save
      </button>
      <button type="button" className="secondary small" onClick={() => setEditing(false)}>
        Cancel
      </button>
      <ErrorBox error={save.error} />
    </form>
  );
}

function promptText(p: unknown): string {
  if (typeof p === "string") return p;
  if (Array.isArray(p)) return p.map((m: { role?: string; content?: unknown }) => `${m.role}: ${m.content ?? ""}`).join("\n");
  return JSON.stringify(p);
}

function Judgments({ item }: { item: EvaluationItem }) {
  if (!item.judgments?.length) return null;
  return (
    <details className="small">
      <summary>{item.judgments.length} judgments</summary>
      <ul className="plain">
        {item.judgments.map((j, i) => (
          <li key={i} data-testid="judgment">
            <span className="mono">{j.kind}</span> by <span className="mono">{j.judge}</span> on {j.models.join(" vs ")}:{" "}
            <strong>{j.kind === "reference" ? `score ${j.score ?? "unreadable"}` : `winner ${j.winner ?? "unreadable"}`}</strong>
            {j.rationale && <span> — {j.rationale}</span>}
            {j.error && (
              <span className="warn">
                {" "}
                (the judge could not be asked: {j.error.message})
              </span>
            )}
            {j.raw && !j.rationale && <div className="pre muted">{j.raw}</div>}
          </li>
        ))}
      </ul>
    </details>
  );
}

const FILTERS: { value: ItemFilter; label: string }[] = [
  { value: "", label: "All items" },
  { value: "disagree", label: "Models disagree" },
  { value: "worse_than_base", label: "Fine-tune worse than base" },
];

export function EvaluationItems({
  evaluationId,
  models,
  tagCounts,
}: {
  evaluationId: string;
  models: string[];
  tagCounts: Record<string, Record<string, number>> | null | undefined;
}) {
  const [filters, setFilters] = useState<ItemFilters>(NO_FILTERS);
  const items = useInfiniteQuery(evaluationItemsQuery(evaluationId, filters));
  const dl = useDownload();
  const rows = items.data?.pages.flatMap((p) => p.data) ?? [];
  const tags = allTags(tagCounts);
  const set = (patch: Partial<ItemFilters>) => setFilters((f) => ({ ...f, ...patch }));
  const download = (format: "jsonl" | "csv") =>
    dl.mutate({ path: itemsDownloadPath(evaluationId, filters, format), filename: `${evaluationId}-items.${format}` });

  return (
    <section data-testid="evaluation-items" aria-label="Items">
      <h3>Error analysis</h3>
      <TagChips tagCounts={tagCounts} models={models} filters={filters} onPick={(model, tag) => set({ model, tag })} />
      <div className="row wrap filters" data-testid="item-filters">
        <label htmlFor="items-tag">Tag</label>
        <select id="items-tag" data-testid="filter-tag" value={filters.tag} onChange={(e) => set({ tag: e.target.value })}>
          <option value="">any</option>
          {tags.map((t) => (
            <option key={t} value={t}>
              {t}
            </option>
          ))}
        </select>
        <label htmlFor="items-model">Model</label>
        <select id="items-model" data-testid="filter-model" value={filters.model} onChange={(e) => set({ model: e.target.value })}>
          <option value="">any</option>
          {models.map((m) => (
            <option key={m} value={m}>
              {m}
            </option>
          ))}
        </select>
        <select aria-label="Which items" data-testid="filter-kind" value={filters.filter} onChange={(e) => set({ filter: e.target.value as ItemFilter })}>
          {FILTERS.map((f) => (
            <option key={f.value} value={f.value}>
              {f.label}
            </option>
          ))}
        </select>
        {isFiltered(filters) && (
          <button type="button" className="secondary small" onClick={() => setFilters(NO_FILTERS)}>
            Clear filters
          </button>
        )}
        <button type="button" className="secondary small" data-testid="download-items-jsonl" onClick={() => download("jsonl")}>
          Download shown (JSONL)
        </button>
        <button type="button" className="secondary small" data-testid="download-items-csv" onClick={() => download("csv")}>
          CSV
        </button>
      </div>
      <ErrorBox error={items.error ?? dl.error} testId="items-error" />
      {items.isPending && <p className="muted">Loading items…</p>}
      {!items.isPending && !items.error && rows.length === 0 && (
        <p className="empty" data-testid="items-empty">
          No items match these filters.
        </p>
      )}
      {rows.length > 0 && (
        <div className="table-wrap">
          <table data-testid="items-table" className="items">
            <thead>
              <tr>
                <th>#</th>
                <th>Prompt</th>
                <th>Reference</th>
                {models.map((m) => (
                  <th key={m}>
                    <ModelName model={m} />
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr key={r.item} data-testid="item-row" data-item={r.item}>
                  <td className="num">{r.item}</td>
                  <td className="pre">
                    {promptText(r.prompt)}
                    <Judgments item={r} />
                  </td>
                  <td className="pre">{String(r.reference ?? "")}</td>
                  {models.map((m) => {
                    const out = r.outputs[m];
                    return (
                      <td
                        key={m}
                        data-model={m}
                        data-testid="item-output"
                        className={sameAnswer(out?.output, r.reference) ? "answer-matches" : "answer-differs"}
                        title={sameAnswer(out?.output, r.reference) ? "same as the reference" : "differs from the reference"}
                      >
                        {out?.output?.trim() ? <div className="pre">{out.output}</div> : <div className="muted small">(empty)</div>}
                        {out?.error && (
                          <div className="error small" data-testid="item-output-error">
                            {out.error.message} ({out.error.code})
                          </div>
                        )}
                        <div className="row wrap">
                          {(out?.tags ?? []).map((t) => (
                            <span key={t} className="chip" data-testid="auto-tag">
                              {t}
                            </span>
                          ))}
                          {out?.latency_ms != null && <span className="muted small">{out.latency_ms} ms</span>}
                        </div>
                        {out && <UserTags key={out.user_tags.join(",")} evaluationId={evaluationId} item={r.item} model={m} tags={out.user_tags} />}
                      </td>
                    );
                  })}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <LoadMore hasMore={items.hasNextPage} loading={items.isFetchingNextPage} onClick={() => void items.fetchNextPage()} />
    </section>
  );
}
