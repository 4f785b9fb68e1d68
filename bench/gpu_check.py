"""A real GPU check of parallel runs: a torch CUDA train.py under the bwrap sandbox, WORKERS=2, on the machine's GPUs.

    python bench/gpu_check.py [--workers 2] [--runs 3] [--sandbox bwrap] [--seconds 8]

Runs an experiment against the scripted local LLM server (tests/scripted.py), whose train.py trains an MLP on
scikit-learn's digits on the GPU for a few seconds. Prints each run's CUDA_VISIBLE_DEVICES, the device torch
saw, its start and end, and whether two runs ever held one GPU at once (they must not). With one GPU the second
worker's run waits for it; with two or more they train side by side. Exit 1 if a run failed or a GPU was shared.
Needs torch with CUDA in the interpreter that runs train.py (TRAIN_PYTHON, else this one): no CI runs it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fake_llm import FakeLLMServer  # noqa: E402
from scripted import ScriptedBrain  # noqa: E402

from runner import run_experiment  # noqa: E402

TRAIN = """\
import json, os, time
import torch
from sklearn.datasets import load_digits
start = time.time()
print(f"start={{start:.3f}} cuda_visible_devices={{os.environ.get('CUDA_VISIBLE_DEVICES')!r}} omp={{os.environ.get('OMP_NUM_THREADS')}}", flush=True)
assert torch.cuda.is_available(), "no CUDA device visible in the sandbox"
device = torch.device("cuda")
print(f"device_count={{torch.cuda.device_count()}} name={{torch.cuda.get_device_name(0)!r}} uid={{os.getuid()}}", flush=True)
x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16.0, dtype=torch.float32, device=device)
y = torch.tensor(y, device=device)
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
train, test = perm[:1400], perm[1400:]
model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
step = 0
while time.time() - start < {seconds}:
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x[train]), y[train])
    loss.backward()
    opt.step()
    step += 1
    if step % 500 == 0:
        print(f"step {{step}} loss={{loss.item():.4f}}", flush=True)
torch.cuda.synchronize()
accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
print(f"test_accuracy={{accuracy:.4f}} steps={{step}} memory_mib={{torch.cuda.max_memory_allocated() / 2**20:.1f}}", flush=True)
json.dump({{"test_accuracy": accuracy}}, open("metrics.json", "w"))
print(f"end={{time.time():.3f}}", flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sandbox", default="bwrap")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--gpus", default="", help="GPUS (default: what nvidia-smi lists)")
    parser.add_argument("--keep", type=Path, help="copy the experiment folder here afterwards")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "exp"
    folder.mkdir()
    (folder / "IDEA.md").write_text("Classify digits on the GPU.\n\nGoal: test_accuracy >= 0.999\n")
    server = FakeLLMServer(ScriptedBrain(codes=[TRAIN.format(seconds=args.seconds)]))
    server.start()
    events: list[dict] = []
    began = time.time()
    try:
        final = run_experiment(
            folder,
            max_runs=args.runs,
            llm_base_url=server.base_url,
            llm_api_key="local",
            llm_max_retries=0,
            sandbox=args.sandbox,
            workers=args.workers,
            gpus=args.gpus,
            on_event=lambda event: events.append(event) if event["event"] in ("run_started", "run_done", "warning") else None,
        )
    finally:
        server.stop()
    wall = time.time() - began

    spans, problems = {}, []
    for run in final["runs"]:
        log = (folder / f"run_{run['number']}" / "output.log").read_text()
        fields = dict(re.findall(r"(\w+)=('[^']*'|\S+)", log))
        started = next((e for e in events if e["event"] == "run_started" and e["run"] == run["number"]), {})
        spans[run["number"]] = (float(fields.get("start", 0)), float(fields.get("end", 0)), started.get("gpus", []))
        print(
            f"run {run['number']} ({run['operator']}): {run['status']} in {run['duration_s']:.1f} s, gpus={started.get('gpus')} "
            f"CUDA_VISIBLE_DEVICES={fields.get('cuda_visible_devices')} device_count={fields.get('device_count')} name={fields.get('name')} "
            f"uid={fields.get('uid')} omp={fields.get('omp')} test_accuracy={run['metrics'].get('test_accuracy')} steps={fields.get('steps')}"
        )
        if run["status"] != "ok":
            problems.append(f"run {run['number']} {run['status']}: {run['error']}\n{log[-2000:]}")
    for a, (start_a, end_a, gpus_a) in spans.items():
        for b, (start_b, end_b, gpus_b) in spans.items():
            if a < b and start_a < end_b and start_b < end_a and set(gpus_a) & set(gpus_b):
                problems.append(f"runs {a} and {b} held GPU {sorted(set(gpus_a) & set(gpus_b))} at once")
    overlapping = sum(1 for a in spans for b in spans if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1])
    busy = sum(run["duration_s"] for run in final["runs"]) / wall
    print(
        f"stop: {final['stop_reason']} ({final.get('stop_detail')}); wall {wall:.1f} s; overlapping pairs {overlapping}; run-seconds per wall second {busy:.2f}"
    )
    for event in events:
        if event["event"] == "warning":
            print(f"warning: {event['message']}")
    print(json.dumps({"problems": problems}, indent=1))
    if args.keep:
        shutil.copytree(folder, args.keep, dirs_exist_ok=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
