// The run page, live: follows the run's event stream and adds what arrives.
// Everything from the run is inserted as text (textContent), never as HTML.
"use strict";

(function () {
  const root = document.getElementById("run");
  if (!root) {
    return;
  }
  setUpCancel(root);
  if (root.dataset.live !== "true") {
    return;
  }
  const answer = document.getElementById("answer");
  const activity = document.getElementById("activity");
  const status = document.getElementById("status");
  const tools = new Map();
  for (const element of activity.querySelectorAll("[data-tool-id]")) {
    tools.set(element.getAttribute("data-tool-id"), element);
  }
  let thinking = null;
  const last = activity.lastElementChild;
  if (last && last.classList.contains("thinking")) {
    thinking = last.querySelector("pre");
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function add(node) {
    const empty = document.getElementById("no-activity");
    if (empty) {
      empty.remove();
    }
    activity.appendChild(node);
    thinking = null;
  }

  function setStatus(value) {
    status.textContent = value;
    status.className = "status status-" + value;
  }

  function apply(type, data) {
    if (status.textContent === "pending") {
      setStatus("running");
    }
    if (type === "text_delta") {
      answer.appendChild(document.createTextNode(String(data.text || "")));
    } else if (type === "reasoning_delta") {
      if (thinking === null) {
        const block = element("details", "thinking");
        block.appendChild(element("summary", "", "Thinking"));
        const text = element("pre", "", "");
        block.appendChild(text);
        add(block);
        thinking = text;
      }
      thinking.appendChild(document.createTextNode(String(data.text || "")));
    } else if (type === "tool_call") {
      const block = element("details", "tool");
      const summary = element("summary");
      summary.appendChild(element("span", "tool-name", String(data.name || "tool")));
      summary.appendChild(document.createTextNode(" "));
      summary.appendChild(element("span", "tool-summary", String(data.summary || "")));
      summary.appendChild(document.createTextNode(" "));
      summary.appendChild(element("span", "tool-state", "running"));
      block.appendChild(summary);
      block.appendChild(element("h3", "", "Input"));
      block.appendChild(element("pre", "tool-input", JSON.stringify(data.input || {}, null, 2)));
      block.appendChild(element("h3", "", "Output"));
      block.appendChild(element("pre", "tool-output", ""));
      tools.set(String(data.id), block);
      add(block);
    } else if (type === "tool_result") {
      const block = tools.get(String(data.id));
      if (block) {
        block.querySelector(".tool-output").textContent = String(data.output || "");
        let state = data.is_error ? "failed" : "done";
        if (data.is_error && typeof data.exit_code === "number") {
          state += " (exit " + data.exit_code + ")";
        }
        block.querySelector(".tool-state").textContent = state;
      }
    } else if (type === "progress" || type === "warning") {
      add(element("p", "note note-" + type, String(data.text || "")));
    } else if (type === "agent_error") {
      add(element("p", "note note-error", String(data.message || "")));
    }
  }

  // EventSource reconnects by itself after a dropped connection and sends Last-Event-ID
  // (each event's id is its seq), so the stream resumes where it stopped.
  const url = new URL(root.dataset.events, window.location.href);
  url.searchParams.set("after", root.dataset.after || "0");
  const source = new EventSource(url.toString());
  source.onmessage = function (message) {
    const event = JSON.parse(message.data);
    root.dataset.after = String(event.seq);
    apply(event.type, event.data || {});
  };
  source.addEventListener("end", function (message) {
    source.close();
    const end = JSON.parse(message.data);
    if (end.status) {
      setStatus(end.status);
    }
    // The finished page has the answer as Markdown and the result files with previews.
    window.location.reload();
  });
})();

function setUpCancel(root) {
  const button = document.getElementById("cancel");
  const result = document.getElementById("cancel-result");
  if (!button || !root.dataset.cancel) {
    return;
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    fetch(root.dataset.cancel, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "jetty-run-page" },
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (response.ok) {
            result.textContent = "Cancelled.";
          } else {
            result.textContent = (body.error && body.error.message) || "Could not cancel.";
            button.disabled = false;
          }
        });
      })
      .catch(function () {
        result.textContent = "Could not reach the server.";
        button.disabled = false;
      });
  });
}
