// strongroom console: keyboard navigation (no inline script anywhere: CSP).
//   /  focus the query      j / k  next / previous message or hit      n / p  next / previous search hit
"use strict";
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if (e.key === "/") {
    const q = document.getElementById("q");
    if (q) { e.preventDefault(); q.focus(); }
    return;
  }
  if (e.key !== "j" && e.key !== "k" && e.key !== "n" && e.key !== "p") return;
  const hitsOnly = e.key === "n" || e.key === "p";
  const items = Array.from(document.querySelectorAll(hitsOnly ? ".bubble.is-hit" : ".bubble, .hit"));
  if (!items.length) return;
  const forward = e.key === "j" || e.key === "n";
  let at = items.indexOf(document.activeElement);
  if (at < 0) at = items.indexOf(document.querySelector(".bubble.is-target"));  // the hit the page opened on
  const i = at < 0 ? (forward ? 0 : items.length - 1) : Math.max(0, Math.min(items.length - 1, at + (forward ? 1 : -1)));
  const next = items[i];
  next.setAttribute("tabindex", "-1");
  next.focus();
  next.scrollIntoView({ block: "nearest" });
});
