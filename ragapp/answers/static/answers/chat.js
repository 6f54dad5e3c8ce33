// The chat page: ask, stream the answer, open citations, copy, rate. No build step, no framework.
// Text from the server is only ever set with textContent; the one exception is the answer's
// final HTML, which the server rendered from Markdown and sanitised.
(function () {
  "use strict";

  const main = document.querySelector("main.chat");
  const form = document.getElementById("ask-form");
  const turns = document.getElementById("turns");
  const errorBox = document.getElementById("ask-error");
  const panel = document.getElementById("passage-panel");
  let conversation = main.dataset.conversation;

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  // ----- citations -------------------------------------------------------------------------

  function openPassage(citation, question) {
    document.getElementById("panel-title").textContent = "[" + citation.number + "] " + citation.title;
    document.getElementById("panel-page").textContent = citation.page ? "Page " + citation.page : "";
    const quote = document.getElementById("panel-text");
    quote.replaceChildren(...highlighted(citation.text, question || ""));
    const link = document.getElementById("panel-link");
    if (citation.document) {
      link.href = "/documents/" + citation.document + "/file" + (citation.page ? "#page=" + citation.page : "");
      link.hidden = false;
    } else {
      link.hidden = true;
    }
    panel.hidden = false;
    const mark = quote.querySelector("mark");
    (mark || quote).scrollIntoView({block: "nearest"});
  }

  // The passage as text nodes, with the question's longer words marked, so the relevant part shows.
  function highlighted(text, question) {
    const words = question.toLowerCase().match(/[\p{L}\p{N}]{4,}/gu) || [];
    if (!words.length) return [document.createTextNode(text)];
    const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp("(" + escaped.join("|") + ")", "giu");
    return text.split(pattern).map((part, index) =>
      index % 2 ? element("mark", "", part) : document.createTextNode(part));
  }

  // Without a generated answer the passages are the reply: they are shown open.
  function wireAnswer(item, citations, question, generated) {
    const byNumber = new Map(citations.map((c) => [c.number, c]));
    item.querySelectorAll("button.citation").forEach((button) => {
      const citation = byNumber.get(Number(button.dataset.citation));
      if (citation) button.addEventListener("click", () => openPassage(citation, question));
    });
    const list = item.querySelector(".passages");
    list.replaceChildren();
    if (citations.length) {
      const details = element("details");
      details.open = !generated;
      details.append(element("summary", "", "Passages (" + citations.length + ")"));
      const ol = element("ol");
      citations.forEach((citation) => {
        const li = element("li");
        const button = element("button", "passage-link", "[" + citation.number + "] " + citation.title +
          (citation.page ? ", page " + citation.page : ""));
        button.type = "button";
        button.addEventListener("click", () => openPassage(citation, question));
        li.append(button);
        ol.append(li);
      });
      details.append(ol);
      list.append(details);
    }
    addActions(item);
  }

  // ----- copy and feedback -----------------------------------------------------------------

  function addActions(item) {
    const actions = item.querySelector(".actions");
    actions.replaceChildren();
    const copy = element("button", "copy", "Copy");
    copy.type = "button";
    copy.addEventListener("click", async () => {
      const text = item.querySelector(".answer-text").innerText;
      try {
        await navigator.clipboard.writeText(text);
        copy.textContent = "Copied";
      } catch (error) {
        copy.textContent = "Copy failed";
      }
    });
    actions.append(copy);
    if (!item.dataset.message) return;
    const rating = item.querySelector(".rating-data");
    const current = rating ? Number(rating.textContent) : 0;
    // Words, not emoji: a machine without an emoji font shows empty boxes.
    for (const [value, label] of [["up", "Helpful"], ["down", "Not helpful"]]) {
      const button = element("button", "rate rate-" + value, label);
      button.type = "button";
      button.setAttribute("aria-pressed", String((value === "up" && current > 0) || (value === "down" && current < 0)));
      button.addEventListener("click", () => rate(item, value));
      actions.append(button);
    }
  }

  function rate(item, value) {
    const actions = item.querySelector(".actions");
    let box = actions.querySelector("form.comment");
    if (!box) {
      box = element("form", "comment");
      const input = element("input");
      input.name = "comment";
      input.placeholder = "Optional comment";
      const send = element("button", "", "Send");
      send.type = "submit";
      box.append(input, send);
      actions.append(box);
      box.addEventListener("submit", (event) => {
        event.preventDefault();
        sendFeedback(item, box.dataset.rating, input.value);
      });
    }
    box.dataset.rating = value;
    sendFeedback(item, value, box.querySelector("input").value);
  }

  async function sendFeedback(item, value, comment) {
    const url = main.dataset.feedbackUrl.replace("/0/", "/" + item.dataset.message + "/");
    const body = new URLSearchParams({rating: value, comment: comment || ""});
    const response = await fetch(url, {method: "POST", body, headers: {"X-CSRFToken": csrfToken()}});
    const status = item.querySelector(".feedback-status") || element("span", "feedback-status");
    status.setAttribute("role", "status");
    if (response.ok) {
      item.querySelectorAll(".rate").forEach((button) =>
        button.setAttribute("aria-pressed", String(button.classList.contains("rate-" + value))));
      status.textContent = "Thanks: feedback saved.";
    } else {
      status.textContent = "Feedback was not saved (" + response.status + "): try again.";
    }
    item.querySelector(".actions").append(status);
  }

  // ----- asking ----------------------------------------------------------------------------

  async function ask(question) {
    errorBox.hidden = true;
    turns.append(element("li", "turn question", question));
    const item = element("li", "turn answer streaming");
    const notice = element("p", "notice");
    notice.hidden = true;
    const text = element("div", "answer-text");
    text.append(element("span", "thinking", "Searching the documents…"));
    item.append(notice, text, element("div", "passages"), element("div", "actions"));
    turns.append(item);
    item.scrollIntoView({block: "end"});

    const body = new URLSearchParams({question});
    if (conversation) body.set("conversation", conversation);
    else body.set("collection", document.getElementById("collection").value);
    const response = await fetch(main.dataset.askUrl, {method: "POST", body, headers: {"X-CSRFToken": csrfToken()}});
    if (!response.ok) {
      item.remove();
      let message = "The question could not be asked (" + response.status + ").";
      try { message = (await response.json()).error || message; } catch (error) { /* not JSON */ }
      showError(message);
      return;
    }
    let streamed = "";
    await readEvents(response, (event) => {
      if (event.event === "start") {
        if (!conversation) {
          conversation = String(event.conversation);
          window.history.replaceState(null, "", "/chat/" + conversation);
        }
      } else if (event.event === "passages") {
        text.querySelector(".thinking") && (text.querySelector(".thinking").textContent = "Writing the answer…");
      } else if (event.event === "token") {
        if (!streamed) text.replaceChildren();
        streamed += event.text;
        text.textContent = streamed;
      } else if (event.event === "done") {
        item.classList.remove("streaming");
        item.dataset.message = event.message;
        text.innerHTML = event.html;  // rendered and sanitised by the server
        if (!event.generated && !event.answer) text.replaceChildren(element("p", "muted", "No answer was generated."));
        if (event.notice) {
          notice.textContent = event.notice;
          notice.hidden = false;
        }
        wireAnswer(item, event.citations, event.standalone_question || question, event.generated);
      } else if (event.event === "error") {
        showError(event.message);
      }
    });
  }

  async function readEvents(response, handle) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) handle(JSON.parse(line));
      }
    }
  }

  // ----- start -----------------------------------------------------------------------------

  document.querySelectorAll("li.turn.answer").forEach((item) => {
    const data = item.querySelector(".citations-data script");
    const question = item.previousElementSibling ? item.previousElementSibling.textContent : "";
    wireAnswer(item, data ? JSON.parse(data.textContent) : [], question, item.dataset.generated !== "false");
  });
  document.getElementById("panel-close").addEventListener("click", () => { panel.hidden = true; });
  // The conversation list starts open beside the chat, folded on a phone (where it sits above it).
  const conversationList = document.getElementById("history");
  if (conversationList && window.matchMedia("(min-width: 900px)").matches) conversationList.open = true;
  if (form) {
    const input = document.getElementById("question");
    const button = document.getElementById("ask-button");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const question = input.value.trim();
      if (!question) return;
      input.value = "";
      button.disabled = true;
      try {
        await ask(question);
      } catch (error) {
        showError("The answer was interrupted: " + error.message + ". Try again.");
      } finally {
        button.disabled = false;
        input.focus();
      }
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
  }
})();
