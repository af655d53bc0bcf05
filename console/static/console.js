// strongroom console: keyboard navigation (no inline script anywhere: CSP).
//   /  focus the query      j / k  next / previous message or hit
"use strict";
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if (e.key === "/") {
    const q = document.getElementById("q");
    if (q) { e.preventDefault(); q.focus(); }
    return;
  }
  if (e.key !== "j" && e.key !== "k") return;
  const items = Array.from(document.querySelectorAll(".bubble, .hit"));
  if (!items.length) return;
  const at = items.indexOf(document.activeElement);
  const next = items[Math.max(0, Math.min(items.length - 1, at + (e.key === "j" ? 1 : -1)))];
  next.setAttribute("tabindex", "-1");
  next.focus();
  next.scrollIntoView({ block: "nearest" });
});
