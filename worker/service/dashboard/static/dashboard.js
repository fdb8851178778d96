// Live parts: <div data-live="/events/..."> gets its HTML replaced by every "update" server-sent event.
// EventSource reconnects by itself after a network error; forms with data-confirm ask first.
document.querySelectorAll("[data-live]").forEach(function (part) {
  var source = new EventSource(part.dataset.live);
  source.addEventListener("update", function (event) {
    part.innerHTML = event.data;
    part.dataset.updates = String(Number(part.dataset.updates || 0) + 1);
  });
  window.addEventListener("beforeunload", function () { source.close(); });
});
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
  });
});
