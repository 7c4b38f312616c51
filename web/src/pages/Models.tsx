import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router-dom";
import { ErrorBox } from "../common";
import { useDeleteModel } from "../mutations";
import { PagedTable, staticList } from "../PagedTable";
import { modelsQuery } from "../queries";
import type { ModelObject } from "../types";
import { sharedByLabel } from "./ModelSharing";

export default function ModelsPage() {
  const { data: models, error } = useQuery(modelsQuery());
  const remove = useDeleteModel();
  function confirmRemove(m: ModelObject) {
    if (!confirm(`Delete the fine-tune ${m.id}?`)) return;
    remove.mutate(m.id);
  }
  if (error) return <ErrorBox error={error} />;
  if (!models) return <p className="muted">Loading…</p>;
  const bases = models.filter((m) => m.kind === "base");
  // Checkpoint models are listed on their job's page.
  const tunes = models.filter((m) => m.kind === "fine-tune");
  return (
    <>
      <h1>Models</h1>
      <div className="card">
        <h2>Base models</h2>
        <ul data-testid="base-models">
          {bases.map((m) => (
            <li key={m.id} className="mono">
              {m.id}
            </li>
          ))}
        </ul>
      </div>
      <div className="card">
        <h2>Your fine-tunes</h2>
        <ErrorBox error={remove.error} />
        <PagedTable
          list={staticList(tunes)}
          testId="fine-tunes-table"
          rowTestId="fine-tune-row"
          empty={
            <p className="empty">
              No fine-tuned models yet. <Link to="/jobs/new">Start a fine-tuning job</Link>; its model appears here when it succeeds.
            </p>
          }
          columns={[
            {
              header: "Model",
              cell: (m) => (
                <>
                  {m.fine_tuning_job ? ( // its page: the card, the downloads, the sharing
                    <Link to={`/models/${m.fine_tuning_job}`} className="mono small" data-testid="model-page-link">
                      {m.id}
                    </Link>
                  ) : (
                    <span className="mono small">{m.id}</span>
                  )}
                  {m.shared_by && (
                    <span className="chip" data-testid="shared-by">
                      {sharedByLabel(m)}
                    </span>
                  )}
                </>
              ),
            },
            { header: "Base", cell: (m) => m.base_model, className: "small" },
            {
              header: "Job",
              cell: (m) =>
                m.fine_tuning_job && (
                  <Link to={`/jobs/${m.fine_tuning_job}`} className="mono small">
                    {m.fine_tuning_job}
                  </Link>
                ),
            },
            {
              header: "",
              // Shared with you: read-only, only its owner deletes it.
              cell: (m) =>
                !m.shared_by && (
                  <button type="button" className="danger small" onClick={() => confirmRemove(m)} aria-label={`Delete ${m.id}`}>
                    Delete
                  </button>
                ),
            },
          ]}
        />
      </div>
    </>
  );
}
