// The service's API: requests (with the API key), error bodies, the wire format of numbers and
// the event stream of POST /v1/optimize.

/** A number from the wire: non-finite values travel as "NaN", "Infinity", "-Infinity". */
export const num = (v) => (typeof v === "number" ? v : typeof v === "string" ? Number(v) : NaN);
/** For plotting: finite numbers, and null (a gap) for everything else. */
export const finite = (v) => {
  const n = num(v);
  return Number.isFinite(n) ? n : null;
};

/** An error answered by the service: the body is {"error": {"type", "message", ...}}. */
export class ApiError extends Error {
  constructor(status, body) {
    const error =
      body && typeof body === "object" && body.error && typeof body.error === "object"
        ? body.error
        : { type: "http_error", message: String(body ?? `HTTP ${status}`) };
    super(error.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.type = error.type || "error";
    this.detail = error;
  }
}

export const isAbort = (e) => e && e.name === "AbortError";

let apiKey = "";
try {
  apiKey = sessionStorage.getItem("gradient-api-key") || "";
} catch {
  apiKey = "";
}

/** The API key the requests carry as `Authorization: Bearer …` ("" for none). */
export const getApiKey = () => apiKey;

/** Send `key` from now on, and keep it in this tab's sessionStorage. */
export function setApiKey(key) {
  apiKey = key;
  try {
    sessionStorage.setItem("gradient-api-key", apiKey);
  } catch {
    // private mode: the key lasts until the page reloads
  }
}

function headers(extra) {
  const result = { ...extra };
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(0, { error: { type: "network_error", message: `The service did not answer (${e.message}).` } });
  }
}

async function readJson(response) {
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data ?? { error: { type: "http_error", message: text || response.statusText } });
  }
  if (data === null) {
    throw new ApiError(response.status, { error: { type: "invalid_response", message: "The answer is not JSON." } });
  }
  return data;
}

/** GET path, or POST body to path as JSON; resolves to the parsed answer or throws ApiError. */
export async function api(path, body, signal) {
  const init = { method: body === undefined ? "GET" : "POST", headers: headers({ Accept: "application/json" }), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return readJson(await send(path, init));
}

const catalogs = new Map();
export function catalog(name) {
  if (!catalogs.has(name)) {
    const request = api(`/v1/${name}`).catch((e) => {
      catalogs.delete(name);
      throw e;
    });
    catalogs.set(name, request);
  }
  return catalogs.get(name);
}

/**
 * POST /v1/optimize with Accept: text/event-stream, read with fetch and a stream reader
 * (EventSource cannot POST). Calls onProgress(data) for every `progress` event and
 * onResult(body) for the `result` event; an `error` event throws its ApiError.
 */
export async function streamOptimize(body, signal, onProgress, onResult) {
  const response = await send("/v1/optimize", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.includes("text/event-stream") || !response.body) {
    onResult(await readJson(response)); // an error, or a server that did not stream
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let kind = "";
  let data = [];
  let finished = false;

  const dispatch = () => {
    const eventKind = kind || "message";
    const payload = data.join("\n");
    kind = "";
    data = [];
    if (!payload) return;
    let parsed;
    try {
      parsed = JSON.parse(payload);
    } catch {
      throw new ApiError(0, { error: { type: "invalid_event", message: `A ${eventKind} event is not JSON.` } });
    }
    if (eventKind === "progress") onProgress(parsed);
    else if (eventKind === "result") {
      finished = true;
      onResult(parsed);
    } else if (eventKind === "error") {
      finished = true;
      throw new ApiError(0, parsed); // the stream itself answered 200: the error came later
    }
  };

  const line = (text) => {
    if (text === "") return dispatch();
    if (text.startsWith(":")) return undefined; // a comment (keep-alive)
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
    return undefined;
  };

  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const text of lines) line(text.endsWith("\r") ? text.slice(0, -1) : text);
    }
    if (buffer) line(buffer);
    dispatch();
  } catch (e) {
    reader.cancel().catch(() => undefined);
    throw e;
  }
  if (!finished) {
    throw new ApiError(0, { error: { type: "stream_ended", message: "The event stream ended before its result." } });
  }
}
