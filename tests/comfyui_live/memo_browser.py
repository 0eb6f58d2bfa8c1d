"""Drive the ComfyUI web page in a real Chromium, as a user does, for comfyui-memo's live tests.

Needs the `playwright` Python package and a system Chromium (Debian: `apt-get install chromium`);
Playwright's own browser download is never used: the browser is launched from
  MEMO_CHROMIUM   path of the Chromium executable (default: /usr/bin/chromium, then `chromium` on PATH).
Without either, `why_no_browser()` says why and the browser tests skip, unless
  MEMO_REQUIRE_BROWSER=1 (set by .ci/run after installing both), where a missing browser fails them.

`ComfyPage` opens the editor of a running server and records every alert the page raises: toast
messages (the frontend's "Invalid workflow against zod schema" alert is one), native dialogs and
uncaught page errors; `open_dialogs()` lists modal dialogs (the missing-node warning is one).
Files are dropped onto the page with a real `drop` event carrying a File, the path a user's
drag-and-drop takes (the frontend's document drop handler -> app.handleFile).
"""
from __future__ import annotations

import base64
import os
import shutil
import time

DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Installed before any page script runs: keeps the text of every toast that appears, even after it fades.
_TOAST_RECORDER = """
(() => {
  window.__memoToasts = [];
  const seen = new WeakSet();
  const scan = (root) => {
    if (!(root instanceof Element)) return;
    const found = root.matches('.p-toast-message') ? [root] : Array.from(root.querySelectorAll('.p-toast-message'));
    for (const el of found) {
      if (seen.has(el)) continue;
      seen.add(el);
      setTimeout(() => window.__memoToasts.push({cls: el.className, text: el.innerText}), 50);
    }
  };
  new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach(scan)))
    .observe(document, {childList: true, subtree: true});
})();
"""


def chromium_path() -> str | None:
    explicit = os.environ.get("MEMO_CHROMIUM", "").strip()
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access(DEFAULT_CHROMIUM, os.X_OK):
        return DEFAULT_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_required() -> bool:
    return os.environ.get("MEMO_REQUIRE_BROWSER", "").strip() not in ("", "0")


def why_no_browser() -> str | None:
    """Reason the browser tests cannot run here, or None (see MEMO_REQUIRE_BROWSER)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' Python package is not installed (pip install playwright; no browser download needed)"
    if chromium_path() is None:
        where = os.environ.get("MEMO_CHROMIUM") or DEFAULT_CHROMIUM
        return f"no Chromium executable at {where} (apt-get install chromium, or set MEMO_CHROMIUM)"
    return None


class Browser:
    """A headless Chromium from the system, driven by Playwright (use as a context manager)."""

    def __init__(self, viewport=(1400, 900)):
        self.viewport = {"width": viewport[0], "height": viewport[1]}
        self._pw = self._browser = None

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            self._browser = self._pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            self._pw.stop()

    def open_comfy(self, url: str, timeout: float = 120, viewport=None) -> "ComfyPage":
        size = {"width": viewport[0], "height": viewport[1]} if viewport else self.viewport
        page = self._browser.new_page(viewport=size)
        return ComfyPage(page, url).open(timeout)


class ComfyPage:
    def __init__(self, page, url: str):
        self.page = page
        self.url = url.rstrip("/")
        self.native_dialogs: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.responses: list[tuple[str, int]] = []  # (url, HTTP status) of everything the page fetched
        page.add_init_script(_TOAST_RECORDER)
        page.on("dialog", self._on_dialog)
        page.on("response", lambda r: self.responses.append((r.url, r.status)))
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)

    def _on_dialog(self, dialog) -> None:
        self.native_dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def open(self, timeout: float = 120) -> "ComfyPage":
        self.page.goto(self.url + "/", timeout=timeout * 1000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas "
                                    "&& window.app.extensionManager", timeout=timeout * 1000)
        self.page.wait_for_load_state("networkidle", timeout=timeout * 1000)
        return self

    # ---- what the user sees
    def toasts(self) -> list[dict]:
        return self.page.evaluate("() => window.__memoToasts.slice()")

    def alerts(self) -> list[str]:
        """Toasts (all but plain info ones) and native dialogs seen so far. The zod-schema alert is a
        "warn" toast; the link repair after loading a graph with bad links says so in a "success" one."""
        found = [t["text"] for t in self.toasts() if "p-toast-message-info" not in t["cls"]]
        return found + self.native_dialogs

    def open_dialogs(self) -> list[str]:
        """Text (first 300 characters) of every modal dialog on screen."""
        return self.page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog'))"
                                  ".filter((e) => e.offsetParent !== null).map((e) => e.innerText.slice(0, 300))")

    def close_dialogs(self) -> None:
        """Close modal dialogs with their Close button, as a user does."""
        for _ in range(5):
            if not self.open_dialogs():
                return
            # the dialog's close button: labelled "Close", or (template browser) the one with the X icon
            buttons = self.page.locator(".p-dialog button[aria-label='Close'], .p-dialog button:has(i.pi-times)")
            if buttons.count():
                buttons.first.click()
            else:
                self.page.keyboard.press("Escape")
            time.sleep(0.5)
        raise AssertionError(f"dialogs stay open: {self.open_dialogs()}")

    def run_command(self, command_id: str) -> None:
        self.page.evaluate("(id) => window.app.extensionManager.command.execute(id)", command_id)

    # ---- the graph
    def drop_file(self, name: str, data: bytes, mime: str, settle: float = 1.5) -> None:
        """Drop a file on the page as drag-and-drop from the desktop does."""
        self.page.evaluate(
            """async ([name, b64, mime]) => {
                 const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                 const dt = new DataTransfer();
                 dt.items.add(new File([bytes], name, {type: mime}));
                 const target = document.querySelector('#graph-canvas') || document.body;
                 target.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
                 document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
               }""", [name, base64.b64encode(data).decode(), mime])
        self.wait_idle(settle)

    def wait_idle(self, settle: float = 1.0) -> None:
        self.page.wait_for_load_state("networkidle")
        time.sleep(settle)

    def graph(self) -> dict:
        """The loaded graph as the editor would save it."""
        return self.page.evaluate("() => window.app.graph.serialize()")

    def node_layout(self, badge_height: float = 0, samples: int = 5) -> dict:
        """Where the loaded graph's nodes are on the page, as drawn: {"scale", "low_quality", "window",
        "nodes": [{"id", "title", "size", "min_size", "graph_box", "page_box", "hidden": [[x, y, element]]}]}.
        graph_box is LGraphNode.getBounding() (title bar included) raised by `badge_height` (the node source
        badge drawn above the title), as (left, top, right, bottom) in graph units; page_box the same in page
        pixels through the canvas view (page = canvas origin + (graph + offset) * scale). `hidden` lists the
        points of a samples x samples grid over page_box where something else than the canvas, or a node's own
        DOM widget, is on top (document.elementFromPoint): the top bar, the sidebar, the minimap, a dialog."""
        return self.page.evaluate(
            """([badge, samples]) => {
                 const canvas = window.app.canvas, el = canvas.canvas, rect = el.getBoundingClientRect();
                 const scale = canvas.ds.scale, [ox, oy] = canvas.ds.offset;
                 const toPage = (b) => [rect.left + (b[0] + ox) * scale, rect.top + (b[1] + oy) * scale,
                                        rect.left + (b[2] + ox) * scale, rect.top + (b[3] + oy) * scale];
                 const describe = (e) => e ? `${e.tagName.toLowerCase()}.${String(e.className).slice(0, 60)}` : 'nothing';
                 const nodes = window.app.graph._nodes.map((node) => {
                   const b = new Float32Array(4);
                   node.getBounding(b);
                   const graphBox = [b[0], b[1] - badge, b[0] + b[2], b[1] + b[3]];
                   const pageBox = toPage(graphBox), hidden = [];
                   for (let i = 0; i < samples; i++) for (let j = 0; j < samples; j++) {
                     const x = pageBox[0] + 1 + (pageBox[2] - pageBox[0] - 2) * i / (samples - 1);
                     const y = pageBox[1] + 1 + (pageBox[3] - pageBox[1] - 2) * j / (samples - 1);
                     const hit = document.elementFromPoint(x, y);
                     if (hit !== el && !(hit && hit.closest('.dom-widget'))) hidden.push([Math.round(x), Math.round(y), describe(hit)]);
                   }
                   return {id: node.id, title: node.title, size: [...node.size], min_size: [...node.computeSize()],
                           graph_box: graphBox, page_box: pageBox, hidden};
                 });
                 return {scale, low_quality: canvas.low_quality, window: [innerWidth, innerHeight], nodes};
               }""", [badge_height, samples])

    def set_widget(self, node_id: int, name: str, value) -> None:
        """Change a widget of a node, as typing into it does (the widget's callback runs)."""
        ok = self.page.evaluate(
            """([id, name, value]) => {
                 const node = window.app.graph.getNodeById(id);
                 const widget = node && node.widgets && node.widgets.find((w) => w.name === name);
                 if (!widget) return false;
                 widget.value = value;
                 if (widget.callback) widget.callback(value, window.app.canvas, node);
                 window.app.graph.setDirtyCanvas(true, true);
                 return true;
               }""", [node_id, name, value])
        if not ok:
            raise KeyError(f"node {node_id} has no widget {name!r}")

    def click_queue(self, timeout: float = 60) -> str:
        """Press the Run (queue) button; returns the prompt id the server answered with."""
        with self.page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt"),
                                       timeout=timeout * 1000) as info:
            self.page.locator('[data-testid="queue-button"]').first.click()
        response = info.value
        body = response.json()
        if response.status != 200:
            raise AssertionError(f"the server refused the queued prompt: HTTP {response.status}: {body}")
        return body["prompt_id"]

    def canvas_jpeg(self, quality: float = 0.9) -> bytes:
        """The graph canvas as the user sees it (without the DOM panels around it), as JPEG bytes."""
        url = self.page.evaluate("(q) => { const c = window.app.canvas; c.draw(true, true); "
                                 "return c.canvas.toDataURL('image/jpeg', q); }", quality)
        return base64.b64decode(url.split(",", 1)[1])
