// Progressive enhancement only: every page works without JavaScript. The CSP forbids inline scripts.
document.querySelectorAll("[data-copy]").forEach((button) => {
  button.addEventListener("click", async () => {
    const id = button.getAttribute("data-copy");
    const field = document.getElementById(id);
    const status = document.querySelector(`[data-copied="${id}"]`);
    try {
      await navigator.clipboard.writeText(field.value);
      if (status) status.textContent = "Copied.";
    } catch {
      field.select();
      if (status) status.textContent = "Press Ctrl+C (or Cmd+C) to copy.";
    }
  });
});
