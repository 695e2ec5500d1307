// Kagzi's dashboard script: refreshes the parts of a page marked `data-refresh` (every that
// many milliseconds) while the page is visible and nobody is typing in a form, and asks before
// a form marked `data-confirm` is sent. The pages work without it.
(function () {
  "use strict";

  function typing() {
    const active = document.activeElement;
    return active && active.closest && active.closest("form") !== null &&
      (active.tagName === "INPUT" || active.tagName === "TEXTAREA" || active.tagName === "SELECT");
  }

  async function refresh() {
    const parts = document.querySelectorAll("[data-refresh][id]");
    if (parts.length === 0 || document.hidden || typing()) {
      return;
    }
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok || answer.redirected) {
      return;
    }
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const part of parts) {
      const next = fresh.getElementById(part.id);
      if (next) {
        // Keep folded or unfolded JSON as the reader left it.
        const open = new Map();
        part.querySelectorAll("details[id]").forEach((d) => open.set(d.id, d.open));
        next.querySelectorAll("details[id]").forEach((d) => {
          if (open.has(d.id)) d.open = open.get(d.id);
        });
        part.replaceWith(next);
      }
    }
    document.dispatchEvent(new CustomEvent("kagzi:refreshed"));
  }

  function schedule() {
    const part = document.querySelector("[data-refresh][id]");
    if (!part) {
      return;
    }
    const every = Math.max(500, parseInt(part.getAttribute("data-refresh"), 10) || 2000);
    setTimeout(() => refresh().catch(() => {}).finally(schedule), every);
  }

  document.addEventListener("submit", (event) => {
    const question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", schedule);
  } else {
    schedule();
  }
})();
