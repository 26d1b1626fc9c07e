"""User mistakes on the command line end as one line and exit 2, never as "internal error"; a
property-based fuzz of every subcommand's arguments; bench loads HF weights from safetensors only.

Nothing here loads a model or runs real work: ``heavy_work_stops`` turns the first step that would
(loading weights, converting or fetching the default GGUF, talking to a server) into ``Stopped``, a
BaseException the CLI does not catch. A command that gets there has accepted its arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentspark.cli import build_parser, main
from agentspark.errors import ModelLoadError
from agentspark.traces import RequestRecord, TraceRecorder, TraceRound
from conftest import ours_from_hf, tiny_hf_model


class Stopped(BaseException):
    """Real work would start here: the arguments were all accepted."""


def _stop(*args, **kwargs):
    raise Stopped


def _install_stops(mp: pytest.MonkeyPatch) -> None:
    import uvicorn

    from agentspark.backends.remote import RemoteBackend
    from agentspark.model import default_model, loading

    from agentspark.commands import serve

    for owner, name in ((loading, "load_hf_folder"), (loading, "gguf_to_hf_folder"), (loading, "default_gguf_path"),
                        (default_model, "default_gguf_path"), (RemoteBackend, "complete"),
                        (RemoteBackend, "stream"), (uvicorn, "run"), (serve, "reserve_port")):
        if hasattr(owner, name):  # serve.reserve_port binds a real port: the network is real work too
            mp.setattr(owner, name, _stop)


@pytest.fixture
def heavy_work_stops(monkeypatch):
    _install_stops(monkeypatch)


def write_trace(path: Path, rounds: int = 2) -> Path:
    with TraceRecorder(path) as rec:
        for i in range(rounds):
            rec.write(TraceRound(
                session_id="s", round_index=i, started_at=1.0 + i, backend="scripted",
                request=RequestRecord(messages=[{"role": "user", "content": f"hi {i}"}], prompt_hash="",
                                      prompt_tokens=3, sampling={"temperature": 0.0, "max_new_tokens": 8}),
                prefill_tokens=3, prefill_s=0.01, decode_s=0.02, new_tokens=2, tokens_per_second=66.0,
                mean_accepted_length=1.0, finish_reason="stop", spec_rounds=[], response={"content": "ok"},
            ))
    return path


def run_cli(capsys, *argv: str) -> tuple[int | str, str]:
    try:
        code: int | str = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    except Stopped:
        code = "stopped"
    return code, capsys.readouterr().err


def assert_user_error(code, err: str, *needles: str) -> None:
    """Exit 2 and one line that says what is wrong."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("agentspark: error: "), err
    assert "internal error" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# --- the user mistakes, one by one -------------------------------------------------------

@pytest.mark.parametrize("url,needle", [("::::", "not a valid URL"), ("ftp://x", "http://"), ("http://[", "host"),
                                        ("localhost:8000", "http://")])
def test_bad_base_url(capsys, tmp_path, heavy_work_stops, url, needle):
    trace = write_trace(tmp_path / "t.jsonl")
    code, err = run_cli(capsys, "replay", str(trace), "--base-url", url)
    assert_user_error(code, err, "base URL", needle)


@pytest.mark.parametrize("command", [["train-drafter", "--out", "out"], ["eval-drafter", "--drafter", "ngram"]])
def test_prompts_file_that_is_not_utf8(capsys, tmp_path, heavy_work_stops, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes('{"turns": ["caf\u00e9"]}\n'.encode("latin-1"))
    code, err = run_cli(capsys, *command, "--prompts", "latin1.jsonl")
    assert_user_error(code, err, "latin1.jsonl is not UTF-8", "save it as UTF-8")
    assert not (tmp_path / "out").exists()  # failed before anything was created (or loaded)


def test_out_naming_an_existing_file(capsys, tmp_path, heavy_work_stops):
    (tmp_path / "p.jsonl").write_text('{"turns": ["hi"]}\n')
    (tmp_path / "taken").write_text("not a folder")
    code, err = run_cli(capsys, "train-drafter", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "taken"))
    assert_user_error(code, err, "--out", "is an existing file")
    code, err = run_cli(capsys, "train-drafter", "--prompts", str(tmp_path / "p.jsonl"),
                        "--out", str(tmp_path / "taken" / "sub"))
    assert_user_error(code, err, "--out", "cannot be created")
    code, err = run_cli(capsys, "replay", str(write_trace(tmp_path / "t.jsonl")), "--out", str(tmp_path))
    assert_user_error(code, err, "--out", "is a directory")


@pytest.mark.parametrize("command", [["trace", "show"], ["trace", "plot"], ["replay"], ["audit"]])
def test_a_directory_given_as_a_trace(capsys, tmp_path, heavy_work_stops, command):
    extra = ["-o", str(tmp_path / "x.png")] if command[-1] == "plot" else []
    code, err = run_cli(capsys, *command, str(tmp_path), *extra)
    assert_user_error(code, err, "is a directory, not a trace")


@pytest.mark.parametrize(
    "field,value,needle",
    [("top_p", "x", "top_p"), ("stop", 5, "stop must be a list"), ("role", 5, "role must be one of"),
     ("seed", 2**64, "seed")],
)
@pytest.mark.parametrize("command", ["replay", "audit"])
def test_trace_records_a_replay_could_not_send(capsys, tmp_path, heavy_work_stops, command, field, value, needle):
    line = json.loads(write_trace(tmp_path / "good.jsonl", rounds=1).read_text())
    target = line["request"]["messages"][0] if field == "role" else line["request"]["sampling"]
    target[field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line) + "\n")
    code, err = run_cli(capsys, command, str(bad))
    assert_user_error(code, err, "bad.jsonl:1: invalid trace line", needle)


@pytest.mark.parametrize("argv", [["generate", "--prompt", "hi"], ["train-drafter", "--prompts", "p", "--out", "o"]])
def test_a_seed_of_2_to_the_64(capsys, heavy_work_stops, argv):
    code, err = run_cli(capsys, *argv, "--seed", str(2**64))
    assert_user_error(code, err, "--seed", "seed must be an integer")


# --- bench: HF weights from safetensors only --------------------------------------------------

class _Bomb:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_bench_never_unpickles_a_pytorch_model_bin(tmp_path, monkeypatch):
    from agentspark.commands import bench

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle would have run")

    monkeypatch.setattr(torch, "load", no_unpickling)
    both = tmp_path / "both"
    tiny_hf_model("llama").save_pretrained(both, safe_serialization=True)
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb()))
    assert bench._load_hf(str(both), torch.float32) is not None  # the safetensors, and nothing else
    only_bin = tmp_path / "only-bin"
    only_bin.mkdir()
    (only_bin / "config.json").write_text((both / "config.json").read_text())
    (only_bin / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb()))
    with pytest.raises(ModelLoadError, match="safetensors"):
        bench._load_hf(str(only_bin), torch.float32)


# --- the fuzz: every subcommand, adversarial values, no internal error, no traceback ---------------

def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for every subcommand that runs something (``trace show``, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaf_parsers(sub, (*path, name))


LEAVES = dict(_leaf_parsers(build_parser()))
# examples per subcommand: derandomized, so CI sees the same ones every run (about 10 s in all);
# raise it locally for a deeper search (2000 each took under 3 minutes and found nothing)
FUZZ_EXAMPLES = int(os.environ.get("AGENTSPARK_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    write_trace(d / "trace.jsonl")
    (d / "prompts.jsonl").write_text('{"turns": ["hello"]}\n{"turns": ["again"], "dataset": "x"}\n')
    (d / "latin1.jsonl").write_bytes(b'{"turns": ["caf\xe9"]}\n\xff\xfe')
    (d / "empty.jsonl").write_bytes(b"")
    (d / "notes.txt").write_text("not json\n")
    (d / "folder").mkdir()
    (d / "folder" / "inner.jsonl").write_text('{"turns": ["x"]}\n')
    return d


def _values(d: Path) -> list[str]:
    paths = ["trace.jsonl", "prompts.jsonl", "latin1.jsonl", "empty.jsonl", "notes.txt", "folder", "missing.jsonl",
             "notes.txt/under-a-file", "new/out.png"]
    return [
        "", " ", "0", "1", "2", "7", "64", "65", "-1", "0.5", "1.0", "1e-40", "-0.0", "inf", "-inf", "nan", "1e309",
        str(2**31), str(2**63), str(2**64), "9" * 40, "9" * 5000, "x", "caf\udce9",  # undecodable argv byte
        "default", "none", "ngram", "auto", "learned:missing", "draft-model:folder", "cpu", "cuda", "cuda:7", "tpu",
        "float32", "bfloat16", "http://127.0.0.1:9", "::::", "ftp://x", "localhost:8000", "http://[", "--", "-",
        "~nosuchuser/x", "ngram+learned:folder",
        *paths, *(str(d / p) for p in paths),
    ]


# a value that parses, per destination, so that many examples get past the parser to each
# command's own checks (paths are relative to the fuzz folder, the working directory)
PLAUSIBLE = {"prompts": "prompts.jsonl", "trace": "trace.jsonl", "file": "trace.jsonl", "out": "new/out",
             "output": "new/plot.png", "json": "new/figures.json", "json_out": "new/figures.json",
             "trace_dir": "traces", "base_url": "http://127.0.0.1:9", "prompt": "hello", "drafter": "ngram",
             "responses": "prompts.jsonl", "target": "default", "model": "default", "device": "cpu"}


def _plausible(action: argparse.Action) -> list[str]:
    if action.choices:
        return [str(c) for c in action.choices]
    if action.dest in PLAUSIBLE:
        return [PLAUSIBLE[action.dest]]
    if action.default not in (None, True, False, []):
        return [str(action.default)]
    return ["1"]


@st.composite
def argv_for(draw, words: tuple[str, ...], parser: argparse.ArgumentParser, values: list[str]):
    # a real argv holds no NUL and no surrogate but the ones surrogateescape makes of undecodable
    # bytes (U+DC80..U+DCFF, as in "caf\udce9" among the values)
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
    garbage = st.one_of(st.sampled_from(values), text)

    def value(action: argparse.Action) -> str:
        return draw(st.one_of(st.sampled_from(_plausible(action)), garbage))

    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    positionals = [a for a in parser._actions if not a.option_strings]
    chosen = draw(st.lists(st.sampled_from(options), max_size=5)) if options else []
    if draw(st.integers(0, 4)):  # mostly with the required options, so validation past parsing is reached
        chosen = [a for a in options if a.required] + chosen
    argv = list(words)
    for action in chosen:
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            argv.append(value(action))
    for action in positionals:
        if draw(st.integers(0, 4)):
            argv.append(value(action))
    if not draw(st.integers(0, 5)):  # now and then a stray word
        argv.append(draw(garbage))
    return argv


def _outcome(argv: list[str]) -> tuple[int | str, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:
            code = exc.code
        except Stopped:
            code = "stopped"
    return code, err.getvalue()


@pytest.mark.parametrize("words", list(LEAVES), ids=" ".join)
def test_fuzz_every_subcommand(words, fuzz_dir, monkeypatch):
    _install_stops(monkeypatch)
    monkeypatch.chdir(fuzz_dir)  # relative paths in the values (and anything created) stay in here
    values = _values(fuzz_dir)

    @settings(derandomize=True, max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(argv=argv_for(words, LEAVES[words], values))
    def check(argv):
        code, err = _outcome(argv)
        assert "internal error" not in err and "Traceback" not in err, (argv, err)
        assert code in (0, 2, "stopped"), (argv, code, err)
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("agentspark: error: ")]
            assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]), (argv, err)

    check()


def test_train_drafter_regeneration_loads_safetensors_only(monkeypatch):
    """The regeneration step loads the target through transformers: never from a pickle."""
    import transformers

    from agentspark.training import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr("agentspark.model.loading.resolve_folder", lambda spec: spec)
    target = ours_from_hf(tiny_hf_model("llama"))
    with pytest.raises(Stop):
        pipeline.regenerate_with_hf("folder", target, "prompts.jsonl", recipe=None, limit=1)
    assert seen.get("use_safetensors") is True


def test_serve_refuses_a_host_that_is_no_host_name():
    from agentspark.commands.serve import reserve_port
    from agentspark.errors import AgentSparkError

    with pytest.raises(AgentSparkError, match="not a host name"):
        reserve_port("\x80", 8123)
