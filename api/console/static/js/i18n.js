// Translations (i18n/<lang>.json) and locale-aware formatting. Dates are shown in the time zone of the site they
// belong to (Intl.DateTimeFormat with timeZone), never the browser's.
export const LANGS = ["zh-CN", "en"];
const PREF = "sanitel.lang"; // a preference, not a secret: localStorage is fine here
let lang = "en";
let dict = {};
const listeners = [];

export function initialLang() {
  const saved = localStorage.getItem(PREF);
  if (LANGS.includes(saved)) return saved;
  return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

export async function setLang(next) {
  const response = await fetch(`/console/i18n/${next}.json`);
  dict = await response.json();
  lang = next;
  localStorage.setItem(PREF, next);
  document.documentElement.lang = next;
  translate(document);
  listeners.forEach((fn) => fn(next));
}

export const currentLang = () => lang;
export const onLangChange = (fn) => listeners.push(fn);

// t("alerts.counts", {open: 3, firing: 1}) → the entry with {n} replaced; a missing key shows itself (visible in screenshots).
export function t(key, vars = {}) {
  const text = dict[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] ?? `{${name}}`));
}

// t() for a value the API names (a status, a pollutant): its own text when there is no translation for it yet.
export function tValue(prefix, value) {
  const key = `${prefix}.${value}`;
  return key in dict ? dict[key] : String(value);
}

// Whether there is a translation for `key` (an optional explanation of a value the API names).
export const has = (key) => key in dict;

export function translate(root) {
  root.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  root.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  root.querySelectorAll("[data-i18n-label]").forEach((el) => { el.setAttribute("aria-label", t(el.dataset.i18nLabel)); });
}

const formats = new Map();
function formatter(tz, options) {
  const id = `${lang}|${tz}|${JSON.stringify(options)}`;
  if (!formats.has(id)) formats.set(id, new Intl.DateTimeFormat(lang, { timeZone: tz || "UTC", ...options }));
  return formats.get(id);
}

export function fmtTime(iso, tz, { seconds = false, date = true } = {}) {
  if (!iso) return "—";
  const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (seconds) options.second = "2-digit";
  if (date) Object.assign(options, { year: "numeric", month: "2-digit", day: "2-digit" });
  return formatter(tz, options).format(new Date(iso));
}

export function fmtHour(ms, tz) {
  return formatter(tz, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(ms));
}

export function fmtNum(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return new Intl.NumberFormat(lang, { maximumFractionDigits: digits }).format(value);
}

// The local calendar day (YYYY-MM-DD) of an instant in a time zone.
export function localDay(date, tz) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz || "UTC", year: "numeric", month: "2-digit", day: "2-digit" })
    .format(date);
}

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
