"""What loading a GGUF costs: wall time, peak RSS and cache disk, from a fresh cache and a warm one.

Every load runs in a fresh interpreter (``_child``) so that its VmHWM is its own; the cache is a new
AGENTSPARK_CACHE folder, so the first load pays the one-time conversion and the second shows the
steady state. ``--code DIR`` runs another checkout's agentspark (e.g. ``git archive HEAD`` of the
previous converter) to measure before/after with the same script.

  python examples/gguf_load_cost.py default                         # the embedded SmolLM2-135M
  python examples/gguf_load_cost.py make --preset 0.5b --qtype Q8_0 --out /tmp/qwen2-0.5b.gguf
  python examples/gguf_load_cost.py /tmp/qwen2-0.5b.gguf --dtype float32 bfloat16

``make`` builds a random-weight Qwen2-shaped model with transformers (we cannot download one) and
writes it with the gguf package (agentspark.model.gguf_write). The last line of a measurement is a
JSON record; the bytes-per-parameter figures in it scale to any model size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Qwen2-0.5B / Qwen2-1.5B shapes (tied embeddings, the real vocabulary).
PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
}
GIB = 1 << 30


def _vm(field: str) -> int:
    """A /proc/self/status figure in bytes (VmHWM: peak resident set, VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(source: str, dtype: str) -> None:
    """Load once and print one JSON line (runs in its own interpreter)."""
    import torch
    import transformers  # noqa: F401  (its import is no part of the model's cost)

    from agentspark import load_model
    from agentspark.model.config import DecoderConfig
    from agentspark.model.decoder import DecoderModel

    with torch.device("meta"):  # torch's one-time meta-device setup (~75 MB), before old and new alike
        DecoderModel(DecoderConfig("qwen2", 8, 8, 8, 1, 1, 1, 8))
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    loaded = load_model(source, dtype=dtype)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in loaded.model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    with torch.inference_mode():  # the model works: one forward
        loaded.model(torch.tensor([[1, 2, 3]]), loaded.model.new_cache(4), 0)
    print(json.dumps(dict(load_s=round(seconds, 2), peak_rss=_vm("VmHWM"), rss_before_load=before,
                          params=params, model_bytes=model_bytes)))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_child(source: str, dtype: str, cache: Path, code: str | None) -> dict:
    env = dict(os.environ, AGENTSPARK_CACHE=str(cache))
    if source == "default":  # the fresh cache has no GGUF: point at ours rather than fetch it
        env.setdefault("AGENTSPARK_DEFAULT_GGUF", str(_default_gguf()))
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "_child", source, dtype], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"load failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gguf_params(path: Path) -> int:
    """The GGUF's own parameter count (a tied head counted once, as a "7B" is)."""
    from agentspark.model.gguf_read import read_header

    return sum(int(np.prod(t.shape)) for t in read_header(path)[1])


def measure(source: str, dtypes: list[str], code: str | None, keep: Path | None) -> None:
    path = Path(source) if source != "default" else _default_gguf()
    gguf_bytes, n = path.stat().st_size, gguf_params(path)
    for dtype in dtypes:
        cache = Path(tempfile.mkdtemp(prefix="agentspark-cache-", dir=keep))
        try:
            for phase in ("cold", "warm"):  # cold: converts into the empty cache; warm: reads it
                r = run_child(source, dtype, cache, code)
                r.update(phase=phase, dtype=dtype, source=source, code=code or "this checkout",
                         gguf_bytes=gguf_bytes, cache_bytes=du(cache))
                r["gguf_params"] = n
                r["per_param"] = {k: round(r[k] / n, 3) for k in ("gguf_bytes", "cache_bytes", "peak_rss", "model_bytes")}
                r["per_param"]["peak_above_imports"] = round((r["peak_rss"] - r["rss_before_load"]) / n, 3)
                print(f"{phase:4} {dtype:8} load {r['load_s']:7.2f} s  peak RSS {r['peak_rss'] / GIB:6.2f} GiB "
                      f"(imports {r['rss_before_load'] / GIB:.2f})  model {r['model_bytes'] / GIB:6.2f} GiB  "
                      f"cache disk {r['cache_bytes'] / GIB:6.3f} GiB  GGUF {gguf_bytes / GIB:.3f} GiB", flush=True)
                print(json.dumps(r), flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)


def _default_gguf() -> Path:
    from agentspark.model.default_model import default_gguf_path

    return default_gguf_path()


def make(preset: str, qtype: str, out: Path, seed: int) -> None:
    """A random Qwen2 of ``preset``'s shape, written as a GGUF with 2-D weights in ``qtype``."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from agentspark.model.gguf_write import write_gguf

    cfg = Qwen2Config(**PRESETS[preset], tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    print(f"random qwen2 {preset}: {n / 1e9:.3f} B parameters ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    write_gguf(out, cfg.to_dict(), model.state_dict(), getattr(gguf.GGMLQuantizationType, qtype))
    print(f"wrote {out} ({out.stat().st_size / GIB:.3f} GiB, {qtype}) in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        return child(sys.argv[2], sys.argv[3])
    if sys.argv[1:2] == ["make"]:
        ap = argparse.ArgumentParser(prog="gguf_load_cost.py make")
        ap.add_argument("--preset", choices=PRESETS, default="0.5b")
        ap.add_argument("--qtype", default="Q8_0", help="a gguf.GGMLQuantizationType name: Q8_0, Q4_0, F16, ...")
        ap.add_argument("--out", type=Path, required=True)
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(sys.argv[2:])
        return make(a.preset, a.qtype, a.out, a.seed)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="`default` or a .gguf file")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--code", help="a folder whose agentspark package to measure instead of this checkout's")
    ap.add_argument("--tmp", type=Path, help="where the fresh cache folders go (default: the system's temp)")
    a = ap.parse_args()
    measure(a.source, a.dtype, a.code, a.tmp)


if __name__ == "__main__":
    main()
