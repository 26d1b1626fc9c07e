"""``agentspark export-drafter SPEC --format deepspec OUT``: write a learned drafter (DSpark, DFlash,
EAGLE-3; ours or DeepSpec's) as a DeepSpec checkpoint for other engines (drafters/export.py).

The target is loaded because a DeepSpec file carries the target's embedding and LM head; it is
loaded in float32 so nothing is rounded before the export casts to --dtype."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ModelNotFoundError, UnknownDrafterError
from .common import is_file, model_source

FORMATS = ["deepspec"]
SPEC_NAMES = "default | learned:PATH | PATH (a drafter folder: config.json + *.safetensors)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-drafter", help="write a learned drafter as a DeepSpec checkpoint (for vLLM, SGLang, ...)")
    p.add_argument("spec", metavar="SPEC", help=f"the learned drafter to export: {SPEC_NAMES}")
    p.add_argument("out", metavar="OUT", help="the directory to write (new or empty, unless --force)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="checkpoint layout: deepspec (config.json + model.safetensors with the target's embedding and "
                   "LM head, as DeepSpec saves it)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dtype of the written weights (default: bfloat16, DeepSpec's; 8-bit drafters are dequantized)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty OUT, replacing its config.json and *.safetensors (other files are kept)")
    p.add_argument("--model", type=model_source, default="default",
                   help="the drafter's target (its embedding and LM head go into the file): default | HF folder | "
                   ".gguf file (default: default)")
    p.add_argument("--device", default="cpu", help="where the target loads: cpu | cuda | cuda:N (default: cpu)")
    p.set_defaults(run=run)


def drafter_dir(spec: str) -> Path:
    """The checkpoint folder SPEC names (checked for a readable config.json now, before the target loads)."""
    from ..drafters.checkpoint import read_config
    from ..drafters.factory import default_drafter_dir

    if spec == "default":
        path = default_drafter_dir()
    elif spec in ("auto", "none", "ngram", "learned:") or spec.startswith(("ngram+", "draft-model:")):
        raise UnknownDrafterError(f"{spec!r} is not a learned drafter; export-drafter exports DSpark, DFlash or "
                                  f"EAGLE-3 drafters: {SPEC_NAMES}")
    else:
        try:  # expanduser raises RuntimeError for an unknown ~user
            path = Path(spec.removeprefix("learned:")).expanduser()
        except RuntimeError as exc:
            raise ModelNotFoundError(f"cannot use SPEC {spec!r}: {exc}") from None
    if not is_file(path / "config.json"):  # is_file: False (not a crash) for a name too long to look up
        raise ModelNotFoundError(f"no drafter at {str(path)!r}: expected a folder with config.json and *.safetensors "
                                 f"(SPEC: {SPEC_NAMES})")
    read_config(path)  # CorruptModelError / UnsupportedModelError, one line each
    return path


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def run(args: argparse.Namespace) -> int:
    from ..drafters.checkpoint import load_drafter_model
    from ..drafters.export import check_out_dir, deepspec_caveats, export_deepspec
    from ..model.loading import load_model

    source = drafter_dir(args.spec)
    out = Path(args.out)
    check_out_dir(out, force=args.force)  # before the target loads: a mistake costs nothing
    target = load_model(args.model, dtype="float32", device=args.device)
    model = load_drafter_model(source, target)  # DrafterMismatchError if it was trained for another target
    export_deepspec(model, target, out, dtype=args.dtype, force=args.force)
    cfg = model.cfg
    arch = "Qwen3Eagle3Model" if cfg.method == "eagle3" else "Qwen3DSparkModel"
    print(f"exported the {cfg.method} drafter {args.spec} as a DeepSpec checkpoint ({arch}, {args.dtype}) to {out}")
    for name in ("config.json", "model.safetensors"):
        print(f"  {name:<18} {_size((out / name).stat().st_size):>12}")
    for note in deepspec_caveats(cfg):
        print(f"  note: {note}")
    return 0
