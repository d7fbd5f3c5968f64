// What each screen draws from the admin API's JSON: pure functions from data to DOM nodes.

import { duration, h, money, plain, time } from "./dom.js";

export const STATUSES = [
  "requested", "reserved", "payment_action_required", "awaiting_provider",
  "confirmed", "rejected", "expired", "cancelled", "failed",
];
export const RETRY_STEPS = ["all", "reservation", "payment", "notification", "provider-response"];

const sagaLink = (id) => h("a", { href: `#/sagas/${encodeURIComponent(id)}`, "data-booking-id": id }, id);

function badge(text, kind) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

function table(caption, headings, rows, attributes = {}) {
  return h("table", attributes,
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headings.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows
      : h("tr", {}, h("td", { colspan: headings.length, class: "muted" }, "Nothing here."))));
}

function pairs(caption, entries, attributes = {}) {
  return h("table", { class: "pairs", ...attributes },
    h("caption", {}, caption),
    h("tbody", {}, entries.map(([name, value]) =>
      h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, value)))));
}

// --- sagas in flight ------------------------------------------------------------------------

export function sagaRows(page) {
  return page.data.map((s) => h("tr", { "data-booking-id": s.id, "data-status": s.status, "data-stuck": String(s.stuck) },
    h("td", {}, sagaLink(s.id)),
    h("td", {}, s.status),
    h("td", {}, s.hold),
    h("td", {}, s.payment),
    h("td", { class: "num" }, duration(s.age_seconds)),
    h("td", { "data-stuck-reason": s.stuck_reason ?? "" },
      s.stuck ? badge("stuck", "bad") : "", s.stuck_reason ? ` ${s.stuck_reason}` : ""),
    h("td", {}, (s.waiting || []).map((w) => `${w.who}: ${w.what}`).join("; ")),
    h("td", {}, s.customer_id),
    h("td", {}, s.provider_id),
    h("td", {}, time(s.updated_at))));
}

// A capped total is a lower bound: "10,000+", not a count.
export function countText(total, capped) {
  const shown = Number(total).toLocaleString("en-US");
  return capped ? `${shown}+` : shown;
}

export function sagaTable(page) {
  const meta = page.meta || {};
  return [
    h("p", { class: "muted", "data-testid": "saga-count" },
      `${countText(meta.total ?? page.data.length, meta.total_capped)} in flight matching · page ${meta.page ?? 1}`),
    table("Sagas in flight, oldest first",
      ["Booking", "Status", "Hold", "Payment", "Age", "Stuck", "Waits for", "Customer", "Provider", "Last change"],
      sagaRows(page), { "data-testid": "sagas" }),
  ];
}

export function statsStrip(stats) {
  const byStatus = Object.entries(stats.bookings_by_status || {}).sort(([a], [b]) => a.localeCompare(b));
  const lag = stats.consumer_lag
    ? Object.entries(stats.consumer_lag).map(([group, n]) => h("span", { class: "chip" }, `${group}: ${n}`))
    : h("span", { class: "muted" }, `unknown (${stats.kafka_error ?? "no answer"})`);
  const dead = stats.dead_letters
    ? Object.values(stats.dead_letters).reduce((sum, n) => sum + Number(n || 0), 0) : null;
  return h("div", { class: "stats", "data-testid": "stats" },
    h("p", {}, h("strong", {}, `${stats.bookings_total} bookings: `),
      byStatus.map(([status, n]) => h("span", { class: "chip" }, `${status} ${n}`))),
    h("p", {}, h("strong", {}, "Consumer lag: "), lag),
    h("p", {}, h("strong", {}, "Dead letters: "),
      dead === null ? "unknown" : h("a", { href: "#/dead-letters" }, String(dead))));
}

// --- one saga -------------------------------------------------------------------------------

export function sagaHeader(workflow) {
  const waiting = workflow.waiting || [];
  return [
    h("div", { class: "facts" },
      pairs("Booking", [
        ["Status", h("span", { "data-testid": "saga-status" }, workflow.status)],
        ["In flight", workflow.in_flight ? "yes" : "no"],
        ["Hold", workflow.hold],
        ["Payment", workflow.payment],
        ["Price", money(workflow.price)],
        ["Customer", workflow.customer_id],
        ["Provider", workflow.provider_id],
        ["Slot", `${time(workflow.slot_start)} – ${time(workflow.slot_end)}`],
        ["Notes", workflow.notes ?? "—"],
        ["Failure", workflow.failure_reason ?? "—"],
        ["Provider deadline", time(workflow.provider_deadline_at)],
        ["Requested", time(workflow.requested_at)],
      ], { "data-testid": "saga-facts" }),
      h("div", {},
        h("h3", {}, "Waits for"),
        workflow.stuck_reason
          ? h("p", { class: "error", "data-testid": "stuck-reason" }, `Stuck: ${workflow.stuck_reason}`)
          : null,
        waiting.length
          ? h("ul", { "data-testid": "waiting" }, waiting.map((w) =>
            h("li", { "data-who": w.who, "data-what": w.what },
              h("strong", {}, w.who), ` — ${w.what}`, w.until ? ` (until ${time(w.until)})` : "")))
          : h("p", { class: "muted", "data-testid": "waiting" },
            workflow.in_flight ? "Nothing the rules know of." : "Nothing: the saga is finished."))),
  ];
}

export function timelineTable(workflow) {
  const rows = workflow.timeline.map((e, i) => {
    const kind = e.kind;
    return h("tr", { class: `kind-${kind}`, "data-kind": kind, "data-event-id": e.event_id },
      h("td", { class: "num" }, String(i + 1)),
      h("td", {}, time(e.occurred_at)),
      h("td", { class: "num" }, e.since_previous_ms === null ? "" : duration(e.since_previous_ms / 1000)),
      h("td", {}, e.event_type),
      h("td", {}, kind === "compensation" ? badge("compensation", "warn")
        : kind === "failure" ? badge("failure", "bad") : kind),
      h("td", {}, e.producer),
      h("td", {}, `${e.topic}[${e.partition}]@${e.offset}`),
      h("td", { class: "detail" }, e.detail));
  });
  return table("Timeline: every event of the saga, in fold order",
    ["#", "When", "+prev", "Event", "Kind", "Producer", "Position", "Detail"],
    rows, { "data-testid": "timeline" });
}

// --- dead letters ---------------------------------------------------------------------------

export function topicTable(topics) {
  const rows = topics.map((t) => h("tr", { "data-topic": t.topic },
    h("td", {}, h("a", { href: `#/dead-letters/${encodeURIComponent(t.topic)}`, "data-topic": t.topic }, t.topic)),
    h("td", {}, t.consumer ?? "—"),
    h("td", { class: "num", "data-testid": "depth" }, t.exists ? String(t.depth) : "not created"),
    h("td", {}, time(t.oldest)),
    h("td", {}, time(t.newest)),
    h("td", {}, Object.entries(t.error_classes || {}).map(([name, n]) =>
      h("span", { class: "chip" }, `${name} × ${n}`)))));
  return table("Dead-letter topics", ["Topic", "Consumer", "Depth", "Oldest", "Newest", "Error classes (newest messages)"],
    rows, { "data-testid": "dlq-topics" });
}

export function messageRows(messages) {
  return messages.map((m) => {
    const href = `#/dead-letters/${encodeURIComponent(m.topic)}/${m.partition}/${m.offset}`;
    return h("tr", { "data-booking-id": m.booking_id ?? "" },
      h("td", {}, time(m.timestamp)),
      h("td", {}, h("a", { href, "data-testid": "message-link" }, `${m.partition}@${m.offset}`)),
      h("td", {}, m.event_type ?? "—"),
      h("td", {}, m.booking_id ? sagaLink(m.booking_id) : "—"),
      h("td", {}, m.failure.error_class ?? "—"),
      h("td", { class: "num" }, plain(m.failure.attempts)),
      h("td", { class: "detail" }, m.failure.error ?? m.undecodable ?? ""));
  });
}

export function messageTable(scan) {
  return [
    table("Dead letters, oldest first", ["Dead-lettered", "Position", "Event", "Booking", "Error class", "Attempts", "Error"],
      messageRows(scan.messages), { "data-testid": "messages" }),
    scan.truncated || scan.limited
      ? h("p", { class: "muted" }, "More messages may match: narrow the filters.") : null,
  ];
}

export function messageDetail(m) {
  const f = m.failure;
  const event = m.event || {};
  return [
    pairs("Failure", [
      ["Error class", f.error_class ?? "—"],
      ["Error", h("span", { "data-testid": "error-text" }, f.error ?? "—")],
      ["Kind", f.error_kind ?? "—"],
      ["Consumer", f.consumer ?? "—"],
      ["Attempts", plain(f.attempts)],
      ["From", f.origin_topic ? `${f.origin_topic}[${plain(f.origin_partition)}]@${plain(f.origin_offset)}` : "—"],
      ["First failure", time(f.first_failure)],
      ["Last failure", time(f.last_failure)],
      ["Replayed before as", f.replay_id ?? "—"],
      ["Booking", m.booking_id ? sagaLink(m.booking_id) : "—"],
    ], { "data-testid": "failure" }),
    m.event
      ? pairs(`Decoded event: ${m.event_type}`, Object.entries(event).map(([k, v]) => [k, plain(v)]),
        { "data-testid": "event" })
      : h("div", { "data-testid": "event" },
        h("p", { class: "error" }, `Undecodable: ${m.undecodable ?? "no value"}`),
        h("pre", {}, m.hex_preview ?? "")),
    table("Headers", ["Name", "Value"],
      m.headers.map(([name, value]) => h("tr", {}, h("td", {}, name), h("td", { class: "detail" }, value))),
      { "data-testid": "headers" }),
  ];
}

// --- dry runs -------------------------------------------------------------------------------

export function replayPlan(dry) {
  const rows = dry.plan.map((p) => h("tr", {},
    h("td", {}, `${p.message.topic}[${p.message.partition}]@${p.message.offset}`),
    h("td", {}, p.message.event_type ?? "—"),
    h("td", {}, p.message.booking_id ?? "—"),
    h("td", {}, p.replay ? badge("replay", "ok") : badge("skip", "muted"), p.skip ? ` ${p.skip}` : "", p.note ? ` ${p.note}` : ""),
    h("td", { class: "detail" }, p.effect ? p.effect.description : "—")));
  return [
    h("p", { "data-testid": "plan-summary" },
      `Would replay ${dry.would_replay} of ${dry.plan.length} message(s).`),
    table("Replay plan (dry run: nothing changed yet)", ["Message", "Event", "Booking", "Decision", "Effect on the saga"],
      rows, { "data-testid": "plan" }),
  ];
}

export function replayReport(report) {
  const c = report.counts;
  return [
    h("p", { "data-testid": "replay-result" },
      `Replay ${report.replay_id} by ${report.operator}: ${c.replayed} replayed, ${c.skipped} skipped, ${c.failed} failed.`),
    table("Outcome", ["Message", "Result", "Detail"], report.outcomes.map((o) => h("tr", {},
      h("td", {}, `${o.topic}[${o.partition}]@${o.offset}`), h("td", {}, o.result), h("td", { class: "detail" }, o.detail ?? "")))),
  ];
}

export function actionPlan(dry) {
  const event = dry.event || {};
  return [
    dry.refused
      ? h("p", { class: "error", "data-testid": "action-plan" }, `Refused: ${dry.refused}`)
      : h("p", { "data-testid": "action-plan" },
        `${dry.action}: ${dry.status_before ?? "(not requested yet)"} → ${dry.status_after ?? "(not requested yet)"}; `
        + `publishes ${event.event_type ?? "nothing"}.`),
    (dry.waiting_before || []).length
      ? h("div", {}, h("h3", {}, "The saga waits for"), h("ul", {}, dry.waiting_before.map((w) =>
        h("li", {}, h("strong", {}, w.who), ` — ${w.what}`))))
      : null,
    dry.event ? pairs("Event to publish", Object.entries(event).map(([k, v]) => [k, plain(v)])) : null,
  ];
}
