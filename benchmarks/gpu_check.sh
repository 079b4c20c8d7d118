#!/usr/bin/env bash
# GPU check of the component deployment (issue 12). One script, under 10 minutes on one H200:
#   1. install TensorRT 10 and onnxruntime-gpu (skipped if already importable; needs a registry),
#   2. export the real score-SDE DDPM++ configuration (robustwrap.nets.NCSNpp defaults, 106.6M
#      parameters, random weights) and a RobustBench WRN-28-10 (random weights) as a bundle,
#   3. build TensorRT engines for both components, fp32 and fp16,
#   4. compare TensorRT fp32 / fp16 and ONNX Runtime CUDA (I/O binding) with eager CUDA on the
#      same explicit noise at the paper's setting (steps 500, t_l 0.2: 100 denoiser calls),
#   5. print images/s at 100 calls, batch 8, for each,
#   6. `robustwrap verify` TensorRT fp16 and bf16 engines of the shipped MNIST pair at its calibrated
#      defense against the fp32 eager defense (1,000 held-out digits, 16 attacked; up to 4 minutes).
# Prints, never asserts (a benchmark). Usage: bash benchmarks/gpu_check.sh [workdir]
# Not run in the session that wrote it (no GPU was lent): unverified as a whole.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${1:-$(mktemp -d /tmp/robustwrap-gpu-check.XXXXXX)}
export PYTHONUNBUFFERED=1

"$PY" -c "import robustwrap.export" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
  || { echo "could not install robustwrap from $(pwd)"; exit 1; }
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
  # TensorRT 10 keeps BuilderFlag.FP16 (removed in 11); the CUDA 13 wheels first, then CUDA 12.
  timeout 300 "$PY" -m pip install -q "tensorrt-cu13>=10,<11" || timeout 300 "$PY" -m pip install -q "tensorrt-cu12>=10,<11" \
    || echo "NOTE: tensorrt could not be installed: the TensorRT rows are skipped"
fi
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  # onnxruntime-gpu installs the same module as the CPU wheel: remove that one first.
  { "$PY" -m pip uninstall -q -y onnxruntime && timeout 300 "$PY" -m pip install -q "onnxruntime-gpu>=1.18"; } \
    || echo "NOTE: onnxruntime-gpu could not be installed: the ONNX Runtime CUDA row is skipped"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

timeout 540 "$PY" - "$WORK" <<'PYTHON'
import shutil
import sys
import time
from pathlib import Path

import torch

from robustwrap import Noise, PurifyConfig, RobustWrapper
from robustwrap.export import build_bundle_engines, export_bundle, load_bundle
from robustwrap.nets import NCSNpp, WideResNet
from robustwrap.adapters import ScoreSDEEps

work = Path(sys.argv[1])
script_start = time.perf_counter()
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; work folder {work}")
torch.manual_seed(0)
paper = PurifyConfig(steps=500, t_l=0.2, votes=1)  # 100 denoiser calls
wrapper = RobustWrapper(WideResNet().eval(), ScoreSDEEps(NCSNpp().eval()), paper, image_size=32)
print(f"denoiser calls {wrapper.plan.denoiser_calls}, NCSNpp parameters "
      f"{sum(p.numel() for p in wrapper.eps_model.parameters()):,}")

start = time.perf_counter()
bundle = export_bundle(wrapper, work / "bundle", overwrite=True)
parts = bundle.info.components
print(f"export (CPU): {time.perf_counter() - start:.1f} s, {bundle.bytes / 1e6:.1f} MB, "
      f"denoiser {parts['denoiser'].nodes} nodes, classifier {parts['classifier'].nodes} nodes")

wrapper = wrapper.cuda()
batch = 8
generator = torch.Generator(device="cuda").manual_seed(1)
x = torch.rand(batch, 3, 32, 32, device="cuda", generator=generator)
noise = Noise.given(torch.randn(wrapper.noise_shape(x), device="cuda", generator=generator))

def timed(model, repeats=3):
    with torch.no_grad():
        probs = model(x, noise=noise)  # warm-up (allocations, engine/session set-up)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, noise=noise)
        torch.cuda.synchronize()
    return probs.float(), batch * repeats / (time.perf_counter() - start)

reference, eager_rate = timed(wrapper)
rows = [("eager CUDA fp32", 0.0, eager_rate)]
t = torch.full((batch,), 150.0, device="cuda")
with torch.no_grad():
    eps_reference = wrapper.eps_model(2 * x - 1, t)

def compare(name, loaded):
    probs, rate = timed(loaded)
    with torch.no_grad():
        eps = loaded.eps_model(2 * x - 1, t)
    relative = float((eps - eps_reference).norm() / eps_reference.norm().clamp_min(1e-12))
    rows.append((name, float((probs - reference).abs().max()), rate))
    print(f"{name}: one denoiser call, relative |d eps| {relative:.2e}")

try:
    compare("ONNX Runtime CUDA (I/O binding)", load_bundle(bundle.path, device="cuda"))
except Exception as error:  # a benchmark reports what failed and goes on
    print(f"ONNX Runtime CUDA: skipped ({type(error).__name__}: {error})")

for precision in ("fp32", "fp16"):
    folder = work / f"bundle-{precision}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bundle.path, folder)
    try:
        start = time.perf_counter()
        build_bundle_engines(folder, precision=precision, opt_batch=batch, max_batch=64)
        print(f"TensorRT {precision} engines built in {time.perf_counter() - start:.1f} s")
        compare(f"TensorRT {precision}", load_bundle(folder, engine="tensorrt", device="cuda"))
    except Exception as error:
        print(f"TensorRT {precision}: skipped ({type(error).__name__}: {error})")

# AOTInductor packages compiled for CUDA (the same code path as on the CPU), if time is left.
if time.perf_counter() - script_start < 300:
    try:
        start = time.perf_counter()
        packaged = export_bundle(wrapper, work / "bundle-aoti", overwrite=True, aoti=True)
        print(f"bundle + AOT packages for CUDA: {time.perf_counter() - start:.1f} s")
        compare("AOT packages CUDA", load_bundle(packaged.path, engine="aoti", device="cuda"))
    except Exception as error:
        print(f"AOT packages CUDA: skipped ({type(error).__name__}: {error})")
else:
    print("AOT packages CUDA: skipped (less than 4 minutes left of the check's budget)")

print(f"\nbatch {batch}, {wrapper.plan.denoiser_calls} denoiser calls, explicit noise shared with eager")
print(f"{'engine':34s} {'max |d prob| vs eager':>22s} {'images/s':>10s}")
for name, gap, rate in rows:
    print(f"{name:34s} {gap:22.2e} {rate:10.2f}")
PYTHON

# 6. The reduced-precision certificate of TensorRT engines (the shipped pair: real held-out digits ship with
#    the package). Engines run on the GPU; the fp32 eager defense and the attack on the CPU.
timeout 240 "$PY" - "$WORK" <<'PYTHON' || echo "verify of the TensorRT engines: stopped (timeout or error above)"
import sys
from pathlib import Path

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.export import build_bundle_engines, export_bundle, verify_bundle
from robustwrap.specs import build_classifier, build_diffusion
from robustwrap.store import calibrated_configs

work = Path(sys.argv[1])
config = PurifyConfig.load(calibrated_configs("mnist", "mnist")["heterogeneous"])
eager = RobustWrapper(build_classifier("mnist", num_classes=10, channels=1),
                      build_diffusion("mnist", channels=1, image_size=28), config, image_size=28)
for precision in ("fp16", "bf16"):
    folder = work / f"mnist-trt-{precision}"
    export_bundle(eager, folder, specs={"classifier": "mnist", "diffusion": "mnist"}, overwrite=True)
    try:
        build_bundle_engines(folder, precision=precision, opt_batch=32, max_batch=64)
        report, written = verify_bundle(folder, engine="tensorrt", n=1000, n_attack=16)
        print(f"TensorRT {precision}: {report.verdict_line}; record {written}")
        for check in report.checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.line}")
    except Exception as error:  # a benchmark reports what failed and goes on
        print(f"TensorRT {precision} verify: skipped ({type(error).__name__}: {error})")
PYTHON
