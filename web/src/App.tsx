import { lazy, Suspense, useState, type FormEvent } from "react";
import { Navigate, NavLink, Route, Routes } from "react-router-dom";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api, apiUrl, getKey, setKey } from "./api";
import { ApiError } from "./lib";
import { ErrorBox } from "./common";

// Pages are split into their own chunks (the charts are the bulk of the bundle).
const DatasetsPage = lazy(() => import("./pages/Datasets"));
const JobsPage = lazy(() => import("./pages/Jobs").then((m) => ({ default: m.JobsPage })));
const NewJobPage = lazy(() => import("./pages/Jobs").then((m) => ({ default: m.NewJobPage })));
const JobDetailPage = lazy(() => import("./pages/Jobs").then((m) => ({ default: m.JobDetailPage })));
const ModelsPage = lazy(() => import("./pages/Models"));
const ModelDetailPage = lazy(() => import("./pages/ModelDetail"));
const ComparePage = lazy(() => import("./pages/Compare"));
const BatchesPage = lazy(() => import("./pages/Batches"));
const ConnectionsPage = lazy(() => import("./pages/Connections"));
const MovePage = lazy(() => import("./pages/Move"));

function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [key, setKeyInput] = useState("");
  // The key is checked by listing the models with it.
  const check = useMutation({
    mutationFn: (k: string) => api(apiUrl("/v1/models"), {}, k),
    onSuccess: (_, k) => {
      setKey(k);
      onSignedIn();
    },
  });
  const error =
    check.error instanceof ApiError && check.error.status === 401 ? new Error(`That key was not accepted: ${check.error.body.message}`) : check.error;
  const busy = check.isPending;

  function submit(e: FormEvent) {
    e.preventDefault();
    const k = key.trim();
    if (k) check.mutate(k);
  }

  return (
    <main className="signin">
      <h1>tunehouse</h1>
      <form onSubmit={submit} aria-label="Sign in" className="card">
        <h2>Sign in</h2>
        <p className="muted">
          Paste your API key. The admin key is printed on first start and written to <code>data/admin-key</code>; more keys:{" "}
          <code>tunehouse keys create --user NAME</code>.
        </p>
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          data-testid="api-key-input"
          type="password"
          autoComplete="off"
          value={key}
          onChange={(e) => setKeyInput(e.target.value)}
          placeholder="th-…"
        />
        <button type="submit" data-testid="sign-in-submit" disabled={busy || !key.trim()}>
          {busy ? "Checking…" : "Sign in"}
        </button>
        <ErrorBox error={error} testId="sign-in-error" />
      </form>
    </main>
  );
}

export default function App() {
  const [signedIn, setSignedIn] = useState(() => !!getKey());
  const queryClient = useQueryClient();
  // Nothing fetched with one key is shown under another.
  const signOut = () => {
    setKey(null);
    queryClient.clear();
    setSignedIn(false);
  };
  if (!signedIn) return <SignIn onSignedIn={() => setSignedIn(true)} />;
  return (
    <>
      <header className="topbar">
        <span className="brand">tunehouse</span>
        <nav aria-label="Main">
          <NavLink to="/datasets">Datasets</NavLink>
          <NavLink to="/jobs">Jobs</NavLink>
          <NavLink to="/models">Models</NavLink>
          <NavLink to="/compare">Compare</NavLink>
          <NavLink to="/batches">Batches</NavLink>
          <NavLink to="/connections">Connections</NavLink>
          <NavLink to="/move">Move from a provider</NavLink>
        </nav>
        <button
          type="button"
          className="secondary"
          data-testid="sign-out"
          onClick={signOut}
        >
          Sign out
        </button>
      </header>
      <main className="content">
        <Suspense fallback={<p className="muted">Loading…</p>}>
        <Routes>
          <Route path="/" element={<Navigate to="/datasets" replace />} />
          <Route path="/datasets" element={<DatasetsPage />} />
          <Route path="/jobs" element={<JobsPage />} />
          <Route path="/jobs/new" element={<NewJobPage />} />
          <Route path="/jobs/:id" element={<JobDetailPage />} />
          <Route path="/models" element={<ModelsPage />} />
          <Route path="/models/:jobId" element={<ModelDetailPage />} />
          <Route path="/compare" element={<ComparePage />} />
          <Route path="/compare/:id" element={<ComparePage />} />
          <Route path="/batches" element={<BatchesPage />} />
          <Route path="/connections" element={<ConnectionsPage />} />
          <Route path="/move" element={<MovePage />} />
          <Route path="*" element={<p>Page not found. <NavLink to="/datasets">Go to datasets</NavLink></p>} />
        </Routes>
        </Suspense>
      </main>
    </>
  );
}
