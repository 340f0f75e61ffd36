#!/usr/bin/env bash
# Every CUDA path of the project once, on a lent NVIDIA machine (torch with CUDA; onnxruntime CPU-only; no
# TensorRT), in under 8 minutes; prints the figures for the README's performance table:
#   1. training with AMP on CUDA: head mode and finetune (img/s, val accuracy, peak GPU memory);
#   2. the torch CUDA backend at batch 1: pipeline fps (`edge bench`) against the bare model's time;
#   3. multi-camera batching at 1/2/4/8 test:// cameras on the torch CUDA backend (total fps, per-camera minimum);
#   4. torchrun: one process with NCCL (the group's collectives on the GPU), and one per GPU when there are more.
# Without a CUDA GPU it runs the CPU-safe parts (data, the pipeline-vs-bare-model and multi-camera figures on the
# CPU, briefly) and says what it skipped and why.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
FAILED=()

step() { echo; echo "== $1 ($((SECONDS - START)) s)"; }
skip() { echo "SKIPPED: $1"; }
run() {  # run NAME TIMEOUT CMD...: a failure is reported and the check goes on
  local name=$1 limit=$2; shift 2
  timeout "$((limit * SCALE))" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $name (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"
    FAILED+=("$name")
  fi
}

CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: "
      + (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"))
EOF
DEVICE=cpu
SCALE=4  # step time limits: the CPU-safe parts on a small (or shared) CPU get more room
if [ "$CUDA" = 1 ]; then DEVICE=cuda; SCALE=1; fi

step "data: synthetic arrows, 100 per class"
run synth 90 "$PY" -m edge synth --output "$WORK/arrows" --per-class 100 >/dev/null

step "1. training with AMP on CUDA (efficientnet_lite0: head 10 epochs, finetune 3 epochs)"
if [ "$CUDA" = 1 ]; then
  run train-amp 240 "$PY" - "$WORK" <<'EOF'
import sys, time
from pathlib import Path
import torch
from train.trainer import TrainConfig, train_model

work = Path(sys.argv[1])
for mode, epochs in (("head", 10), ("finetune", 3)):
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    r = train_model(TrainConfig(data=work / "arrows", output=work / f"run-{mode}", arch="efficientnet_lite0",
                                mode=mode, epochs=epochs, device="cuda", patience=epochs), progress=False)
    wall = time.perf_counter() - t
    m = r.metrics
    ips = [e["images_per_s"] for e in m["epochs"]]
    cache = ""
    if m["feature_cache_seconds"]:
        n = m["train_images"] * r.meta.training.get("cache_views", 1) + m["val_images"]
        cache = f", feature cache {n / m['feature_cache_seconds']:.0f} img/s"
    print(f"{mode:8s} AMP: {wall:.1f} s, epochs {max(ips):.0f} img/s (best){cache}, val acc {m['val_accuracy']:.3f}, "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
EOF
else
  skip "no CUDA GPU here: AMP runs on CUDA only (CPU training is covered by tests/test_train.py)"
fi

step "2. torch backend at batch 1 on $DEVICE: the pipeline (edge bench) against the bare model"
FRAMES=300
[ "$CUDA" = 1 ] || FRAMES=40
run bench-pipeline 180 "$PY" - "$WORK" "$DEVICE" "$FRAMES" <<'EOF'
import sys, time
from pathlib import Path
import torch
from edge.cli.bench import run_bench
from edge.core.metadata import ModelMeta, load_model, save_checkpoint
from edge.core.registry import create_model, get_arch

work, device, frames = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
save_checkpoint(work / "lite0.pt", create_model("efficientnet_lite0", 2, "none").state_dict(),
                ModelMeta("efficientnet_lite0", ["down", "up"], get_arch("efficientnet_lite0").preprocess))
model, meta = load_model(work / "lite0.pt", device="cpu", with_novelty=True)
half = device == "cuda"
model = model.to(device, memory_format=torch.channels_last)
model = model.half() if half else model
x = torch.randn(1, 3, 224, 224, device=device, dtype=torch.float16 if half else torch.float32)
x = x.contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(10):
        model(x)
    n = frames
    if half:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        model(x)
    if half:
        torch.cuda.synchronize()
bare = (time.perf_counter() - t) / n * 1e3
r = run_bench(str(work / "lite0.pt"), "test://?width=640&height=480", frames=frames, backend="torch",
              device=device, warmup=10)
fps = r.get("fps") or r.get("pipeline_fps")
print(f"bare model {bare:.2f} ms/frame ({1e3 / bare:.0f} fps); pipeline {fps:.1f} fps = {1e3 / fps:.2f} ms/frame, "
      f"overhead {1e3 / fps - bare:.2f} ms/frame ({'fp16' if half else 'fp32'}, {device})")
EOF

step "3. multi-camera batching on the torch backend ($DEVICE)"
if [ "$CUDA" = 1 ]; then
  run multicam 200 "$PY" benchmarks/bench_multicam.py --backend torch --device cuda --arch efficientnet_lite0 \
    --cameras 1 2 4 8 --modes batched per-frame --seconds 3 --warmup 2 --rounds 1
else
  skip "8 cameras at 30 fps on a CPU measures the CPU, not batching; 1 and 2 cameras at 10 fps only"
  run multicam 200 "$PY" benchmarks/bench_multicam.py --backend torch --device cpu --arch squeezenet1_1 \
    --cameras 1 2 --fps 10 --modes batched per-frame --seconds 2 --warmup 1 --rounds 1
fi

step "4. torchrun with NCCL"
if [ "$CUDA" = 1 ]; then
  cat > "$WORK/nccl.py" <<'EOF'
import torch, torch.distributed as dist
from train.distributed import DistContext
dist.init_process_group("nccl")
torch.cuda.set_device(0)
ctx = DistContext(dist.get_rank(), dist.get_world_size(), torch.device("cuda", 0))
x = torch.arange(6, device="cuda", dtype=torch.float32).reshape(3, 2)
out = torch.empty(dist.get_world_size() * 3, 2, device="cuda")
dist.all_gather_into_tensor(out, x)
box = [{"ok": True}]
dist.broadcast_object_list(box, src=0, device=ctx.device)
dist.all_reduce(x)
print(f"NCCL {torch.cuda.nccl.version()}: all_gather, broadcast_object_list, all_reduce ok on "
      f"{dist.get_world_size()} process(es)")
dist.destroy_process_group()
EOF
  run nccl-collectives 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 "$WORK/nccl.py"
  NPROC=$GPUS
  [ "$NPROC" -ge 1 ] || NPROC=1
  run torchrun-train 200 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m train \
    --data "$WORK/arrows" --arch efficientnet_lite0 --mode finetune --epochs 2 --device cuda \
    --output "$WORK/run-ddp" --no-progress
  [ "$NPROC" -ge 2 ] || echo "(one GPU: torchrun trains as one process, without a process group; the" \
    "collectives above ran on NCCL)"
else
  skip "no CUDA GPU here: NCCL needs one (the CPU's gloo group is covered by tests/test_distributed.py)"
fi

step "done in $((SECONDS - START)) s"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "failed: ${FAILED[*]}"
  exit 1
fi
