// The API client: the key lives in sessionStorage only (forgotten when the tab closes or on sign-out), every
// request sends it as a bearer token, and errors carry the API's own message ({"error": {"code", "message"}}).
const KEY = "sanitel.apiKey";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function rememberKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message;
      code = body.error.code;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

export async function request(method, path, body, signal) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, signal) => request("GET", path, undefined, signal);
export const post = (path, body) => request("POST", path, body);

export async function getBlob(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// Every page of a paged list ({items, next_cursor}); `max` bounds what one view asks for.
export async function getAll(path, max = 5000, signal) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`, signal);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => search.append(k, x));
    else if (v !== undefined && v !== null && v !== "") search.append(k, v);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Server-Sent Events with a key: EventSource cannot send an Authorization header, so the stream is read with
// fetch() and a ReadableStream reader, and parsed here (fields per the HTML SSE spec: event, data, comments).
// Reconnects with backoff until `signal` aborts; `onOpen` runs when the server says the subscription is live.
export function openStream(path, { onEvent, onOpen, onState, signal }) {
  let delay = 500;
  const run = async () => {
    while (!signal.aborted) {
      try {
        onState("connecting");
        const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
        if (!response.ok) throw await failure(response);
        delay = 500;
        await readFrames(response.body, signal, (frame) => {
          if (frame.comment === "listening") {
            onState("live");
            onOpen();
          } else if (frame.event) {
            onEvent(frame.event, frame.data);
          }
        });
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          onState("closed", error);
          return;
        }
      }
      if (signal.aborted) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  run();
}

async function readFrames(body, signal, onFrame) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      onFrame(parseFrame(block));
    }
  }
}

function parseFrame(block) {
  const frame = { event: null, data: [], comment: null };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) frame.comment = line.slice(1).trim();
    else {
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") frame.event = value;
      else if (field === "data") frame.data.push(value);
    }
  }
  return { ...frame, data: frame.data.join("\n") };
}
