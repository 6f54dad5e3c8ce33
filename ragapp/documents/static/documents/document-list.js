// Refresh the list while any document on it is still being ingested, so progress moves live.
window.addEventListener("load", function () {
  const busy = document.querySelector(".doc-status-queued, .doc-status-parsing, .doc-status-chunking, .doc-status-embedding");
  const selecting = () => document.querySelector("#result_list input.action-select:checked");
  if (busy) { setInterval(function () { if (!selecting()) { window.location.reload(); } }, 3000); }
});
