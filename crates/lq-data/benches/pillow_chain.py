"""Per-core throughput of lq-data's input chain against Pillow's, same images, same run.

    python pillow_chain.py ROOT [rounds] [images]      (ROOT holds train/<class>/*; needs `pip install pillow`)

The Pillow chain is written as torchvision runs it: open, convert('RGB'), RandomResizedCrop's box (area 8-100 %,
aspect 3/4-4/3 log-uniform, 10 tries then the centre square), crop, resize to 224x224 bilinear, random flip.
The Rust chain is the same (`--example bench_data ROOT rrc`, one thread). Rounds alternate Rust, Pillow, Rust, ...;
the first round is dropped; medians are reported.
"""
import glob, json, math, os, random, statistics, subprocess, sys, time
from PIL import Image

root = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
images = int(sys.argv[3]) if len(sys.argv) > 3 else 200
files = sorted(glob.glob(os.path.join(root, "train", "*", "*")))
here = os.path.dirname(os.path.abspath(__file__))
exe = os.environ.get("LQ_BENCH_DATA", os.path.join(here, "../../../target/release/examples/bench_data"))


def rrc_box(w, h, rng):
    for _ in range(10):
        a = w * h * rng.uniform(0.08, 1.0)
        r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, cw, ch
    s = min(w, h)
    return (w - s) // 2, (h - s) // 2, s, s


def pillow_round(rng):
    t_dec = 0.0
    t0 = time.perf_counter()
    for k in range(images):
        t = time.perf_counter()
        with open(files[k % len(files)], "rb") as f:
            img = Image.open(f).convert("RGB")
        t_dec += time.perf_counter() - t
        x, y, cw, ch = rrc_box(img.width, img.height, rng)
        img = img.crop((x, y, x + cw, y + ch)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return (time.perf_counter() - t0) * 1e3 / images, t_dec * 1e3 / images


rust, pil = [], []
rng = random.Random(1)
for r in range(rounds):
    out = subprocess.run([exe, root, "rrc", str(images), "1", "--json"], capture_output=True, text=True, check=True)
    rust.append(json.loads(out.stdout))
    pil.append(pillow_round(rng))
rust, pil = rust[1:], pil[1:]
med = statistics.median
r_ms, p_ms = med(x["ms"] for x in rust), med(x[0] for x in pil)
print(f"{len(files)} files, {images} images per round, {rounds - 1} rounds after warm-up, 1 core, medians:")
print(f"  lq-data: {r_ms:.3f} ms/image ({1e3 / r_ms:.0f} img/s); decode {med(x['decode_ms'] for x in rust):.3f}, "
      f"crop+resize {med(x['geometry_ms'] for x in rust):.3f}, read {med(x['read_ms'] for x in rust):.3f}, "
      f"flip {med(x['post_ms'] for x in rust):.3f}")
print(f"  Pillow {Image.__version__}: {p_ms:.3f} ms/image ({1e3 / p_ms:.0f} img/s); open+decode {med(x[1] for x in pil):.3f}")
print(f"  ratio (Pillow time / lq-data time): {p_ms / r_ms:.2f}x  (spread lq-data {min(x['ms'] for x in rust):.3f}-"
      f"{max(x['ms'] for x in rust):.3f}, Pillow {min(x[0] for x in pil):.3f}-{max(x[0] for x in pil):.3f})")
