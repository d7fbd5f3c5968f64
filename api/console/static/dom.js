// Building the page from data without ever parsing data as HTML.
//
// Every value the console shows (customer ids, reasons, error texts, whole event payloads)
// is hostile input. `h` sets text with text nodes and attributes with setAttribute from a
// fixed list of names, so no value can become markup or a script: nothing in the console
// assigns HTML.

const ATTRIBUTES = new Set([
  "id", "class", "href", "type", "for", "name", "value", "title", "role", "colspan",
  "scope", "min", "max", "step", "placeholder", "hidden", "disabled", "checked", "selected",
  "aria-label", "aria-live", "aria-describedby", "aria-current", "aria-busy", "aria-modal",
  "aria-labelledby", "tabindex", "datetime", "data-testid", "data-booking-id", "data-topic",
  "data-kind", "data-status", "data-event-id", "data-stuck", "data-stuck-reason", "data-who",
  "data-what", "rows", "autocomplete", "spellcheck",
]);

/** An element: h("td", {class: "num"}, "12"); children may be nodes, strings, arrays or null. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (ATTRIBUTES.has(name)) {
      if (name === "href" && !String(value).startsWith("#")) {
        throw new Error("the console links only to its own screens");
      }
      element.setAttribute(name, value === true ? "" : String(value));
    } else {
      throw new Error(`attribute not allowed: ${name}`);
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace an element's content. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** "2026-01-28 10:00:03" in the operator's time zone, or "—". */
export function time(iso) {
  if (!iso) return "—";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} `
    + `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
}

/** 75 -> "1m 15s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "—";
  let s = Math.max(0, Math.round(Number(seconds)));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** A value of a decoded event as one line of text (objects as JSON). */
export function plain(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** {amount: 4500, currency: "JPY"} -> "¥4,500"; the currency's ISO 4217 minor units come from
 * the browser's Intl data, so yen have none and euros two. */
export function money(price) {
  if (!price || typeof price.amount !== "number" || typeof price.currency !== "string") return "—";
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency: price.currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(price.amount / 10 ** digits);
  } catch (error) {
    return `${price.amount} ${price.currency} (minor units)`;
  }
}
