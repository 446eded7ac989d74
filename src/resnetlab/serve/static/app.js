// Send the chosen or dropped image to POST /predict; show the top-5 and the overlay.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("file");
const status = document.getElementById("status");

function say(text, isError) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function show(answer) {
  document.getElementById("overlay").src = answer.overlay;
  document.getElementById("caption").textContent = answer.explained.caption;
  const list = document.getElementById("top");
  list.replaceChildren(...answer.top.map((entry) => {
    const percent = (100 * entry.probability).toFixed(1);
    const item = document.createElement("li");
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.className = "class";
    name.textContent = entry.class;
    const value = document.createElement("span");
    value.textContent = percent + "%";
    label.append(name, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = percent + "%";
    bar.append(fill);
    item.append(label, bar);
    return item;
  }));
  document.getElementById("result").hidden = false;
}

async function send(file) {
  if (!file) return;
  say("Looking at " + file.name + "...", false);
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const text = await response.text();
    if (!response.ok) {
      let detail = text;
      try { detail = JSON.parse(text).detail; } catch (_) { /* plain text */ }
      say(detail + " (HTTP " + response.status + ")", true);
      return;
    }
    show(JSON.parse(text));
    say(file.name, false);
  } catch (error) {
    say("The server did not answer: " + error, true);
  }
}

input.addEventListener("change", () => send(input.files[0]));
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  send(event.dataTransfer.files[0]);
});
