"""The command line (in process and as the installed console script) and the public API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import agentspark
from agentspark.cli import main
from conftest import tiny_hf_model


def test_public_api_is_small_sorted_and_importable():
    assert agentspark.__all__ == sorted(agentspark.__all__)
    for name in agentspark.__all__:
        assert hasattr(agentspark, name)


def test_sibling_folders_install_as_subpackages():
    import importlib

    for sub in ("backends", "tools", "kernels", "traces"):
        mod = importlib.import_module(f"agentspark.{sub}")
        assert mod.__file__.replace("\\", "/").endswith(f"{sub}/__init__.py")


def test_console_script_exists_and_helps():
    from pathlib import Path

    beside = Path(sys.executable).with_name("agentspark")  # the venv's bin/, activated or not
    exe = str(beside) if beside.exists() else shutil.which("agentspark")
    assert exe, "the agentspark console script is not installed"
    out = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--drafter", "--max-draft", "--compare-plain", "--json", "--top-p", "--dtype", "--device"):
        assert flag in out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--top-k", "-2"], "top_k"),
        (["--max-draft", "0"], "--max-draft"),  # refused while parsing, before the model loads
        (["--max-draft", "100000"], "--max-draft"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--drafter", "magic"], "unknown drafter"),
        (["--drafter", "draft-model:/no/such/model"], "does not exist"),
        (["--model", "/no/such/model"], "does not exist"),
        (["--dtype", "float32", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(capsys, extra, message, reuse_default_model):
    code, out, err = run_cli(capsys, "generate", "--prompt", "hi", "--max-new-tokens", "4", *extra)
    assert code == 2 and err.startswith("agentspark: error:") and message in err
    assert "Traceback" not in err


def test_empty_and_too_long_prompts(capsys, reuse_default_model):
    code, _, err = run_cli(capsys, "generate", "--prompt", "")
    assert code == 2 and "empty" in err
    code, _, err = run_cli(capsys, "generate", "--prompt", "word " * 5000, "--max-new-tokens", "4")
    assert code == 2 and "context" in err


def test_mismatched_draft_tokenizer_from_the_cli(capsys, tmp_path, reuse_default_model):
    hf = tiny_hf_model("llama", seed=4)
    hf.save_pretrained(tmp_path, safe_serialization=True)  # no tokenizer at all
    code, _, err = run_cli(capsys, "generate", "--prompt", "hi", "--drafter", f"draft-model:{tmp_path}")
    assert code == 2 and "tokenizer" in err


def test_corrupt_model_file_from_the_cli(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    code, _, err = run_cli(capsys, "generate", "--prompt", "hi", "--model", str(bad))
    assert code == 2 and "GGUF" in err


def test_generate_json_with_compare_plain(capsys, reuse_default_model):
    code, out, _ = run_cli(
        capsys, "generate", "--prompt", "Count from 1 to 20.", "--chat", "--max-new-tokens", "24",
        "--json", "--compare-plain",
    )
    assert code == 0
    data = json.loads(out)
    assert data["identical"] is True and data["speedup"] > 0
    assert data["text"] and len(data["token_ids"]) == data["stats"]["new_tokens"] <= 24
    for key in ("mean_accepted_length", "tokens_per_second", "prefill_s", "draft_s", "verify_s", "per_round"):
        assert key in data["stats"]


def test_generate_prints_text_and_statistics(capsys, reuse_default_model):
    code, out, err = run_cli(capsys, "generate", "--prompt", "Say hello.", "--chat", "--max-new-tokens", "8",
                             "--drafter", "none", "--seed", "3", "--temperature", "0.7")
    assert code == 0 and out.strip() and "round statistics" in err and "tokens_per_second" in err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "agentspark.cli", "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout and "bench" in out.stdout


def test_every_package_folder_is_declared_for_wheels():
    """A wheel (not an editable install) contains only the packages pyproject lists."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = {"agentspark": "agentspark", "backends": "agentspark.backends", "tools": "agentspark.tools",
               "kernels": "agentspark.kernels", "traces": "agentspark.traces"}
    found = set()
    for top, name in mapping.items():
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root / top).parts
            found.add(".".join((name, *rel)) if rel else name)
    assert found <= declared, f"not declared in pyproject packages: {sorted(found - declared)}"


def test_a_bad_command_line_is_one_line_and_a_status(capsys):
    """argparse's errors, like ours: one line (no usage block), exit 2, returned by main() rather than raised."""
    for argv, needle in ((["generate"], "--prompt"), (["generate", "--prompt", "hi", "--max-new-tokens", "x"],
                                                      "argument --max-new-tokens: expected an integer, got 'x'")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1
        assert err.startswith("agentspark: error: ") and needle in err and "agentspark generate --help" in err
    code, out, _ = run_cli(capsys, "generate", "--help")
    assert code == 0 and "--max-new-tokens" in out
