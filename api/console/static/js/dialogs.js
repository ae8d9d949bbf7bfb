// Small modal forms on <dialog> (keyboard: Tab moves, Escape cancels, Enter submits).
import { esc, t } from "./i18n.js";

// Ask for one line of text; resolves to the text, or null when cancelled.
export function ask({ title, label, value = "", multiline = false, submit }) {
  return new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.className = "ask";
    const field = multiline ? `<textarea name="value" rows="3">${esc(value)}</textarea>`
      : `<input name="value" value="${esc(value)}" autocomplete="off">`;
    dialog.innerHTML = `<form method="dialog"><h2>${esc(title)}</h2>
      <label>${esc(label)} ${field}</label>
      <div class="buttons"><button value="cancel" type="button" data-role="cancel">${esc(t("common.cancel"))}</button>
      <button value="ok" type="submit" class="primary">${esc(submit)}</button></div></form>`;
    document.body.append(dialog);
    const input = dialog.querySelector("[name=value]");
    dialog.querySelector("[data-role=cancel]").addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? input.value : null);
      dialog.remove();
    });
    dialog.showModal();
    input.focus();
  });
}
