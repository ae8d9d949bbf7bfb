// The console's shell: sign-in, the role, the page router (#/alerts …), the language switch and messages.
import { ApiError, forgetKey, get, getAll, rememberKey, storedKey } from "./api.js";
import { initialLang, onLangChange, setLang, t, translate } from "./i18n.js";
// Pages load when first opened: the alerts board does not wait for ECharts (1 MB) that only the chart pages use.
const PAGES = {
  alerts: () => import("./pages/alerts.js"),
  fleet: () => import("./pages/fleet.js"),
  stations: () => import("./pages/stations.js"),
  sorting: () => import("./pages/sorting.js"),
  incineration: () => import("./pages/incineration.js"),
  clearance: () => import("./pages/clearance.js"),
  index: () => import("./pages/sanitation-index.js"),
};
const WRITE_ROLES = ["supervisor", "admin"]; // api/auth.py: supervisors acknowledge, assign and silence

const state = { me: null, sites: new Map(), cleanup: null, page: null };

export const app = {
  state,
  canWrite: () => state.me !== null && WRITE_ROLES.includes(state.me.role),
  site: (id) => state.sites.get(id),
  siteName: (id) => state.sites.get(id)?.name ?? id ?? "—",
  siteTz: (id) => state.sites.get(id)?.timezone ?? defaultTz(),
  sitesOfKind: (kind) => [...state.sites.values()].filter((s) => s.kind === kind),
  // #/incineration?plant=lhk&day=2024-05-01: a view's choices are in its address, so they can be linked to
  param: (name) => new URLSearchParams(location.hash.split("?")[1] || "").get(name),
  toast,
  fail,
};

function defaultTz() {
  // a device without a site: the city's zone, i.e. that of the first district (all sites of a city share it)
  const district = [...state.sites.values()].find((s) => s.kind === "district");
  return district?.timezone ?? "UTC";
}

let toastTimer = null;
function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 12000 : 4000);
}

// An API refusal is shown with the API's own message (a 403 says which role is needed).
function fail(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) {
      signOut(error.message === t("auth.revoked") ? error.message : t("auth.expired"));
      return;
    }
    toast(`${t("error.api")} ${error.status}: ${error.message}`, "error");
  } else if (error?.name !== "AbortError") {
    toast(`${t("error.network")}: ${error?.message ?? error}`, "error");
  }
}

function showSignedIn(signedIn) {
  document.getElementById("signin").hidden = signedIn;
  document.querySelector("nav.pages").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  const who = document.getElementById("who");
  who.hidden = !signedIn;
  if (signedIn) who.textContent = `${state.me.name} · ${t(`role.${state.me.role}`)}`;
}

function pageName() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  return Object.hasOwn(PAGES, name ?? "") ? name : "alerts"; // not PAGES[name]: #/constructor exists too
}

// Everything the first view needs is asked for at once: who the key is, the sites, the translations, the page's
// module and (the board) its data — not one after the other.
async function signIn(key, translations = Promise.resolve()) {
  rememberKey(key);
  const early = PAGES[pageName()]().then((module) => module.prefetch?.()).catch(() => {});
  try {
    const [me, sites] = await Promise.all([get("/me"), getAll("/sites", 20000), translations, early]);
    state.me = me;
    state.sites = new Map(sites.map((s) => [s.site_id, s]));
  } catch (error) {
    forgetKey();
    state.me = null;
    throw error;
  }
  document.body.dataset.role = state.me.role;
  showSignedIn(true);
  route();
}

function signOut(message) {
  forgetKey();
  state.me = null;
  state.sites = new Map();
  delete document.body.dataset.role;
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  state.page = null;
  document.getElementById("view").replaceChildren();
  showSignedIn(false);
  const error = document.getElementById("signin-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  document.getElementById("apikey").focus();
}

let routing = 0; // the newest navigation wins when a page module is still loading
async function route() {
  if (!state.me) return;
  const mine = ++routing;
  const page = pageName();
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  state.page = page;
  document.querySelectorAll("nav.pages a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const view = document.getElementById("view");
  view.replaceChildren();
  delete view.dataset.ready; // set again by the page once its data is shown
  view.dataset.page = page;
  document.title = `${t(`nav.${page}`)} · ${t("app.title")}`;
  let module;
  try {
    module = await PAGES[page]();
  } catch (error) {
    fail(error);
    return;
  }
  if (mine !== routing || !state.me) return;
  state.cleanup = module.render(view, app) ?? null;
}

async function start() {
  const select = document.getElementById("lang");
  const lang = initialLang();
  select.value = lang;
  const translations = setLang(lang);
  select.addEventListener("change", () => setLang(select.value));
  onLangChange(() => {
    if (state.me) {
      showSignedIn(true);
      route(); // re-render the page: chart labels, units and dates follow the language
    }
  });
  document.getElementById("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("apikey");
    const error = document.getElementById("signin-error");
    error.hidden = true;
    try {
      await signIn(input.value.trim());
      input.value = "";
      // The field that had the focus is hidden now. Left there, the browser's next Tab may start after the form,
      // in the page's content past the navigation, or at the top: it varied from run to run. Put the keyboard where
      // a fresh page load leads it, on the navigation: the current page's link.
      document.querySelector("nav.pages a[aria-current=page]")?.focus();
    } catch (e) {
      error.textContent = e instanceof ApiError ? e.message : String(e);
      error.hidden = false;
    }
  });
  document.getElementById("signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  const key = storedKey();
  if (key) {
    try {
      await signIn(key, translations);
      return;
    } catch (e) {
      await translations;
      signOut(e instanceof ApiError ? e.message : String(e));
      return;
    }
  }
  await translations;
  signOut();
}

start();
