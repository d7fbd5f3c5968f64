// The operator console: log in, route between screens, refresh them while live, and run the
// dry-run-then-confirm dialogs. Every screen reads the admin API (api.js); drawing is views.js.

import { Api, ApiFailure, tokenClaims } from "./api.js";
import { fill, h, time } from "./dom.js";
import * as views from "./views.js";

// How often a screen refreshes while Live is ticked: sagas move in seconds; reading a
// dead-letter topic is a Kafka scan, so those screens ask less often.
const EVERY_MS = { sagas: 3000, saga: 3000, deadLetters: 10000 };
const api = new Api();
const $ = (id) => document.getElementById(id);

let screen = null; // the mounted screen: { refresh() }
let refreshing = false;
let lastRefresh = 0;
let unreachableSince = null;

// --- session --------------------------------------------------------------------------------

function showLogin(message) {
  api.token = null;
  screen = null;
  closeDialog();
  $("nav").hidden = true;
  $("session").hidden = true;
  $("view").hidden = true;
  fill($("view"));
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("token").focus();
}

async function logIn(event) {
  event.preventDefault();
  const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
  $("token").value = "";
  if (!token) return;
  api.token = token;
  try {
    // Any admin endpoint answers whether this token may use the console.
    await api.workflows({ per_page: 1 });
  } catch (failure) {
    api.token = null;
    const why = failure.status === 403
      ? "This token does not hold the admin role: the console is for operators."
      : failure.status === 401
        ? `The API refused this token: ${failure.message}.`
        : `Cannot log in now: ${failure.message}.`;
    showLogin(why);
    return;
  }
  const claims = tokenClaims(token);
  $("who").textContent = claims.sub ? `signed in as ${claims.sub}` : "signed in";
  $("login").hidden = true;
  $("login-error").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  $("view").hidden = false;
  if (!location.hash || location.hash === "#") location.hash = "#/sagas";
  else route();
}

api.onUnauthorized = (failure) => {
  if (api.token) showLogin(`Your session ended (${failure.message}). Paste a new token to go on.`);
};

// --- banner: the API's reachability ---------------------------------------------------------

function setBanner(text, kind = "info") {
  const banner = $("banner");
  banner.hidden = !text;
  banner.className = `banner banner-${kind}`;
  banner.textContent = text || "";
}

function reachable() {
  if (unreachableSince !== null) setBanner(null);
  unreachableSince = null;
  $("refreshed").textContent = `updated ${time(new Date().toISOString())}`;
}

function failed(failure) {
  if (failure.status === 401) return; // showLogin already took over
  if (failure.unreachable || failure.status === 503 || failure.status === 502) {
    unreachableSince = unreachableSince || new Date().toISOString();
    setBanner(`The API ${failure.unreachable ? "cannot be reached" : `is unavailable (${failure.message})`}`
      + ` since ${time(unreachableSince)}: showing the last data, retrying.`, "bad");
    return;
  }
  setBanner(`${failure.message}`, "bad");
}

// --- routing ---------------------------------------------------------------------------------

function parseRoute() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

async function route() {
  if (!api.token) return;
  closeDialog();
  const { parts, query } = parseRoute();
  const view = $("view");
  fill(view);
  setBanner(null);
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.screen === (parts[0] || "sagas")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (parts[0] === "dead-letters" && parts.length === 4) {
    screen = messageScreen(view, parts[1], Number(parts[2]), Number(parts[3]));
  } else if (parts[0] === "dead-letters" && parts.length >= 2) {
    screen = topicScreen(view, parts[1], query);
  } else if (parts[0] === "dead-letters") {
    screen = topicsScreen(view);
  } else if (parts[0] === "sagas" && parts.length >= 2) {
    screen = sagaScreen(view, parts[1]);
  } else {
    screen = sagasScreen(view);
  }
  const heading = view.querySelector("h2");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
  await refresh();
}

async function refresh() {
  if (!screen || refreshing) return;
  refreshing = true;
  lastRefresh = Date.now();
  const current = screen;
  try {
    await current.refresh();
    if (current === screen) reachable();
  } catch (failure) {
    if (!(failure instanceof ApiFailure)) throw failure;
    if (current === screen) failed(failure);
  } finally {
    refreshing = false;
  }
}

setInterval(() => {
  if (!screen || !$("live").checked || dialogOpen() || document.visibilityState !== "visible") return;
  if (Date.now() - lastRefresh >= screen.every) refresh();
}, 500);

// --- screens ---------------------------------------------------------------------------------

// A refresh that brings what is already shown leaves the page alone: no flicker, no focus or
// selection lost, nothing re-announced to a screen reader.
function unchanged(holder, data) {
  const text = JSON.stringify(data);
  if (holder.shown === text) return true;
  holder.shown = text;
  return false;
}

function sagasScreen(view) {
  const filters = { status: "", min_age_seconds: "0", stuck: false, stuck_after_seconds: "", customer_id: "", provider_id: "", page: 1 };
  const body = h("div", {});
  const form = h("form", { class: "filters", "aria-label": "Filters" },
    h("label", { for: "f-status" }, "Status"),
    h("select", { id: "f-status", name: "status" },
      h("option", { value: "" }, "any"), views.STATUSES.map((s) => h("option", { value: s }, s))),
    h("label", { for: "f-age" }, "Older than (s)"),
    h("input", { id: "f-age", name: "min_age_seconds", type: "number", min: 0, value: 0 }),
    h("label", { for: "f-stuck" }, h("input", { id: "f-stuck", name: "stuck", type: "checkbox" }), " stuck only"),
    h("label", { for: "f-after" }, "Idle counts as stuck after (s)"),
    h("input", { id: "f-after", name: "stuck_after_seconds", type: "number", min: 1, placeholder: "per step" }),
    h("label", { for: "f-customer" }, "Customer"),
    h("input", { id: "f-customer", name: "customer_id", type: "text" }),
    h("label", { for: "f-provider" }, "Provider"),
    h("input", { id: "f-provider", name: "provider_id", type: "text" }),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    Object.assign(filters, {
      status: data.get("status"), min_age_seconds: data.get("min_age_seconds"),
      stuck: data.get("stuck") === "on", stuck_after_seconds: data.get("stuck_after_seconds"),
      customer_id: data.get("customer_id").trim(), provider_id: data.get("provider_id").trim(), page: 1,
    });
    refresh();
  });
  const pager = h("div", { class: "pager" },
    h("button", { type: "button", onclick: () => { if (filters.page > 1) { filters.page -= 1; refresh(); } } }, "Previous page"),
    h("button", { type: "button", onclick: () => { filters.page += 1; refresh(); } }, "Next page"));
  const stats = h("div", { "aria-live": "off" });
  let statsPending = false;
  fill(view, h("h2", {}, "Sagas in flight"), stats, form, body, pager);
  return {
    every: EVERY_MS.sagas,
    async refresh() {
      // The figures a load test moves: bookings by status, consumer lag, dead letters.
      // Kafka's figures can take seconds: never more than one request in flight.
      if (!statsPending) {
        statsPending = true;
        api.stats().then((answer) => fill(stats, views.statsStrip(answer.data)), () => {})
          .finally(() => { statsPending = false; });
      }
      const page = await api.workflows({ ...filters, stuck: filters.stuck ? "true" : "false", per_page: 50 });
      if (!page.data.length && filters.page > 1) { filters.page -= 1; return this.refresh(); }
      if (unchanged(this, page.data)) return;
      fill(body, views.sagaTable(page));
    },
  };
}

function sagaScreen(view, id) {
  const header = h("div", {});
  const timeline = h("div", {});
  const reason = h("input", { id: "cancel-reason", type: "text", placeholder: "why (kept in the event)" });
  const step = h("select", { id: "retry-step" }, views.RETRY_STEPS.map((s) => h("option", { value: s }, s)));
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Operator actions" },
    h("label", { for: "cancel-reason" }, "Reason"), reason,
    h("button", { type: "button", "data-testid": "cancel", onclick: () => actionDialog(id, { action: "cancel", reason: reason.value.trim() || null }) }, "Cancel saga…"),
    h("label", { for: "retry-step" }, "Step"), step,
    h("button", { type: "button", "data-testid": "retry", onclick: () => actionDialog(id, { action: "retry", step: step.value }) }, "Retry step…"),
    h("a", { href: `#/dead-letters/all?booking_id=${encodeURIComponent(id)}` }, "Dead letters of this booking"));
  fill(view, h("h2", {}, "Saga ", h("code", {}, id)), actions, header, timeline);
  return {
    every: EVERY_MS.saga,
    async refresh() {
      const workflow = await api.workflow(id);
      // "elapsed" grows while in flight: what the screen shows is the rest.
      if (unchanged(this, { ...workflow.data, elapsed_seconds: null })) return;
      fill(header, views.sagaHeader(workflow.data));
      fill(timeline, views.timelineTable(workflow.data));
    },
  };
}

function topicsScreen(view) {
  const body = h("div", {});
  fill(view, h("h2", {}, "Dead letters"),
    h("p", {}, h("a", { href: "#/dead-letters/all" }, "Search every dead-letter topic")), body);
  return {
    every: EVERY_MS.deadLetters,
    async refresh() {
      const topics = await api.deadLetterTopics();
      if (unchanged(this, topics.data)) return;
      fill(body, views.topicTable(topics.data));
    },
  };
}

function topicScreen(view, topic, query) {
  const all = topic === "all";
  const filters = {
    topic: all ? null : topic,
    booking_id: query.get("booking_id") || "",
    error_class: query.get("error_class") || "",
    event_type: query.get("event_type") || "",
  };
  const body = h("div", {});
  const field = (name, label) => [h("label", { for: `m-${name}` }, label),
    h("input", { id: `m-${name}`, name, type: "text", value: filters[name] })];
  const form = h("form", { class: "filters", "aria-label": "Filters" },
    field("booking_id", "Booking"), field("error_class", "Error class"), field("event_type", "Event type"),
    h("button", { type: "submit" }, "Apply"),
    h("button", { type: "button", "data-testid": "replay-matching", onclick: () => replayDialog(selection()) }, "Replay matching…"));
  const selection = () => {
    const chosen = { topics: filters.topic ? [filters.topic] : [] };
    for (const name of ["booking_id", "error_class", "event_type"]) if (filters[name]) chosen[name] = filters[name];
    return chosen;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const name of ["booking_id", "error_class", "event_type"]) filters[name] = data.get(name).trim();
    refresh();
  });
  fill(view, h("h2", {}, all ? "Dead letters in every topic" : `Dead letters in ${topic}`),
    h("p", {}, h("a", { href: "#/dead-letters" }, "All dead-letter topics")), form, body);
  return {
    every: EVERY_MS.deadLetters,
    async refresh() {
      const scan = await api.deadLetters({ ...selection(), limit: 200 });
      if (unchanged(this, scan.data)) return;
      fill(body, views.messageTable(scan.data));
    },
  };
}

function messageScreen(view, topic, partition, offset) {
  const body = h("div", {});
  fill(view, h("h2", {}, `Dead letter ${topic}[${partition}]@${offset}`),
    h("p", {}, h("a", { href: `#/dead-letters/${encodeURIComponent(topic)}` }, `Back to ${topic}`)),
    h("div", { class: "actions" },
      h("button", { type: "button", "data-testid": "replay-one", onclick: () => replayDialog({ topics: [topic], partition, offset }) }, "Replay this message…")),
    body);
  let shown = false;
  return {
    every: EVERY_MS.deadLetters,
    async refresh() {
      // A dead letter never changes: read once, not on every tick.
      if (shown) return;
      const message = await api.deadLetter(topic, partition, offset);
      fill(body, views.messageDetail(message.data));
      shown = true;
    },
  };
}

// --- dialogs: a dry run first, then the real action ------------------------------------------

function dialogOpen() {
  return Boolean(document.querySelector("#dialog-root dialog[open]"));
}

function closeDialog() {
  for (const dialog of document.querySelectorAll("#dialog-root dialog")) {
    if (dialog.open) dialog.close();
    dialog.remove();
  }
}

function openDialog(title) {
  closeDialog();
  const content = h("div", { "aria-live": "polite" }, h("p", {}, "Dry run…"));
  const buttons = h("div", { class: "actions" });
  const dialog = h("dialog", { "aria-labelledby": "dialog-title", "data-testid": "dialog" },
    h("h2", { id: "dialog-title" }, title), content, buttons);
  dialog.addEventListener("close", () => { dialog.remove(); refresh(); });
  $("dialog-root").appendChild(dialog);
  dialog.showModal();
  return { dialog, content, buttons };
}

const closeButton = (dialog) => h("button", { type: "button", onclick: () => dialog.close() }, "Close");

// Both actions follow one protocol: show the dry run, and act only on a confirm of what was shown;
// when the server finds the dry run stale, `show` runs it again with the reason above it.
async function dryRunDialog({ title, dryRun, plan, canConfirm, label, testid, confirmed }) {
  const { dialog, content, buttons } = openDialog(title);
  const finish = (node) => {
    fill(content, node);
    fill(buttons, closeButton(dialog));
  };
  const failed = (text) => finish(h("p", { class: "error", role: "alert" }, text));
  const show = async (notice) => {
    fill(buttons);
    let dry;
    try {
      dry = await dryRun();
    } catch (failure) {
      failed(`Dry run failed: ${failure.message}`);
      return;
    }
    fill(content, notice ? h("p", { class: "error", role: "alert", "data-testid": "stale" }, notice) : null,
      plan(dry));
    const confirm = h("button", {
      type: "button", class: "danger", "data-testid": testid, disabled: !canConfirm(dry),
      onclick: async () => {
        confirm.disabled = true;
        await confirmed(dry, { show, finish, failed });
      },
    }, label(dry));
    fill(buttons, confirm, closeButton(dialog));
  };
  await show(null);
}

function replayDialog(selection) {
  return dryRunDialog({
    title: "Replay dead letters",
    dryRun: async () => (await api.replay({ ...selection, dry_run: true })).data,
    plan: views.replayPlan,
    canConfirm: (dry) => dry.would_replay !== 0,
    label: (dry) => `Replay ${dry.would_replay} message(s)`,
    testid: "confirm-replay",
    confirmed: async (dry, { show, finish, failed }) => {
      try {
        const report = (await api.replay({ ...selection, dry_run: false, plan_id: dry.plan_id })).data;
        finish(views.replayReport(report));
      } catch (failure) {
        if (failure.code === "STALE_PLAN") {
          await show(`${failure.message}. The plan below is the current one.`);
        } else {
          failed(`Replay failed: ${failure.message}`);
        }
      }
    },
  });
}

function actionDialog(id, action) {
  const same = (a, b) => a.refused === b.refused && a.status_before === b.status_before && a.status_after === b.status_after;
  return dryRunDialog({
    title: action.action === "cancel" ? "Cancel the saga" : "Retry a step",
    dryRun: async () => (await api.dryRunAction(id, action)).data,
    plan: views.actionPlan,
    canConfirm: (dry) => !dry.refused,
    label: () => (action.action === "cancel" ? "Cancel the saga" : `Retry ${action.step}`),
    testid: "confirm-action",
    confirmed: async (dry, { show, finish, failed }) => {
      try {
        // The saga may have moved since the dry run was shown: check again before acting.
        const now = (await api.dryRunAction(id, action)).data;
        if (!same(now, dry)) {
          await show("The saga changed since this dry run: review the new one and confirm again.");
          return;
        }
        await api.act(id, action);
        finish(h("p", { "data-testid": "action-done" },
          `Accepted: ${action.action} requested; the saga's timeline shows its effect.`));
      } catch (failure) {
        failed(`${action.action} failed: ${failure.message}`);
      }
    },
  });
}

// --- start -----------------------------------------------------------------------------------

$("login-form").addEventListener("submit", logIn);
$("logout").addEventListener("click", async () => {
  // Revoke the token too: a copy of it left anywhere is useless from now on.
  try { await api.post("/auth/logout"); } catch (failure) { /* logged out here all the same */ }
  showLogin("Logged out; the token was revoked.");
});
window.addEventListener("hashchange", route);
showLogin(null);
