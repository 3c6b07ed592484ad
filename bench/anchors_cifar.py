"""Anchors for the bit-op engine on the CIFAR networks: what a user deploys on an x86 CPU instead of lqnets, the same
architecture as the lqnets model, run as fp32 and INT8 on ONNX Runtime's CPU provider (static QDQ quantization,
u8 activations / s8 weights, calibrated on random inputs) and, with --torch, as INT8 on PyTorch (FX static
quantization, x86/fbgemm backend). Prints median ms per batch for the given threads, one line per batch:

    anchor batch=B ort_fp32=MS ort_int8=MS [torch_int8=MS] min ort_fp32=MS ort_int8=MS [torch_int8=MS]

(medians, then the minimum over the reps: on a shared VM the minima are the steadier of the two). 
(`lqnets bench infer --venv` parses these lines.) Networks (`--arch`), written out here (no torchvision):
  resnet20-A / resnet20-B  lqnets' pre-activation ResNet-20 (crates/lq-train/src/models/cifar.rs): conv0, per block
                           BN-ReLU -> conv1 -> BN-ReLU -> conv2 (+ shortcut: identity, or option A = 2x2 avg-pool and
                           zero channels, option B = 1x1 stride-2 conv + BN of the block's BN-ReLU input), head BN-ReLU,
                           global average pool, FC
  resnet20-post            the post-activation ResNet-20 with conv-bn(-relu) fused (../shared/bench/torch_int8_resnet20.py)
  vgg-small                VGG-Small: six 3x3 convs 128,128,256,256,512,512, conv -> [max-pool] -> BN -> ReLU, FC on 4x4x512

  LD_LIBRARY_PATH=VENV/stubs VENV/venv/bin/python bench/anchors_cifar.py --arch resnet20-A [--threads 1]
      [--batches 1,64] [--reps 20] [--torch]
"""
import argparse, os, statistics, sys, tempfile, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


class PreBlock(nn.Module):
    def __init__(s, cin, cout, stride, shortcut):
        super().__init__()
        s.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        s.mid = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU())
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        s.kind = "id" if stride == 1 and cin == cout else shortcut
        s.extra = cout - cin
        if s.kind == "B":
            s.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        h = s.pre(x)
        r = s.c2(s.mid(s.c1(h)))
        if s.kind == "id":
            return r + x
        if s.kind == "B":
            return r + s.proj(h)
        p = F.avg_pool2d(x, 2, 2)
        return r + F.pad(p, (0, 0, 0, 0, s.extra // 2, s.extra - s.extra // 2))


class PreResNet20(nn.Module):
    def __init__(s, shortcut):
        super().__init__()
        s.c0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                blocks.append(PreBlock(cin, cout, stride if i == 0 else 1, shortcut)); cin = cout
        s.blocks = nn.Sequential(*blocks)
        s.head = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU())
        s.fc = nn.Linear(64, 10)

    def forward(s, x):
        x = s.head(s.blocks(s.c0(x)))
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PostBlock(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.b1 = nn.BatchNorm2d(cout)
        s.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.b2 = nn.BatchNorm2d(cout)
        s.sc = None
        if stride != 1 or cin != cout:
            s.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        s.r1 = nn.ReLU(); s.r2 = nn.ReLU()

    def forward(s, x):
        y = s.r1(s.b1(s.c1(x))); y = s.b2(s.c2(y))
        return s.r2(y + (x if s.sc is None else s.sc(x)))


class PostResNet20(nn.Module):
    def __init__(s):
        super().__init__()
        s.c0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False); s.b0 = nn.BatchNorm2d(16); s.r0 = nn.ReLU()
        layers, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                layers.append(PostBlock(cin, cout, stride if i == 0 else 1)); cin = cout
        s.layers = nn.Sequential(*layers); s.fc = nn.Linear(64, 10)

    def forward(s, x):
        x = s.layers(s.r0(s.b0(s.c0(x))))
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VggSmall(nn.Module):
    def __init__(s):
        super().__init__()
        layers, cin = [], 3
        for i, c in enumerate([128, 128, 256, 256, 512, 512]):
            layers.append(nn.Conv2d(cin, c, 3, 1, 1, bias=False))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [nn.BatchNorm2d(c), nn.ReLU()]
            cin = c
        s.features = nn.Sequential(*layers); s.fc = nn.Linear(512 * 16, 10)

    def forward(s, x):
        return s.fc(torch.flatten(s.features(x), 1))


def build(arch):
    m = {"resnet20-A": lambda: PreResNet20("A"), "resnet20-B": lambda: PreResNet20("B"),
         "resnet20-post": PostResNet20, "vgg-small": VggSmall}[arch]()
    # Non-trivial BN statistics, so nothing folds away.
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def median_ms(run, reps):
    """(median, min) ms of `reps` runs after 3 warm-ups."""
    for _ in range(3):
        run()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); run(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), min(ts)


def ort_sessions(model, threads):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calib(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    d = tempfile.mkdtemp()
    f32, pre, q8 = (os.path.join(d, n) for n in ("m.onnx", "mp.onnx", "mq.onnx"))
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), f32, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}}, opset_version=17, dynamo=False)
    quant_pre_process(f32, pre)
    quantize_static(pre, q8, Calib(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    mk = lambda f: ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    return mk(f32), mk(q8), ort.__version__


def torch_int8(model):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    q = prepare_fx(model, get_default_qconfig_mapping("x86"), (torch.randn(8, 3, 32, 32),))
    with torch.inference_mode():
        for _ in range(4):
            q(torch.randn(32, 3, 32, 32))
    return convert_fx(q)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet20-A", choices=["resnet20-A", "resnet20-B", "resnet20-post", "vgg-small"])
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--batches", default="1,64")
    ap.add_argument("--reps", type=int, default=20); ap.add_argument("--torch", action="store_true")
    a = ap.parse_args(); torch.set_num_threads(a.threads); torch.manual_seed(0)
    model = build(a.arch)
    sf, sq, ver = ort_sessions(model, a.threads)
    tq8 = torch_int8(build(a.arch)) if a.torch else None
    print(f"# {a.arch}, onnxruntime {ver}, torch {torch.__version__}, {a.threads} thread(s)", flush=True)
    rng = np.random.default_rng(1)
    for b in [int(s) for s in a.batches.split(",")]:
        x = rng.standard_normal((b, 3, 32, 32), dtype=np.float32)
        tf = median_ms(lambda: sf.run(None, {"x": x}), a.reps)
        tq = median_ms(lambda: sq.run(None, {"x": x}), a.reps)
        tt = None
        if tq8 is not None:
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                tt = median_ms(lambda: tq8(xt), a.reps)
        line = f"anchor batch={b}"
        for i, tag in [(0, ""), (1, " min")]:
            line += f"{tag} ort_fp32={tf[i]:.3f} ort_int8={tq[i]:.3f}" + (f" torch_int8={tt[i]:.3f}" if tt else "")
        print(line, flush=True)


if __name__ == "__main__":
    main()
