import type { paths } from "./generated/openapi";
import { ApiError, pageQuery, parseApiError } from "./lib";
import type { FileObject } from "./types";

const KEY = "tunehouse.apiKey";

export function getKey(): string | null {
  return localStorage.getItem(KEY);
}
export function setKey(k: string | null) {
  if (k) localStorage.setItem(KEY, k);
  else localStorage.removeItem(KEY);
}

function authHeaders(key?: string): Record<string, string> {
  const k = key ?? getKey();
  return k ? { Authorization: `Bearer ${k}` } : {};
}

export async function raw(path: string, init: RequestInit = {}, key?: string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: { ...authHeaders(key), ...(init.headers as Record<string, string>) } });
  } catch (e) {
    throw new ApiError(0, { message: `Could not reach the server: ${e instanceof Error ? e.message : String(e)}` });
  }
  if (!res.ok) throw parseApiError(res.status, await res.text());
  return res;
}

/** A JSON request to any URL; prefer `request`, which is typed from the API's schema. */
export async function api<T = unknown>(path: string, init: RequestInit & { json?: unknown } = {}, key?: string): Promise<T> {
  const { json, ...rest } = init;
  if (json !== undefined) {
    rest.method = rest.method ?? "POST";
    rest.body = JSON.stringify(json);
    rest.headers = { "Content-Type": "application/json", ...(rest.headers as Record<string, string>) };
  }
  const res = await raw(path, rest, key);
  const text = await res.text();
  return (text ? JSON.parse(text) : null) as T;
}

// ---------------------------------------------------------------------------
// Typed requests: paths, parameters, bodies and answers come from the types
// generated from the API's OpenAPI schema (src/generated/openapi.ts), so a
// change to the API that the UI does not follow fails `tsc`.

export type Method = "get" | "post" | "put" | "delete";
/** The operation behind `method path`. */
type Operation<P extends keyof paths, M extends Method> = M extends keyof paths[P] ? paths[P][M] : never;
type JsonContent<R> = R extends { content: { "application/json": infer J } } ? J : never;
/** The JSON body of a 200 (or 201) answer. */
export type ResponseOf<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { responses: infer R } ? (R extends { 200: infer Ok } ? JsonContent<Ok> : R extends { 201: infer Created } ? JsonContent<Created> : never) : never;
/** The JSON request body. */
export type BodyOf<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { requestBody?: infer B } ? JsonContent<NonNullable<B>> : never;
type PathParamsOf<O> = O extends { parameters: { path: infer X } } ? X : never;
type QueryParamsOf<O> = O extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;
type IfAny<T, Then> = [T] extends [never] ? unknown : Then;

export type RequestOptions<P extends keyof paths, M extends Method> = IfAny<PathParamsOf<Operation<P, M>>, { path: PathParamsOf<Operation<P, M>> }> &
  IfAny<QueryParamsOf<Operation<P, M>>, { query?: QueryParamsOf<Operation<P, M>> }> &
  IfAny<BodyOf<P, M>, { json: BodyOf<P, M> }>;

/** `/v1/files/{file_id}` + `{ file_id: "file-1" }` + `{ limit: 2 }` → `/v1/files/file-1?limit=2`. */
export function buildUrl(template: string, pathParams: Record<string, string | number> = {}, query: Record<string, unknown> = {}): string {
  const path = template.replace(/\{([^}]+)\}/g, (_, name: string) => {
    const value = pathParams[name];
    if (value === undefined) throw new Error(`${template}: missing path parameter ${name}`);
    return encodeURIComponent(String(value));
  });
  return path + pageQuery(query as Record<string, string | number | undefined | null>);
}

/** The URL of an API path that is not JSON (downloads, file content), checked against the schema's paths. */
export function apiUrl<P extends keyof paths>(path: P, pathParams: Record<string, string> = {}, query: Record<string, unknown> = {}): string {
  return buildUrl(path as string, pathParams, query);
}

export function request<P extends keyof paths, M extends Method & keyof paths[P]>(
  method: M,
  path: P,
  // optional when nothing in it is required
  ...[options]: {} extends RequestOptions<P, M> ? [options?: RequestOptions<P, M>] : [options: RequestOptions<P, M>]
): Promise<ResponseOf<P, M>> {
  const o = (options ?? {}) as { path?: Record<string, string>; query?: Record<string, unknown>; json?: unknown };
  const url = buildUrl(path as string, o.path, o.query);
  return api<ResponseOf<P, M>>(url, { method: method.toUpperCase(), json: o.json });
}

export async function text(path: string): Promise<string> {
  return (await raw(path)).text();
}

/** Multipart upload with progress (XMLHttpRequest, since fetch has no upload progress). */
export function uploadFile(file: File, purpose: string, onProgress: (fraction: number) => void): Promise<FileObject> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    const k = getKey();
    if (k) xhr.setRequestHeader("Authorization", `Bearer ${k}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText) as FileObject);
        } catch (e) {
          reject(e);
        }
      } else reject(parseApiError(xhr.status, xhr.responseText));
    };
    xhr.onerror = () => reject(new ApiError(0, { message: "Upload failed: the server could not be reached" }));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file);
    xhr.send(form);
  });
}

/** Fetch with the key and save as a file via an object URL. Returns the HTTP status (202 = not ready). */
export async function download(path: string, filename: string): Promise<number> {
  const res = await raw(path);
  if (res.status === 202) return 202;
  const blob = await res.blob();
  saveBlob(blob, filename);
  return res.status;
}

export function saveBlob(blob: Blob, filename: string) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
