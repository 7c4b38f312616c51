// Downloads through signed links (POST /v1/downloads): the API answers a
// short-lived URL that the browser opens itself, so a large file streams to
// disk instead of into memory; while the file is being made (merged weights,
// GGUF) the API answers 202 and the download waits and asks again.
import { useEffect, useRef } from "react";
import { useMutation } from "@tanstack/react-query";
import { raw } from "./api";
import { parseApiError } from "./lib";

export type LinkAnswer =
  | { kind: "ready"; url: string; expiresAt: number }
  | { kind: "preparing"; retryMs: number; status: string | null; stage: string | null };

/** Polling bounds while a download is being made (ms). */
export const MIN_RETRY_MS = 2000;
export const MAX_RETRY_MS = 10000;

/** What POST /v1/downloads answered: a link, or "being made, ask again after Retry-After". */
export function linkAnswer(status: number, body: string, retryAfter: string | null): LinkAnswer {
  if (status === 202) {
    const seconds = Number(retryAfter);
    const retryMs = Number.isFinite(seconds) && seconds > 0 ? Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, seconds * 1000)) : MIN_RETRY_MS;
    let parsed: { status?: unknown; stage?: unknown } = {};
    try {
      parsed = JSON.parse(body) ?? {};
    } catch {
      /* a 202 without a JSON body */
    }
    return {
      kind: "preparing",
      retryMs,
      status: typeof parsed.status === "string" ? parsed.status : null,
      stage: typeof parsed.stage === "string" ? parsed.stage : null,
    };
  }
  if (status !== 200) throw parseApiError(status, body);
  const link = JSON.parse(body) as { url: string; expires_at: number };
  return { kind: "ready", url: link.url, expiresAt: link.expires_at };
}

/** Ask for a link to the download at `path` (an API path with its query). */
export async function requestLink(path: string): Promise<LinkAnswer> {
  const res = await raw("/v1/downloads", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path }),
  });
  return linkAnswer(res.status, await res.text(), res.headers.get("Retry-After"));
}

/** Let the browser fetch the link itself: the answer is an attachment, so it is saved, not shown. */
export function openLink(url: string) {
  const a = document.createElement("a");
  a.href = url;
  a.rel = "noopener";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A download through a signed link; while its file is being made, `onPreparing`
 * is told each answer and the link is asked for again (until the page is left).
 */
export function useLinkedDownload(onPreparing: (answer: LinkAnswer & { kind: "preparing" }) => void = () => {}) {
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);
  return useMutation({
    mutationFn: async (path: string) => {
      for (;;) {
        const answer = await requestLink(path);
        if (answer.kind === "ready") {
          if (mounted.current) openLink(answer.url);
          return answer;
        }
        onPreparing(answer);
        await wait(answer.retryMs);
        if (!mounted.current) return answer;
      }
    },
  });
}
