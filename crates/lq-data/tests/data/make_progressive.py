"""Writes the progressive JPEGs of tests/progressive_jpeg.rs (run once; the files are committed).

    python make_progressive.py            (needs `pip install pillow`; Pillow 13.0 / libjpeg-turbo wrote them)

libjpeg's progressive script (jpeg_simple_progression) has successive-approximation scans: DC Al=1, luma AC bands
at Al=2, then AC refinement scans Ah=2 Al=1 and Ah=1 Al=0 (and chroma Ah=1 Al=0), which is what the refinement
decoder is tested on. Sizes are odd on purpose (partial MCUs); one file has restart markers.
"""
import os, random
from PIL import Image, ImageDraw, ImageFilter

here = os.path.dirname(os.path.abspath(__file__))


def picture(w, h, seed, mode="RGB"):
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = (x * 255 // w, y * 255 // h, (x * y) % 256)
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = [x0, y0, x0 + rng.randrange(4, w // 2), y0 + rng.randrange(4, h // 2)]
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    noise = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(img, noise, 0.15)
    return img.convert(mode)


files = [
    ("prog_420_q90.jpg", picture(96, 80, 1), dict(quality=90, subsampling=2)),
    ("prog_444_q95_odd.jpg", picture(75, 61, 2), dict(quality=95, subsampling=0)),
    ("prog_422_q75.jpg", picture(70, 53, 3), dict(quality=75, subsampling=1)),
    ("prog_grey_q85.jpg", picture(64, 47, 4, "L"), dict(quality=85)),
    ("prog_420_q80_restarts.jpg", picture(120, 90, 5), dict(quality=80, subsampling=2, restart_marker_blocks=3)),
]
for name, img, opts in files:
    img.save(os.path.join(here, name), "JPEG", progressive=True, optimize=True, **opts)
    print(name, os.path.getsize(os.path.join(here, name)))
