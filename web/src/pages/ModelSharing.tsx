// Who may use one of your fine-tunes, read-only (POST/GET/DELETE
// /v1/models/{model}/shares): list, share with a user or everyone, revoke.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { request } from "../api";
import { ErrorBox, fmtTime } from "../common";
import { modelsQuery, queryKeys } from "../queries";
import type { ModelObject, Schemas } from "../types";

type Share = Schemas["ShareObject"];

// Under the models' key: whatever refreshes the models refreshes their shares.
const sharesKey = (model: string) => [...queryKeys.models.all, "shares", model] as const;

/** Who a share is for, as the list shows it. */
export function grantee(share: Share): string {
  return share.everyone ? "Everyone in this deployment" : (share.user ?? "");
}

/** "shared by X" for a model another user shared with you; null for your own. */
export function sharedByLabel(model: Pick<ModelObject, "shared_by">): string | null {
  return model.shared_by ? `shared by ${model.shared_by}` : null;
}

export function ShareList({ shares, onRevoke, busy }: { shares: Share[]; onRevoke: (share: Share) => void; busy?: boolean }) {
  if (shares.length === 0) return <p className="muted" data-testid="no-shares">Not shared: only you can use it.</p>;
  return (
    <ul data-testid="shares">
      {shares.map((share) => (
        <li key={share.id} className="row" data-testid="share-row">
          <span>{grantee(share)}</span>
          <span className="muted small">since {fmtTime(share.created_at)}</span>
          <button type="button" className="danger small" disabled={busy} onClick={() => onRevoke(share)} aria-label={`Revoke ${grantee(share)}`}>
            Revoke
          </button>
        </li>
      ))}
    </ul>
  );
}

export default function ModelSharing({ model }: { model: string }) {
  const qc = useQueryClient();
  const [user, setUser] = useState("");
  // Shares are the owner's to see: for a model shared with you, say so instead of asking (a 403).
  const { data: models } = useQuery(modelsQuery());
  const entry = models?.find((m) => m.id === model);
  const shares = useQuery({
    queryKey: sharesKey(model),
    queryFn: async () => (await request("get", "/v1/models/{model_id}/shares", { path: { model_id: model } })).data,
    enabled: entry !== undefined && !entry.shared_by,
  });
  const refresh = () => void qc.invalidateQueries({ queryKey: sharesKey(model) });
  const add = useMutation({
    mutationFn: (body: Schemas["CreateShareRequest"]) =>
      request("post", "/v1/models/{model_id}/shares", { path: { model_id: model }, json: body }),
    onSuccess: () => {
      setUser("");
      refresh();
    },
  });
  const revoke = useMutation({
    mutationFn: (share: Share) =>
      request("delete", "/v1/models/{model_id}/shares/{share_id}", { path: { model_id: model, share_id: share.id } }),
    onSuccess: refresh,
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    if (user.trim()) add.mutate({ user: user.trim() });
  }
  if (!entry) return null;
  if (entry.shared_by)
    return (
      <p className="muted" data-testid="shared-with-you">
        {sharedByLabel(entry)}: you may use and download it, read-only.
      </p>
    );
  return (
    <section className="card" data-testid="model-sharing" aria-label="Sharing">
      <h2>Sharing</h2>
      <p className="muted small">
        Who you share it with can list it, chat, batch and evaluate with it and download it; not delete it, nor see your files. Revoking
        takes effect at once.
      </p>
      <ErrorBox error={shares.error ?? add.error ?? revoke.error} testId="sharing-error" />
      {shares.data ? <ShareList shares={shares.data} onRevoke={(s) => revoke.mutate(s)} busy={revoke.isPending} /> : <p className="muted">Loading…</p>}
      <form className="row wrap" onSubmit={submit} aria-label="Share with a user">
        <input aria-label="User name" placeholder="user name" value={user} onChange={(e) => setUser(e.target.value)} data-testid="share-user" />
        <button type="submit" disabled={add.isPending || !user.trim()}>
          Share
        </button>
        <button type="button" className="secondary" disabled={add.isPending} onClick={() => add.mutate({ everyone: true })}>
          Share with everyone
        </button>
      </form>
    </section>
  );
}
