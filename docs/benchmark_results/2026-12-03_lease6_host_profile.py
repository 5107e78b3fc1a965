"""Host time of one MAP-Base / PointMAP training step by op (torch.profiler, CPU activity), eager
and compiled blocks (no graphs): where the launch-bound steps spend their host time."""
import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, ".")
from map_core.compile import compile_blocks  # noqa: E402
from map_core.modalities import load_modalities  # noqa: E402
from tools import benchmark  # noqa: E402

load_modalities()
name, batch, spec, kw, compile_ = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5] == "1"
dev = torch.device("cuda")
torch.manual_seed(0)
model = benchmark.build_model(name, kw).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
x = benchmark.make_input(spec, batch, dev)
if compile_:
    compile_blocks(model, None)


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        out = model(x)
    out[0].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(6):
    step()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(5):
    step()
torch.cuda.synchronize()
host = (time.perf_counter() - t) / 5 * 1000
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
    torch.cuda.synchronize()
rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:30]
print(json.dumps({"kind": "host_profile", "model": name, "kwargs": kw, "compile": compile_, "step_ms_wall": round(host, 1),
                  "top_self_cpu_ms": [[e.key[:90], e.count, round(e.self_cpu_time_total / 1000, 2)] for e in rows]}))
