#!/usr/bin/env python3
"""Draw the template thumbnails workflows/<name>.jpg: each editor workflow as the ComfyUI editor shows it.

    COMFYUI_PATH=/path/to/ComfyUI python3 scripts/make_template_thumbnails.py [--check]

Starts the ComfyUI of COMFYUI_PATH (made by scripts/setup_comfyui.sh) with this pack linked, opens
its editor in a headless system Chromium through Playwright (see tests/comfyui_live/memo_browser.py:
`apt-get install chromium`, `pip install playwright`; no browser download), drops each editor
workflow onto the page, fits the view and saves the graph canvas, cropped to the graph and scaled
to THUMB_WIDTH pixels, as the JPEG next to the workflow: the thumbnail ComfyUI's template browser
shows for a custom-node template (it asks for /api/workflow_templates/<pack>/<name>.jpg).
--check only verifies that every editor workflow has a readable JPEG thumbnail.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
THUMB_WIDTH = 640
sys.path.insert(0, str(REPO / "tests" / "comfyui_live"))


def editor_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def crop_to_graph(image, background_tolerance: int = 12, margin: int = 24):
    """Cut the empty canvas around the graph (the canvas background is one flat colour)."""
    from PIL import Image, ImageChops

    rgb = image.convert("RGB")
    corner = rgb.getpixel((2, 2))
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corner)).convert("L")
    box = diff.point(lambda v: 255 if v > background_tolerance else 0).getbbox()
    if box is None:
        raise RuntimeError("the canvas is empty: the workflow did not render")
    left, top, right, bottom = box
    return rgb.crop((max(0, left - margin), max(0, top - margin),
                     min(rgb.width, right + margin), min(rgb.height, bottom + margin)))


def render(comfy_page, path: Path) -> bytes:
    from PIL import Image

    comfy_page.drop_file(path.name, path.read_bytes(), "application/json")
    problems = comfy_page.alerts() + comfy_page.open_dialogs()
    if problems:
        raise RuntimeError(f"{path.name}: the editor complained while loading it: {problems}")
    comfy_page.run_command("Comfy.Canvas.FitView")
    comfy_page.wait_idle(1.0)
    image = crop_to_graph(Image.open(io.BytesIO(comfy_page.canvas_jpeg(0.95))))
    height = round(image.height * THUMB_WIDTH / image.width)
    out = io.BytesIO()
    image.resize((THUMB_WIDTH, height), Image.LANCZOS).save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def check() -> int:
    from PIL import Image

    bad = []
    for path in editor_workflows():
        thumb = path.with_suffix(".jpg")
        try:
            with Image.open(thumb) as image:
                if image.format != "JPEG":
                    bad.append(f"{thumb.name} is {image.format}")
        except OSError as exc:
            bad.append(f"{thumb.name}: {exc}")
    print("\n".join(bad) or "every editor workflow has its thumbnail")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the thumbnails exist")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    import memo_browser
    import memo_comfy_live as live

    reason = live.why_no_comfyui() or memo_browser.why_no_browser()
    if reason:
        print(f"make_template_thumbnails: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="memo-thumbs-") as base:
        # the workflows name their VAE file with download metadata: present, it raises no "missing models" dialog
        from safetensors.torch import save_file
        import torch

        vae_dir = Path(base) / "models" / "vae"
        vae_dir.mkdir(parents=True)
        save_file({"placeholder": torch.zeros(1)}, str(vae_dir / "vae-ft-mse-840000-ema-pruned.safetensors"))
        server = live.ComfyServer(Path(base), link_pack=True).start()
        try:
            # A tall, wide page so that "fit view" keeps the graph near scale 1, where node titles and
            # widget values are drawn (the editor leaves text out when zoomed far out).
            with memo_browser.Browser(viewport=(2000, 1300)) as browser:
                page = browser.open_comfy(server.url)
                page.close_dialogs()  # the template browser opens by itself on a first visit
                page.page.evaluate("() => { window.app.canvas.show_info = false; }")
                for path in editor_workflows():
                    data = render(page, path)
                    path.with_suffix(".jpg").write_bytes(data)
                    print(f"wrote {path.with_suffix('.jpg')} ({len(data) // 1024} KiB)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
