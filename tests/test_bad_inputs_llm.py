"""Bad input to the llm backend: one row per case — the input, the exception, a pattern the
message must match.  Config values, task data, manifests, strict data checks and the
``python -m llm`` command line; every case fails before any training, with a message that
names the file, the setting and the fix.  (The amasim rows: test_bad_inputs.py.)"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from llm_helpers import write_suite_small, write_toml

from llm.cli import main as llm_main
from llm.config import ConfigError, load_config
from llm.data import (
    audit_pairs,
    load_manifest,
    read_preference_jsonl,
    report_audit,
    tokenize_pairs,
)
from llm.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
TOK = CharTokenizer()


# ------------------------------------------------------------------------------ runners
def config(**changes: dict[str, Any]) -> Callable[[Path], Any]:
    """Load a config: the built-in suite, one method, one seed, with ``changes``."""

    def go(tmp: Path) -> Any:
        sections: dict[str, dict[str, Any]] = {
            "run": {"out": str(tmp / "out"), "seeds": [0], "methods": ["ama-r"]}
        }
        for section, values in changes.items():
            sections[section] = {**sections.get(section, {}), **values}
        return load_config(write_toml(tmp / "c.toml", sections))

    return go


def config_text(text: bytes) -> Callable[[Path], Any]:
    def go(tmp: Path) -> Any:
        path = tmp / "c.toml"
        path.write_bytes(text)
        return load_config(path)

    return go


def jsonl(*lines: bytes) -> Callable[[Path], Any]:
    """Read a task file made of ``lines``."""

    def go(tmp: Path) -> Any:
        path = tmp / "t.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return read_preference_jsonl(path, TOK)

    return go


GOOD = json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"})


def strict(*rows: dict[str, str]) -> Callable[[Path], Any]:
    """Audit a task file of ``rows`` in strict mode."""

    def go(tmp: Path) -> Any:
        path = tmp / "t.jsonl"
        path.write_text("\n".join([GOOD, *map(json.dumps, rows)]) + "\n", encoding="utf-8")
        pairs = read_preference_jsonl(path, TOK)
        audit = audit_pairs(pairs, tokenize_pairs(pairs, TOK, max_length=32), TOK)
        return report_audit(audit, "task 't' (train)", strict=True)

    return go


def manifest(text: str, files: tuple[str, ...] = ()) -> Callable[[Path], Any]:
    def go(tmp: Path) -> Any:
        for name in files:
            (tmp / name).write_text(GOOD + "\n")
        path = tmp / "tasks.toml"
        path.write_text(text)
        return load_manifest(path)

    return go


class Exit2(Exception):
    """``python -m llm`` exited with 2; the message is what it printed on stderr."""


def cli(*argv: str, setup: Callable[[Path], None] | None = None) -> Callable[[Path], Any]:
    """Run ``python -m llm ARGV`` in-process in ``tmp`` (``{tmp}`` in an argument is
    replaced); raise :class:`Exit2` with its stderr when it exits with 2."""

    def go(tmp: Path) -> Any:
        if setup is not None:
            setup(tmp)
        args = [a.replace("{tmp}", str(tmp)) for a in argv]
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = llm_main(args)
        text = err.getvalue()
        assert "Traceback" not in text
        if code == 2:
            raise Exit2(text)
        return code

    return go


def a_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a folder")


def tiny_config(tmp: Path, **changes: dict[str, Any]) -> None:
    """``tmp/c.toml``: the small suite in ``tmp/data``, a tiny model, output ``tmp/out``."""
    write_suite_small(tmp / "data")
    sections = {
        "run": {"out": str(tmp / "out"), "seeds": [0], "methods": ["ama-r"], "threads": 1},
        "data": {"manifest": "data/tasks.toml"},
        "model": {"n_layer": 1, "n_embd": 32},
        "sft": {"steps": 2},
    }
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values}
    write_toml(tmp / "c.toml", sections)


def locked_by_a_live_process(tmp: Path) -> None:
    tiny_config(tmp)
    (tmp / "out").mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}
    (tmp / "out" / ".lock").write_text(json.dumps(holder))


def bad_bytes_in_data(tmp: Path) -> None:
    tiny_config(tmp)
    with (tmp / "data" / "safety.train.jsonl").open("ab") as fh:
        fh.write(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')


def duplicates_in_strict_mode(tmp: Path) -> None:
    tiny_config(tmp, data={"strict": True})
    path = tmp / "data" / "format.train.jsonl"
    first = path.read_text().splitlines()[0]
    with path.open("a") as fh:
        fh.write(first + "\n")


# --------------------------------------------------------------------------------- rows
R = r"\[run\]"
ROWS: list[tuple[str, Callable[[Path], Any], type[BaseException], str]] = [
    # ---- [run]
    (
        "unknown method",
        config(run={"methods": ["ama-x"]}),
        ConfigError,
        rf"{R} methods = \['ama-x'\]: method 'ama-x' is unknown: use one of .*Fix",
    ),
    (
        "method needs task gradients",
        config(run={"methods": ["doge"]}),
        ConfigError,
        r"mixer 'doge' requires the oracle capability 'task_gradients', "
        r"but DPOOracle has no method task_gradients\(\)\. Fix: remove 'doge'",
    ),
    (
        "method needs a target set",
        config(run={"methods": ["importance-sampling"]}),
        ConfigError,
        r"'importance-sampling' requires the oracle capability 'target_set'",
    ),
    (
        "method listed twice",
        config(run={"methods": ["ama-r", "ama-r"]}),
        ConfigError,
        r"'ama-r' is listed twice",
    ),
    ("no methods", config(run={"methods": []}), ConfigError, rf"{R} methods = \[\]: is empty"),
    (
        "no seeds",
        config(run={"seeds": []}),
        ConfigError,
        rf"{R} seeds = \[\]: is empty: nothing would be trained",
    ),
    (
        "repeated seeds",
        config(run={"seeds": [0, 0]}),
        ConfigError,
        r"seed 0 appears twice.*Fix: list distinct seeds",
    ),
    ("negative seed", config(run={"seeds": [-1]}), ConfigError, r"seed -1 is negative"),
    ("empty out", config(run={"out": ""}), ConfigError, rf"{R} out = '': is empty"),
    (
        "unknown device",
        config(run={"device": "gpu"}),
        ConfigError,
        rf"{R} device = 'gpu': is not a device",
    ),
    (
        "unknown dtype",
        config(run={"dtype": "float64"}),
        ConfigError,
        rf"{R} dtype = 'float64'.*'float32', 'bfloat16'",
    ),
    (
        "negative threads",
        config(run={"threads": -1}),
        ConfigError,
        rf"{R} threads = -1: must be >= 0",
    ),
    (
        "negative peak flops",
        config(run={"peak_flops": -1.0}),
        ConfigError,
        rf"{R} peak_flops = -1\.0",
    ),
    # ---- stages: divisors and signs
    (
        "log_every 0",
        config(generalist={"log_every": 0}),
        ConfigError,
        r"\[generalist\] log_every = 0: must be >= 1",
    ),
    (
        "checkpoint_every 0",
        config(specialist={"checkpoint_every": 0}),
        ConfigError,
        r"\[specialist\] checkpoint_every = 0: must be >= 1",
    ),
    (
        "generalist batch 0",
        config(generalist={"batch_size": 0}),
        ConfigError,
        r"\[generalist\] batch_size = 0: must be >= 1",
    ),
    (
        "micro batch not a divisor",
        config(generalist={"micro_batch_size": 3}),
        ConfigError,
        r"micro_batch_size = 3: does not divide batch_size = 16",
    ),
    (
        "negative micro batch",
        config(specialist={"micro_batch_size": -2}),
        ConfigError,
        r"micro_batch_size = -2: must be >= 0",
    ),
    (
        "negative learning rate",
        config(specialist={"learning_rate": -1e-3}),
        ConfigError,
        r"\[specialist\] learning_rate = -0\.001: must be a finite number > 0",
    ),
    (
        "zero learning rate",
        config(generalist={"learning_rate": 0.0}),
        ConfigError,
        r"\[generalist\] learning_rate = 0\.0",
    ),
    (
        "nan learning rate",
        config_text(b"[sft]\nlearning_rate = nan\n"),
        ConfigError,
        r"\[sft\] learning_rate = nan: must be a finite number",
    ),
    (
        "zero specialist steps",
        config(specialist={"steps": 0}),
        ConfigError,
        r"\[specialist\] steps = 0: must be >= 1",
    ),
    (
        "negative sft steps",
        config(sft={"steps": -5}),
        ConfigError,
        r"\[sft\] steps = -5: must be >= 0",
    ),
    (
        "unknown schedule",
        config(generalist={"schedule": "cosine"}),
        ConfigError,
        r"schedule = 'cosine': is not a schedule",
    ),
    (
        "negative grad clip",
        config(specialist={"grad_clip": -1.0}),
        ConfigError,
        r"grad_clip = -1\.0",
    ),
    (
        "negative weight decay",
        config(generalist={"weight_decay": -0.1}),
        ConfigError,
        r"weight_decay = -0\.1",
    ),
    # ---- [mix], [dpo], [eval]
    (
        "zero budget",
        config(mix={"examples": 0}),
        ConfigError,
        r"\[mix\] examples = 0: must be >= 1",
    ),
    (
        "budget under one step",
        config(mix={"examples": 10}),
        ConfigError,
        r"\[mix\] examples = 10: budget=10 examples is less than one step of method "
        r"'ama-r' \(48 examples\)",
    ),
    (
        "smoothing above 1",
        config(mix={"smoothing": 1.5}),
        ConfigError,
        r"\[mix\] smoothing = 1\.5: must lie in \[0, 1\]",
    ),
    (
        "negative mixer step",
        config(mix={"step_size": -1.0}),
        ConfigError,
        r"\[mix\] step_size = -1\.0",
    ),
    (
        "beta 0",
        config(dpo={"beta": 0.0}),
        ConfigError,
        r"\[dpo\] beta = 0\.0: must be a finite number > 0 \(beta = 0 leaves",
    ),
    (
        "unknown loss",
        config(dpo={"loss_type": "kto"}),
        ConfigError,
        r"\[dpo\] loss_type = 'kto': is not a DPO loss",
    ),
    (
        "smoothing with ipo",
        config(dpo={"loss_type": "ipo", "label_smoothing": 0.1}),
        ConfigError,
        r"label_smoothing = 0\.1: must be 0 for loss_type = 'ipo'",
    ),
    ("eval batch 0", config(eval={"batch_size": 0}), ConfigError, r"\[eval\] batch_size = 0"),
    (
        "no new tokens",
        config(eval={"max_new_tokens": 0}),
        ConfigError,
        r"\[eval\] max_new_tokens = 0",
    ),
    # ---- [model], [data]
    (
        "model kind llama",
        config(model={"kind": "llama"}),
        ConfigError,
        r"\[model\] kind = 'llama': is not a model kind\. Fix: use 'gpt' .* or 'hf' .*Llama",
    ),
    (
        "hf without path",
        config(model={"kind": "hf"}),
        ConfigError,
        r"\[model\] path = '': is empty but kind = 'hf'",
    ),
    (
        "hf path missing",
        config(model={"kind": "hf", "path": "no-model"}),
        ConfigError,
        r"\[model\] path = '.*no-model': is not a folder "
        r"\(relative paths resolve against the config file's folder\)",
    ),
    (
        "heads do not divide",
        config(model={"n_embd": 30, "n_head": 4}),
        ConfigError,
        r"n_embd = 30: is not a multiple of n_head = 4",
    ),
    (
        "block shorter than data",
        config(model={"block_size": 16}),
        ConfigError,
        r"block_size = 16: is shorter than \[data\] max_length = 48",
    ),
    (
        "dropout 1",
        config(model={"dropout": 1.0}),
        ConfigError,
        r"dropout = 1\.0: must lie in \[0, 1\)",
    ),
    (
        "unknown tokenization",
        config(data={"tokenization": "bpe"}),
        ConfigError,
        r"tokenization = 'bpe'",
    ),
    (
        "unknown truncation",
        config(data={"truncate_prompt": "right"}),
        ConfigError,
        r"truncate_prompt = 'right'",
    ),
    (
        "trl with left truncation",
        config(data={"tokenization": "trl", "truncate_prompt": "left"}),
        ConfigError,
        r"no counterpart in TRL",
    ),
    (
        "prompt fills max_length",
        config(data={"max_prompt_length": 48}),
        ConfigError,
        r"max_prompt_length = 48: leaves no room",
    ),
    ("max_length 1", config(data={"max_length": 1}), ConfigError, r"max_length = 1: must be >= 2"),
    (
        "manifest missing",
        config(data={"manifest": "nowhere/tasks.toml"}),
        ConfigError,
        r"manifest = '.*nowhere/tasks\.toml': does not exist "
        r"\(relative paths resolve against the config file's folder\)",
    ),
    (
        "manifest not toml",
        config(data={"manifest": "tasks.txt"}),
        ConfigError,
        r"is not a \.toml or \.json manifest",
    ),
    # ---- the file itself
    ("unknown key", config(sft={"step": 3}), ValueError, r"\[sft\]: unknown key\(s\) \['step'\]"),
    ("wrong type", config(run={"seeds": "0"}), ValueError, r"seeds must be a list of int"),
    (
        "config not UTF-8",
        config_text(b'[run]\nout = "r\xe9"\n'),
        ValueError,
        r"c\.toml: not UTF-8 \(byte 0xe9 at offset 14\)",
    ),
    ("section as a value", config_text(b"run = 3\n"), ValueError, r"run must be a section \[run\]"),
    # ---- task data
    (
        "latin-1 byte",
        jsonl(GOOD.encode(), b'{"prompt": "a", "chosen": "b\xff", "rejected": "c"}'),
        ValueError,
        r"t\.jsonl:2: not UTF-8 \(byte 0xff at column 29\)",
    ),
    (
        "cut multi-byte character",
        jsonl(b'{"prompt": "\xc3"}'),
        ValueError,
        r"t\.jsonl:1: not UTF-8 \(byte 0xc3 at column 13\)",
    ),
    (
        "BOM then a bad byte",
        jsonl(b'\xef\xbb\xbf{"prompt": "\xe9"}'),
        ValueError,
        r"t\.jsonl:1: not UTF-8 \(byte 0xe9 at column 16\)",
    ),
    ("not JSON", jsonl(b'{"prompt": "a",'), ValueError, r"t\.jsonl:1: not valid JSON"),
    (
        "missing key",
        jsonl(b'{"prompt": "a", "chosen": "b"}'),
        ValueError,
        r"t\.jsonl:1: missing key\(s\) 'rejected'",
    ),
    (
        "empty completion",
        jsonl(b'{"prompt": "a", "chosen": " ", "rejected": "b"}'),
        ValueError,
        r"t\.jsonl:1: 'chosen' is empty",
    ),
    ("no rows", jsonl(b""), ValueError, r"has no examples"),
    (
        "strict: duplicate",
        strict({"prompt": "1+1=", "chosen": "2", "rejected": "3"}),
        ValueError,
        r"task 't' \(train\): 1 of 2 rows repeat an earlier row "
        r"\(first: .*t\.jsonl:2\).*strict = false",
    ),
    (
        "strict: chosen = rejected",
        strict({"prompt": "x", "chosen": "y", "rejected": "y"}),
        ValueError,
        r"1 of 2 pairs have chosen = rejected",
    ),
    (
        "strict: unknown symbols",
        strict({"prompt": "caf\u00e9", "chosen": "y", "rejected": "n"}),
        ValueError,
        r"1 of 2 pairs hold text the tokenizer maps to its unknown token",
    ),
    (
        "strict: NUL",
        strict({"prompt": "x", "chosen": "a\u0000", "rejected": "b"}),
        ValueError,
        r"1 of 2 pairs hold NUL characters",
    ),
    (
        "manifest train missing",
        manifest('[tasks.a]\ntrain = "a.jsonl"\n'),
        FileNotFoundError,
        r"task 'a': train file .*a\.jsonl does not exist",
    ),
    (
        "manifest unknown key",
        manifest('[tasks.a]\ntrain = "a.jsonl"\ntest = "a.jsonl"\n', ("a.jsonl",)),
        ValueError,
        r"task 'a' has unknown key\(s\) test",
    ),
    # ---- python -m llm
    (
        "cli: --out is a file",
        cli("run", "--out", "{tmp}/file", setup=a_file),
        Exit2,
        r"^error: --out .*file is a file, not a folder\. Fix",
    ),
    (
        "cli: --out under a file",
        cli("run", "--out", "{tmp}/file/sub", setup=a_file),
        Exit2,
        r"^error: --out .*file/sub cannot be created: part of that path is a file",
    ),
    (
        "cli: synth --out is a file",
        cli("synth", "--out", "{tmp}/file", setup=a_file),
        Exit2,
        r"^error: --out .* is a file",
    ),
    (
        "cli: config missing",
        cli("run", "--config", "{tmp}/absent.toml"),
        Exit2,
        r"^error: config .*absent\.toml does not exist",
    ),
    (
        "cli: config not TOML",
        cli("run", "--config", "{tmp}/c.toml", setup=lambda t: (t / "c.toml").write_text("[run\n")),
        Exit2,
        r"^error: .*c\.toml: not valid TOML",
    ),
    (
        "cli: unknown method",
        cli(
            "run",
            "--config",
            "{tmp}/c.toml",
            setup=lambda t: tiny_config(t, run={"methods": ["ama-x"]}),
        ),
        Exit2,
        r"^error: .*c\.toml \[run\] methods = \['ama-x'\]: method 'ama-x' is unknown",
    ),
    (
        "cli: busy output folder",
        cli("run", "--config", "{tmp}/c.toml", setup=locked_by_a_live_process),
        Exit2,
        rf"^error: output folder .* is in use by another run \(pid {os.getppid()}",
    ),
    (
        "cli: data not UTF-8",
        cli("run", "--config", "{tmp}/c.toml", setup=bad_bytes_in_data),
        Exit2,
        r"^error: .*safety\.train\.jsonl:31: not UTF-8 \(byte 0xe9 at column 16\)",
    ),
    (
        "cli: strict data",
        cli("run", "--config", "{tmp}/c.toml", setup=duplicates_in_strict_mode),
        Exit2,
        r"^error: task 'format' \(train, .*\): 1 of 61 rows repeat an earlier row.*strict = false",
    ),
]


@pytest.mark.parametrize(
    ("run", "error", "pattern"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_bad_input_is_a_named_error(tmp_path, run, error, pattern):
    with pytest.raises(error, match=pattern):
        run(tmp_path)


def test_the_table_covers_the_cases():
    assert len(ROWS) >= 40
    assert len({r[0] for r in ROWS}) == len(ROWS)


def test_every_config_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        config(run={"seeds": [1, 1]}, generalist={"log_every": 0}, dpo={"beta": -1.0})(tmp_path)
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("3 problems in the config:")


def test_an_unknown_method_fails_before_any_work(tmp_path):
    """The tiny-cpu config with a misspelt method: refused from the config alone (the
    reference, the specialists and the output folder are never touched)."""
    text = (REPO / "llm" / "configs" / "tiny-cpu.toml").read_text()
    path = tmp_path / "c.toml"
    path.write_text(text.replace('methods = ["uniform"', 'methods = ["unifrom"'))
    run = cli("run", "--config", str(path), "--out", "{tmp}/out")
    with pytest.raises(Exit2, match="method 'unifrom' is unknown"):
        run(tmp_path)
    assert not (tmp_path / "out").exists()


def test_relative_input_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    write_suite_small(folder / "data")
    write_toml(folder / "c.toml", {"data": {"manifest": "data/tasks.toml"}, "run": {"out": "out"}})
    monkeypatch.chdir(tmp_path)  # elsewhere
    cfg = load_config(Path("project") / "c.toml")
    assert Path(cfg.data.manifest) == (folder / "data" / "tasks.toml").resolve()
    assert cfg.run.out == "out"  # an output: relative to the working directory, like --out


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        llm_main(
            [
                "--debug",
                "run",
                "--config",
                str(write_toml(tmp_path / "c.toml", {"run": {"seeds": []}})),
            ]
        )


def test_data_warnings_in_the_default_mode(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [GOOD, GOOD, json.dumps({"prompt": "x", "chosen": "y", "rejected": "y"})]
    path.write_text("\n".join(rows) + "\n")
    pairs = read_preference_jsonl(path, TOK)
    audit = audit_pairs(pairs, tokenize_pairs(pairs, TOK, max_length=32), TOK)
    with pytest.warns(UserWarning) as caught:
        said = report_audit(audit, "task 't' (train)")
    assert len(caught) == 2 == len(said)
    assert "1 of 3 rows repeat an earlier row (first: " in said[0]
    assert "1 of 3 pairs have chosen = rejected" in said[1]
