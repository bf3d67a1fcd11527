// fairway dashboard: confirmation before every action, live refresh of the overview. Plain JS, no build.
"use strict";

// Every action form carries data-confirm: nothing is sent until the operator says yes.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const submitter = event.submitter;
  const question = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// The overview replaces its live part with a fragment fetched from the server, without a reload.
function startRefresh(live) {
  const url = live.dataset.refresh;
  const interval = Number(live.dataset.interval) || 3000;
  const status = document.getElementById("refreshed");
  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      live.innerHTML = await response.text();
      if (status) {
        status.textContent = "updated " + new Date().toLocaleTimeString();
        status.classList.remove("error");
      }
    } catch (error) {
      if (status) {
        status.textContent = "refresh failed (" + error.message + "), retrying";
        status.classList.add("error");
      }
    } finally {
      window.setTimeout(refresh, interval);
    }
  }
  window.setTimeout(refresh, interval);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.refresh) {
    startRefresh(live);
  }
});
