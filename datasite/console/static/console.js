// A running job's progress poll (request.html) ends with the "run-finished" event on a response
// that also stops the poll (htmx: status 286): reload the page once to show the result.
document.addEventListener("run-finished", function () { window.location.reload(); });
