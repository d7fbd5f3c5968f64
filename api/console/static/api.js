// The admin API as the console uses it: every request carries the pasted bearer token in the
// Authorization header (never in a URL), and every failure becomes an ApiFailure saying why.

const PREFIX = "/api/v1";

export class ApiFailure extends Error {
  constructor(status, code, message, details = []) {
    super(message);
    this.status = status; // 0: the API could not be reached
    this.code = code;
    this.details = details;
  }
  get unreachable() { return this.status === 0; }
}

export class Api {
  constructor() {
    this.token = null;
    this.onUnauthorized = () => {};
  }

  async request(method, path, { query, body } = {}) {
    const url = new URL(PREFIX + path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    }
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
      });
    } catch (error) {
      throw new ApiFailure(0, "UNREACHABLE", "the API cannot be reached");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (error) {
      payload = null;
    }
    if (!response.ok) {
      const err = (payload && payload.error) || {};
      const failure = new ApiFailure(
        response.status,
        err.code || `HTTP_${response.status}`,
        err.message || `the API answered ${response.status}`,
        Array.isArray(err.details) ? err.details : [],
      );
      if (response.status === 401) this.onUnauthorized(failure);
      throw failure;
    }
    return payload;
  }

  get(path, query) { return this.request("GET", path, { query }); }
  post(path, body) { return this.request("POST", path, { body }); }

  // The admin API's endpoints the console reads and acts through: the same ones, with the
  // same answers, as every other client of ops (the erynoa saga|dlq commands answer alike).
  workflows(filters) { return this.get("/admin/workflows", filters); }
  workflow(id) { return this.get(`/admin/workflows/${encodeURIComponent(id)}`); }
  dryRunAction(id, action) {
    return this.post(`/admin/workflows/${encodeURIComponent(id)}`, { ...action, dry_run: true });
  }
  act(id, action) {
    return this.post(`/admin/workflows/${encodeURIComponent(id)}`, { ...action, dry_run: false });
  }
  stats() { return this.get("/admin/stats"); }
  // Error classes over the newest 1,000 messages: each refresh is a Kafka scan.
  deadLetterTopics() { return this.get("/admin/dlq", { sample: 1000 }); }
  deadLetters(filters) { return this.post("/admin/dlq/messages", filters); }
  deadLetter(topic, partition, offset) {
    return this.get(`/admin/dlq/messages/${encodeURIComponent(topic)}/`
      + `${encodeURIComponent(partition)}/${encodeURIComponent(offset)}`);
  }
  replay(selection) { return this.post("/admin/dlq/replay", selection); }
}

/** The token's subject and expiry, read for display only (the API verifies the token). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(part + "=".repeat((4 - (part.length % 4)) % 4));
    const claims = JSON.parse(json);
    return { sub: typeof claims.sub === "string" ? claims.sub : null, exp: Number(claims.exp) || null };
  } catch (error) {
    return { sub: null, exp: null };
  }
}
