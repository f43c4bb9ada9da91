// batchctl dashboard: live updates over server-sent events. Only text (textContent) or HTML
// fragments rendered (and escaped) by the server are inserted; nothing a job wrote is parsed here.
"use strict";

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

async function refresh(url, target) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.ok) target.innerHTML = await response.text();
}

function flash(text) {
  const box = document.createElement("div");
  box.className = "flash";
  box.textContent = text;
  document.body.appendChild(box);
  setTimeout(() => box.remove(), 4000);
}

function watchEvents(query, onEvent) {
  const source = new EventSource("/api/events" + query);
  source.addEventListener("status", (message) => onEvent(JSON.parse(message.data)));
  return source;
}

function executionsPage() {
  const table = document.getElementById("executions");
  if (!table) return;
  const body = table.tBodies[0];
  const url = new URL(window.location.href);
  url.searchParams.set("fragment", "1");
  const update = debounce(() => refresh(url.toString(), body), 250);
  watchEvents("", (event) => {
    if (event.step !== null) return;
    const shown = body.querySelector(`tr[data-id="${event.execution_id}"]`);
    if (shown || table.dataset.live === "1") update();
  });
}

function executionPage() {
  const live = document.getElementById("live");
  if (!live) return;
  const id = live.dataset.id;
  const update = debounce(() => refresh(`/executions/${id}?fragment=1`, live), 200);
  watchEvents(`?execution=${id}`, update);
  setInterval(update, 5000); // counters change between status events
  live.addEventListener("click", async (click) => {
    const button = click.target.closest("button.action");
    if (!button || button.disabled) return;
    const action = button.dataset.action;
    if (!window.confirm(`${action} execution ${id}?`)) return;
    const response = await fetch(`/api/executions/${id}/${action}`, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    });
    const data = await response.json();
    if (!response.ok) { flash(data.error.message); return; }
    if (action === "restart") { window.location.href = `/executions/${data.id}`; return; }
    update();
  });
  const log = document.getElementById("log");
  if (log) {
    const source = new EventSource(`/api/executions/${id}/log?follow=1`);
    source.addEventListener("line", (message) => {
      log.appendChild(document.createTextNode(JSON.parse(message.data) + "\n"));
      log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", () => source.close());
  }
}

function startForm() {
  const form = document.getElementById("start");
  if (!form) return;
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    form.querySelectorAll(".field-error, .form-error").forEach((e) => { e.textContent = ""; });
    form.querySelectorAll("input.invalid").forEach((e) => e.classList.remove("invalid"));
    const params = {};
    for (const input of form.querySelectorAll("input[data-type]")) {
      if (input.dataset.type === "bool") params[input.name] = input.checked;
      else if (input.value !== "") params[input.name] = input.value;
    }
    const response = await fetch(`/api/jobs/${encodeURIComponent(form.dataset.job)}/start`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ params }),
    });
    const data = await response.json();
    if (response.ok) { window.location.href = `/executions/${data.id}`; return; }
    const message = data.error.message;
    for (const slot of form.querySelectorAll(".field-error")) {
      if (message.includes(`'${slot.dataset.for}'`)) {
        slot.textContent = message;
        const input = form.querySelector(`input[name="${CSS.escape(slot.dataset.for)}"]`);
        if (input) input.classList.add("invalid");
        return;
      }
    }
    form.querySelector(".form-error").textContent = message;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  executionsPage();
  executionPage();
  startForm();
});
