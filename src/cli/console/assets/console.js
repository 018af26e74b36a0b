// aitokens console: enhancement only; every flow works without this file.
"use strict";

// A section marked data-live-refresh="MS" is reloaded in place every MS ms
// (the Replace flow's "callers not switched yet").
function liveRefresh(section) {
  const every = Number(section.dataset.liveRefresh) || 2000;
  const tick = async () => {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById(section.id);
        if (fresh) section.replaceChildren(...fresh.childNodes);
      }
    } catch (_) {
      // Offline or stopped console: keep what is shown.
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// "Remove anyway" stays disabled until the token id is typed exactly.
function mustEqual(input) {
  const button = input.form && input.form.querySelector("button[type=submit]");
  if (!button) return;
  const check = () => { button.disabled = input.value.trim() !== input.dataset.mustEqual; };
  input.addEventListener("input", check);
  check();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-refresh]").forEach(liveRefresh);
  document.querySelectorAll("input[data-must-equal]").forEach(mustEqual);
});
