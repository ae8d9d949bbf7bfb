// What the two report pages (daily clearance, street sanitation index) share: the areas a report covers, local
// calendar arithmetic in a site's zone, and CSV downloads of the API's own CSV (the key travels in a header, so a
// plain link would be refused: the link names the API's address and a click fetches it with the key).
import { getBlob } from "./api.js";
import { esc, localDay, t } from "./i18n.js";

// Streets are a sorting point's parent of these kinds (processors/clearance.py STREET_KINDS)
const STREET_KINDS = ["estate", "urban_village"];
const byName = (a, b) => a.name.localeCompare(b.name);

export function reportAreas(app) {
  return {
    districts: app.sitesOfKind("district").sort(byName),
    streets: STREET_KINDS.flatMap((kind) => app.sitesOfKind(kind)).sort(byName),
  };
}

// <option>s for districts and streets, grouped; `allLabel` adds a first "all" choice (value "").
export function areaOptions({ districts, streets }, selected, allLabel = null) {
  const option = (s) => `<option value="${esc(s.site_id)}"${s.site_id === selected ? " selected" : ""}>${esc(s.name)}</option>`;
  const group = (label, sites) => (sites.length ? `<optgroup label="${esc(label)}">${sites.map(option).join("")}</optgroup>` : "");
  return (allLabel === null ? "" : `<option value="">${esc(allLabel)}</option>`)
    + group(t("report.districts"), districts) + group(t("report.streets"), streets);
}

// The calendar day `days` before `day` (YYYY-MM-DD): date arithmetic on the calendar, not on 24-hour steps
// (a local day across a DST change is 23 or 25 hours long).
export function addDays(day, days) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

// Yesterday in a site's zone: the last whole day, the one a daily clearance report judges finally.
export const yesterday = (tz, now = new Date()) => addDays(localDay(now, tz), -1);

// ISO 8601 week (YYYY-Www) of a calendar day: the week belongs to the year of its Thursday.
export function isoWeek(day) {
  const [y, m, d] = day.split("-").map(Number);
  const date = new Date(Date.UTC(y, m - 1, d));
  const weekday = date.getUTCDay() || 7;
  date.setUTCDate(date.getUTCDate() + 4 - weekday);
  const year = date.getUTCFullYear();
  const week = Math.floor((date - Date.UTC(year, 0, 1)) / 86400000 / 7) + 1;
  return `${year}-W${String(week).padStart(2, "0")}`;
}

// The last whole ISO week in a site's zone (the week before the current one).
export const lastWeek = (tz, now = new Date()) => isoWeek(addDays(localDay(now, tz), -7));

// A day or week the API answers for (api/routes/clearance.py: 1970 to 2199). A date field typed by hand changes
// digit by digit (year 0002, 0020, 0202, 2026): the ones before the last are not asked for.
const FIRST_YEAR = 1970;
const LAST_YEAR = 2199;
const inRange = (year) => Number(year) >= FIRST_YEAR && Number(year) <= LAST_YEAR;
export const isDay = (text) => /^\d{4}-\d{2}-\d{2}$/.test(text) && inRange(text.slice(0, 4));
export const isWeek = (text) => /^\d{4}-W\d{2}$/.test(text) && inRange(text.slice(0, 4));

// A link to one of the API's CSVs; `label` names the table for screen readers (several links share a text).
export function csvLink(path, filename, label) {
  return `<a class="csv" href="${esc(path)}" download="${esc(filename)}" data-csv="${esc(filename)}"
    aria-label="${esc(t("report.csvOf", { table: label }))}">${esc(t("report.csv"))}</a>`;
}

// Saves `data` (a Blob, or a data: URL such as a chart's PNG) as a download named `filename`.
export function saveAs(data, filename) {
  const url = typeof data === "string" ? data : URL.createObjectURL(data);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  if (url !== data) setTimeout(() => URL.revokeObjectURL(url), 1000); // after the browser has taken it
}

// Clicks on csvLink()s in `root` fetch the CSV with the key and save it under the link's file name. Returns the
// function that stops listening: `root` is the view every page shares, and a listener left behind would download
// once more for each earlier visit.
export function handleCsvLinks(root, app) {
  const onClick = async (event) => {
    const link = event.target.closest("a.csv");
    if (!link) return;
    event.preventDefault();
    try {
      saveAs(await getBlob(link.getAttribute("href")), link.getAttribute("download"));
    } catch (error) {
      app.fail(error);
    }
  };
  root.addEventListener("click", onClick);
  return () => root.removeEventListener("click", onClick);
}
