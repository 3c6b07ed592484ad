"""What a PyTorch user deploys on an x86 CPU instead of an lqnets ResNet-18: torchvision's ResNet-18 (post-activation,
conv-bn-relu fused) as fp32 eager and as INT8 static quantization (FX graph mode, x86/fbgemm backend), at the batch
sizes and threads of `lqnets bench infer`. Prints median ms per batch (first rounds dropped). Adapted from
../shared/bench/torch_int8_resnet20.py; torchvision is not needed (the network is written out here).

  LD_LIBRARY_PATH=VENV/stubs VENV/venv/bin/python bench/torch_int8_resnet18.py [--threads 1] [--batches 1,32] [--reps 5]
"""
import argparse, statistics, time, torch, torch.nn as nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import prepare_fx, convert_fx

class Block(nn.Module):
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

class ResNet18(nn.Module):
    def __init__(s):
        super().__init__()
        s.c0 = nn.Conv2d(3, 64, 7, 2, 3, bias=False); s.b0 = nn.BatchNorm2d(64); s.r0 = nn.ReLU()
        s.pool0 = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            for i in range(2):
                layers.append(Block(cin, cout, stride if i == 0 else 1)); cin = cout
        s.layers = nn.Sequential(*layers); s.pool = nn.AdaptiveAvgPool2d(1); s.fc = nn.Linear(512, 1000)
    def forward(s, x):
        x = s.layers(s.pool0(s.r0(s.b0(s.c0(x)))))
        return s.fc(torch.flatten(s.pool(x), 1))

def timeit(m, x, reps):
    with torch.inference_mode():
        for _ in range(2): m(x)
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); m(x); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,32"); ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(); torch.set_num_threads(a.threads); torch.manual_seed(0)
    fp = ResNet18().eval()
    torch.backends.quantized.engine = "x86"
    q = prepare_fx(ResNet18().eval(), get_default_qconfig_mapping("x86"), (torch.randn(2, 3, 224, 224),))
    with torch.inference_mode():
        for _ in range(2): q(torch.randn(4, 3, 224, 224))
    q = convert_fx(q)
    print(f"torch {torch.__version__}, {a.threads} thread(s), engine {torch.backends.quantized.engine}, ResNet-18 224x224")
    print(" batch   fp32 ms   int8 ms   int8 speed-up")
    for b in [int(s) for s in a.batches.split(",")]:
        x = torch.randn(b, 3, 224, 224)
        tf, tq = timeit(fp, x, a.reps), timeit(q, x, a.reps)
        print(f"{b:6d} {tf:9.2f} {tq:9.2f} {tf / tq:9.2f}")

if __name__ == "__main__":
    main()
