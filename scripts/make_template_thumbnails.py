#!/usr/bin/env python3
"""Draw the template thumbnails workflows/<name>.jpg: each workflow's purpose in large type, with its own colour
and picture, so that the cards of the template browser can be told apart at a glance.

    python3 scripts/make_template_thumbnails.py            # (re)write workflows/<name>.jpg
    python3 scripts/make_template_thumbnails.py --check    # exit 1 if a thumbnail is missing or out of date

ComfyUI's template browser shows a custom node template's thumbnail (the .jpg of the same name next to the
workflow, fetched from /api/workflow_templates/<pack>/<name>.jpg) cropped to a square, so they are square. The
title drawn is the workflow's card title from workflows/make_workflows.py (without the "MEMO " prefix, which the
thumbnail shows as a label). Only Pillow is needed; the font is the one Pillow bundles, so the drawing is the same
on every machine with the same Pillow.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SIZE = 512
SUPERSAMPLE = 2   # drawn at twice the size, then scaled down: smooth edges without antialiased primitives
QUALITY = 90
INK = (33, 37, 41)
# A stale thumbnail differs from a fresh drawing by far more than JPEG noise (mean absolute difference, 0..255).
CURRENT_TOLERANCE = 4.0

# name -> (accent colour, background colour, picture)
STYLE = {
    "memo_talking_video": ((217, 72, 15), (255, 236, 222), "talking"),
    "memo_schedule_paste_back": ((8, 127, 91), (222, 246, 236), "schedule"),
    "memo_long_audio_to_file": ((95, 61, 196), (234, 229, 252), "long_audio"),
}


def load_generator():
    spec = importlib.util.spec_from_file_location("memo_make_workflows_thumbs", WORKFLOWS / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size * SUPERSAMPLE)


def _s(*values):
    """Design units (a 512 px square) to drawing pixels."""
    scaled = [v * SUPERSAMPLE for v in values]
    return scaled if len(scaled) > 1 else scaled[0]


def _face(draw, cx, cy, r, mood, colour, width=6):
    """A round face with a mouth for `mood` (neutral, happy, surprised)."""
    draw.ellipse(_s(cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255), outline=colour, width=_s(width))
    eye = r * 0.16
    for ex in (cx - r * 0.35, cx + r * 0.35):
        draw.ellipse(_s(ex - eye, cy - r * 0.3 - eye, ex + eye, cy - r * 0.3 + eye), fill=colour)
    if mood == "happy":
        draw.arc(_s(cx - r * 0.5, cy - r * 0.2, cx + r * 0.5, cy + r * 0.55), 20, 160, fill=colour, width=_s(width))
    elif mood == "surprised":
        draw.ellipse(_s(cx - r * 0.18, cy + r * 0.1, cx + r * 0.18, cy + r * 0.5), outline=colour, width=_s(width))
    else:
        draw.line(_s(cx - r * 0.35, cy + r * 0.35, cx + r * 0.35, cy + r * 0.35), fill=colour, width=_s(width))


def _portrait(draw, box, accent):
    """A framed picture of a head and shoulders."""
    left, top, right, bottom = box
    draw.rounded_rectangle(_s(*box), radius=_s(18), fill=(255, 255, 255), outline=accent, width=_s(8))
    cx, w = (left + right) / 2, right - left
    draw.ellipse(_s(cx - w * 0.2, top + w * 0.18, cx + w * 0.2, top + w * 0.58), fill=accent)
    draw.chord(_s(cx - w * 0.36, top + w * 0.62, cx + w * 0.36, bottom + w * 0.5), 180, 360, fill=accent)


def picture_talking(draw, accent):
    _portrait(draw, (96, 90, 276, 300), accent)
    for i, r in enumerate((40, 75, 110)):  # sound waves coming from the picture's mouth
        draw.arc(_s(276 - r, 195 - r, 276 + r, 195 + r), -50, 50, fill=accent, width=_s(12 - 2 * i))
    draw.polygon(_s(410, 228, 410, 298, 470, 263), fill=INK)  # "play": it becomes a video


def picture_schedule(draw, accent):
    _portrait(draw, (70, 80, 230, 266), accent)
    draw.rectangle(_s(110, 110, 190, 200), outline=INK, width=_s(5))  # the face crop, pasted back
    y = 180
    draw.line(_s(262, y, 452, y), fill=accent, width=_s(10))  # a time line with an emotion at each mark
    for x, mood in ((282, "neutral"), (362, "happy"), (442, "surprised")):
        draw.line(_s(x, y - 14, x, y + 14), fill=accent, width=_s(6))
        _face(draw, x, y - 58 if mood != "happy" else y + 58, 30, mood, accent)


def picture_long_audio(draw, accent):
    base = 190
    for i in range(30):  # a long waveform...
        x = 56 + i * 9
        h = 18 + 70 * abs(math.sin(i * 0.55) * math.cos(i * 0.21))
        draw.rounded_rectangle(_s(x, base - h, x + 5, base + h), radius=_s(2), fill=accent)
    draw.polygon(_s(330, 170, 350, 190, 330, 210), fill=INK)  # ...into a video file
    left, top, right, bottom = 360, 96, 480, 284
    draw.rounded_rectangle(_s(left, top, right, bottom), radius=_s(12), fill=(255, 255, 255), outline=accent,
                           width=_s(8))
    for y in range(top + 18, bottom - 10, 26):  # film strip holes
        draw.rectangle(_s(left + 10, y, left + 22, y + 12), fill=accent)
        draw.rectangle(_s(right - 22, y, right - 10, y + 12), fill=accent)
    label = font(26)
    draw.text(_s((left + right) / 2, (top + bottom) / 2), "mp4", font=label, fill=INK, anchor="mm")


PICTURES = {"talking": picture_talking, "schedule": picture_schedule, "long_audio": picture_long_audio}


def _wrap(draw, text: str, face, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=face) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line]


def render(name: str, title: str) -> Image.Image:
    """The thumbnail of workflow `name` with its card title, as an RGB image of SIZE x SIZE."""
    accent, background, picture = STYLE[name]
    image = Image.new("RGB", (_s(SIZE), _s(SIZE)), background)
    draw = ImageDraw.Draw(image)
    draw.rectangle(_s(0, 0, SIZE, 16), fill=accent)
    draw.text(_s(28, 40), "MEMO", font=font(30), fill=accent, stroke_width=_s(1), stroke_fill=accent)
    PICTURES[picture](draw, accent)
    words = title.removeprefix("MEMO ").strip()
    words = words[0].upper() + words[1:]
    for size in (54, 48, 42, 36):
        face = font(size)
        lines = _wrap(draw, words, face, _s(SIZE - 56))
        if len(lines) <= 2:
            break
    y = 330 + (2 - len(lines)) * size * 0.6
    for line in lines:
        draw.text(_s(28, y), line, font=face, fill=INK, stroke_width=_s(1), stroke_fill=INK)
        y += size * 1.2
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def thumbnails() -> dict[Path, Image.Image]:
    generator = load_generator()
    if set(generator.GRAPHS) != set(STYLE):
        raise SystemExit(f"make_template_thumbnails: STYLE covers {sorted(STYLE)}, "
                         f"the workflows are {sorted(generator.GRAPHS)}")
    return {WORKFLOWS / f"{name}.jpg": render(name, title) for name, (title, _, _) in generator.GRAPHS.items()}


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two RGB images of the same size, 0..255."""
    histogram = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L").histogram()
    return sum(value * count for value, count in enumerate(histogram)) / (a.width * a.height)


def stale() -> list[str]:
    problems = []
    for path, image in thumbnails().items():
        try:
            with Image.open(path) as shipped:
                if shipped.format != "JPEG" or shipped.size != image.size:
                    problems.append(f"{path.name}: {shipped.format} {shipped.size}, wanted JPEG {image.size}")
                elif difference(shipped, image) > CURRENT_TOLERANCE:
                    problems.append(f"{path.name} differs from what the script draws")
        except OSError as exc:
            problems.append(f"{path.name}: {exc}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the thumbnails are current")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        print("\n".join(problems) + "\n(run python3 scripts/make_template_thumbnails.py)" if problems
              else "every workflow's thumbnail is current")
        return 1 if problems else 0
    for path, image in thumbnails().items():
        data = jpeg(image)
        path.write_bytes(data)
        print(f"wrote {path} ({len(data) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
