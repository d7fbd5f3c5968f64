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

  // The admin API's endpoints the console reads and acts through.
  workflows(filters) { return this.get("/admin/workflows", filters); }
  workflow(id) { return this.get(`/admin/workflows/${encodeURIComponent(id)}`); }
  assessment(id) { return this.get(`/admin/workflows/${encodeURIComponent(id)}/assessment`); }
  dryRunAction(id, action) {
    return this.post(`/admin/workflows/${encodeURIComponent(id)}/dry-run`, action);
  }
  act(id, action) { return this.post(`/admin/workflows/${encodeURIComponent(id)}`, action); }
  stats() { return this.get("/admin/stats"); }
  deadLetterTopics() { return this.get("/admin/dead-letters"); }
  deadLetters(filters) { return this.get("/admin/dead-letters/messages", filters); }
  deadLetter(topic, partition, offset) {
    return this.get(`/admin/dead-letters/messages/${encodeURIComponent(topic)}/`
      + `${encodeURIComponent(partition)}/${encodeURIComponent(offset)}`);
  }
  replay(selection) { return this.post("/admin/dead-letters/replay", selection); }
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
