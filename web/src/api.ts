import { ApiError, parseApiError } from "./lib";

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

export async function api<T = any>(path: string, init: RequestInit & { json?: unknown } = {}, key?: string): Promise<T> {
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

export async function text(path: string): Promise<string> {
  return (await raw(path)).text();
}

/** Multipart upload with progress (XMLHttpRequest, since fetch has no upload progress). */
export function uploadFile(file: File, purpose: string, onProgress: (fraction: number) => void): Promise<any> {
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
          resolve(JSON.parse(xhr.responseText));
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
