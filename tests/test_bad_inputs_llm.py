"""Bad input to the llm backend: one row per case — the input, the exception, a pattern the
message must match.  Config values, task data, manifests, strict data checks and the
``python -m llm`` command line; every case fails before any training, with a message that
names the file, the setting and the fix.  (The amasim rows: test_bad_inputs.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from llm_helpers import FillsUp, write_suite_small, write_toml

from llm.checkpoint import CheckpointFile
from llm.cli import main as llm_main
from llm.config import ConfigError, load_config
from llm.data import (
    audit_pairs,
    load_manifest,
    read_preference_jsonl,
    report_audit,
    tokenize_pairs,
)
from llm.integrity import (
    ForeignFileError,
    IntegrityError,
    IntegrityWarning,
    UnsealedFileError,
)
from llm.preflight import preflight
from llm.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
TOK = CharTokenizer()


# ------------------------------------------------------------------------------ runners
def checked(path: Path) -> Any:
    """A config file loaded and checked as a run checks it before any work: each value
    (:func:`llm.config.load_config`), then with the package (:func:`llm.preflight.preflight`)."""
    return preflight(load_config(path), path)


def config(**changes: dict[str, Any]) -> Callable[[Path], Any]:
    """Load a config: the built-in suite, one method, one seed, with ``changes``."""

    def go(tmp: Path) -> Any:
        sections: dict[str, dict[str, Any]] = {
            "run": {"out": str(tmp / "out"), "seeds": [0], "methods": ["ama-r"]}
        }
        for section, values in changes.items():
            sections[section] = {**sections.get(section, {}), **values}
        return checked(write_toml(tmp / "c.toml", sections))

    return go


def config_text(text: bytes) -> Callable[[Path], Any]:
    def go(tmp: Path) -> Any:
        path = tmp / "c.toml"
        path.write_bytes(text)
        return checked(path)

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


def blocking(*packages: str, run: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """``run`` where ``packages`` cannot be imported (as if not installed: importlib finds
    no spec for a name mapped to None in sys.modules)."""

    def go(tmp: Path) -> Any:
        saved = {name: sys.modules.get(name) for name in packages}
        sys.modules.update(dict.fromkeys(packages))
        try:
            return run(tmp)
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    return go


def hf_folder(tmp: Path) -> str:
    folder = tmp / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return str(folder)


def hf_config(tmp: Path) -> Any:
    return config(model={"kind": "hf", "path": hf_folder(tmp)})(tmp)


def held_folder(tmp: Path) -> None:
    """``tmp/out`` held by a live process (the test's parent), and a tiny config."""
    locked_by_a_live_process(tmp)


def specialist_rows(given: dict[str, Any], sizes: tuple[int, ...] = (2, 1)):
    """Per-row specialist losses built from per-task ``given`` (TRL's trainer does this)."""
    from llm.trl.tasks import rows_by_task

    ids = np.repeat(np.arange(len(sizes)), sizes)
    return lambda tmp: rows_by_task(ids, ("math", "chat")[: len(sizes)], given)


def checked_rows(losses: list[float], *, from_cache: bool):
    from llm.trl.tasks import check_specialist_rows

    ids = np.array([0, 0, 1])
    return lambda tmp: check_specialist_rows(
        np.array(losses), ids, ("math", "chat"), from_cache=from_cache
    )


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
    # ---- optional packages, checked with the config (before any work)
    (
        "tensorboard not installed",
        blocking("tensorboard", run=config(run={"tensorboard": True})),
        ConfigError,
        r"\[run\] tensorboard = True: needs the tensorboard package, which is not installed\. "
        r"Fix: pip install tensorboard, or set tensorboard = false",
    ),
    (
        "peft not installed",
        blocking("peft", run=config_text(b"[model]\nlora = { r = 4 }\n")),
        ConfigError,
        r"\[model\] lora\.r = 4: needs the peft package.*Fix: pip install 'amasim\[hf\]', or "
        r"set lora\.r = 0",
    ),
    (
        "transformers not installed",
        blocking("transformers", run=hf_config),
        ConfigError,
        r"\[model\] kind = 'hf': needs the transformers package.*Fix: pip install 'amasim\[hf\]'",
    ),
    (
        "safetensors not installed",
        blocking("safetensors", run=hf_config),
        ConfigError,
        r"needs the safetensors package",
    ),
    (
        "cli: tensorboard not installed",
        blocking(
            "tensorboard",
            run=cli(
                "run",
                "--config",
                "{tmp}/c.toml",
                setup=lambda t: tiny_config(t, run={"tensorboard": True}),
            ),
        ),
        Exit2,
        r"^error: .*c\.toml \[run\] tensorboard = True: needs the tensorboard package.*Fix: pip",
    ),
    # ---- every writer takes the lock
    (
        "cli: synth into a held folder",
        cli("synth", "--out", "{tmp}/out", setup=held_folder),
        Exit2,
        rf"^error: --out .*out is in use by another run \(pid {os.getppid()}.*Fix: wait",
    ),
    (
        "cli: specialist-cost into a held folder",
        cli("specialist-cost", "--config", "{tmp}/c.toml", "--seeds", "0,1", setup=held_folder),
        Exit2,
        rf"^error: output folder \(\[run\] out\) .*out is in use by another run \(pid "
        rf"{os.getppid()}",
    ),
    (
        "cli: run --out into a held folder",
        cli("run", "--config", "{tmp}/c.toml", "--out", "{tmp}/out", setup=held_folder),
        Exit2,
        r"^error: output folder \(--out\) .*out is in use by another run",
    ),
    # ---- TRL: the specialist losses handed to AMADPOTrainer
    (
        "trl: losses as strings",
        specialist_rows({"math": ["0.3", "0.2"], "chat": [0.1]}),
        TypeError,
        r"the specialist losses of task 'math' are not numbers \(they hold str '0\.3'\)\. Fix",
    ),
    (
        "trl: losses as objects",
        specialist_rows({"math": [0.3, None], "chat": [0.1]}),
        TypeError,
        r"task 'math' are not numbers \(they hold NoneType None\)",
    ),
    (
        "trl: a task without losses",
        specialist_rows({"math": [0.3, 0.2]}),
        ValueError,
        r"no specialist losses for task 'chat'",
    ),
    (
        "trl: too few losses",
        specialist_rows({"math": [0.3], "chat": [0.1]}),
        ValueError,
        r"task 'math' has 2 rows in the training set but 1 specialist losses",
    ),
    (
        "trl: a NaN loss given",
        checked_rows([0.3, 0.2, float("nan")], from_cache=False),
        ValueError,
        r"1 training rows \(first in task 'chat'\) have a NaN specialist loss in the "
        r"specialist_losses given\. Fix: pass finite losses",
    ),
    (
        "trl: an infinite loss",
        checked_rows([float("inf"), 0.2, 0.1], from_cache=True),
        ValueError,
        r"\(first in task 'math'\) have an infinite specialist loss",
    ),
    (
        "trl: rows TRL dropped",
        checked_rows([0.3, float("nan"), float("nan")], from_cache=True),
        ValueError,
        r"2 training rows \(first in task 'math'\) have no specialist loss: TRL dropped them",
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


# ------------------------------------------------------------------------------- files
# Checkpoints, caches, the reference model and failed writes: each row gets a copy of one
# tiny training run, made once (``trained``: llm.train.train with an owner record,
# checkpoints at steps 4 and 6).
def owner(rate: float = 0.01) -> dict[str, Any]:
    from llm.integrity import owner_record

    return owner_record({"generalist": {"learning_rate": rate}}, data="d0")


def tiny_loop():
    from llm.train import LoopConfig

    return LoopConfig(steps=6, batch_size=4, learning_rate=1e-2, checkpoint_every=2)


def resume(folder: Path, run_owner: dict[str, Any] | None = None) -> Any:
    """Train the tiny run again in ``folder`` (resuming what is there)."""
    from llm_helpers import build_oracle

    from amasim import mixers
    from llm.train import train

    return train(
        build_oracle(), mixers.ama_r(1.0), tiny_loop(), out_dir=folder, owner=run_owner or owner()
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """{"trained": the folder of one tiny train() run with an owner record}."""
    trained = tmp_path_factory.mktemp("trained")
    resume(trained)
    return {"trained": trained}


def copied(made: dict[str, Path], tmp: Path, which: str = "trained") -> Path:
    folder = tmp / which
    shutil.copytree(made[which], folder)
    return folder


def unsealed(made, tmp: Path, *, nan: bool = False) -> Path:
    folder = copied(made, tmp)
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    weights = state["oracle"]["policy"]
    next(iter(weights.values())).fill_(float("nan") if nan else 0.5)
    torch.save(state, folder / "checkpoint.pt")
    return folder


def sealed_nan(made, tmp: Path) -> Path:
    """Both kept checkpoints sealed, each holding a NaN weight (another writer's files)."""
    from llm.checkpoint import OWNER_KEY, load
    from llm.integrity import write_sealed

    folder = copied(made, tmp)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        state = load(folder / name) | {OWNER_KEY: owner()}
        next(iter(state["oracle"]["policy"].values())).fill_(float("nan"))
        write_sealed(folder / name, lambda fh, s=state: torch.save(s, fh), kind="checkpoint")
    return folder


def a_folder_at(made, tmp: Path, name: str = "checkpoint.pt") -> Path:
    folder = copied(made, tmp)
    (folder / name).unlink()
    (folder / name / "inside").mkdir(parents=True)
    return folder


def failing_write(code: int, words: str, after: int = 2000):
    """Save a checkpoint over the trained one while every write past ``after`` bytes (or,
    with ``after=0``, opening the file) fails with ``code``."""

    def go(made, tmp: Path) -> Any:
        import builtins

        import llm.integrity
        from llm.checkpoint import CheckpointFile, load

        folder = copied(made, tmp)
        state = load(folder / "checkpoint.pt")
        real_open = builtins.open

        def opening(*args, **kwargs):
            if after == 0:
                raise OSError(code, words)
            return FillsUp(real_open(*args, **kwargs), after, code, words)

        llm.integrity.open = opening  # the module's open() (a global shadowing the builtin)
        try:
            CheckpointFile(folder / "checkpoint.pt").save(state)
        finally:
            del llm.integrity.open

    return go


def warned(category: type[Warning], run: Callable[[Path], Any]):
    """``run`` with ``category`` warnings raised (a row for a warning that rebuilds)."""

    def go(made, tmp: Path) -> Any:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", category)
            return run(made, tmp)

    return go


def foreign_cache_entry(made, tmp: Path) -> Any:
    from llm.cache import entry_path, load_or_compute

    def compute():
        return {"x": np.arange(3.0)}

    load_or_compute(tmp, "reference", {"model": "m2"}, compute)
    shutil.copy(
        entry_path(tmp, "reference", {"model": "m2"}), entry_path(tmp, "reference", {"model": "m1"})
    )
    return load_or_compute(tmp, "reference", {"model": "m1"}, compute)


def cache_entry_folder(made, tmp: Path) -> Any:
    from llm.cache import entry_path, load_or_compute

    entry_path(tmp, "reference", {"model": "m"}).mkdir(parents=True)
    return load_or_compute(tmp, "reference", {"model": "m"}, lambda: {"x": np.ones(2)})


def reference_file(made, tmp: Path, *, sealed: bool, rate: float = 0.01) -> Any:
    from llm.checkpoint import load, load_owned, save_atomic

    path = tmp / "models" / "reference-0.pt"
    path.parent.mkdir()
    if sealed:
        save_atomic({"w": torch.ones(2)}, path, kind="reference model", owner=owner(rate))
        return load_owned(path, owner=owner(), kind="reference model")
    torch.save({"w": torch.ones(2)}, path)
    return load(path, kind="reference model")


def sharded(made, tmp: Path, *, seal: bool = True) -> Any:
    from llm.dcp import ShardedCheckpoint

    folder = tmp / "checkpoint"
    ShardedCheckpoint(folder, owner=owner(0.3)).save({"step": 2, "w": {"x": torch.ones(3)}})
    if not seal:
        manifest = folder / "manifest.json"
        manifest.write_bytes(manifest.read_bytes()[:-256])
    return ShardedCheckpoint(folder, owner=owner(0.3 if not seal else 0.01)).load()


def cli_over_a_folder_at_the_checkpoint(made, tmp: Path) -> Any:
    """``python -m llm run`` whose training stage (stood in for by the train call it makes)
    finds a folder where its checkpoint file belongs."""
    import llm.pipeline

    out = a_folder_at(made, tmp)
    write_toml(tmp / "c.toml", {"run": {"out": str(out), "seeds": [0], "methods": ["ama-r"]}})
    real = llm.pipeline.run_pipeline
    llm.pipeline.run_pipeline = lambda cfg, **kwargs: resume(Path(cfg.run.out))
    try:
        return cli("run", "--config", str(tmp / "c.toml"))(tmp)
    finally:
        llm.pipeline.run_pipeline = real


def metrics_log_disk_full(made, tmp: Path) -> Any:
    import builtins

    import llm.integrity
    from llm.train import MetricsLog

    path = tmp / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step}) + "\n" for step in range(6)))
    log = MetricsLog(path)
    real_open = builtins.open
    llm.integrity.open = lambda *a, **k: FillsUp(real_open(*a, **k), 0, 28, "No space")
    try:
        log.write({"step": 3, "loss": 1.0})  # a resumed run: the log rewritten up to step 3
    finally:
        del llm.integrity.open


def rotation_refused(made, tmp: Path) -> Any:
    from llm.checkpoint import CheckpointFile, load

    folder = copied(made, tmp)
    state = load(folder / "checkpoint.pt")
    real = os.replace

    def refuse(src, dst):
        if str(dst).endswith("checkpoint.prev.pt"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    os.replace = refuse
    try:
        CheckpointFile(folder / "checkpoint.pt").save(state)
    finally:
        os.replace = real


def sharded_disk_full(made, tmp: Path) -> Any:
    """DCP's own writer hits a full disk (DCP reports it as a CheckpointException, which
    is not even an Exception)."""
    from torch.distributed.checkpoint import filesystem

    from llm.dcp import ShardedCheckpoint

    keeper = ShardedCheckpoint(tmp / "checkpoint")
    keeper.save({"step": 2, "w": {"x": torch.ones(1000)}})
    real = filesystem._write_item

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    filesystem._write_item = full
    try:
        keeper.save({"step": 4, "w": {"x": torch.zeros(1000)}})
    finally:
        filesystem._write_item = real


FILES: list[tuple[str, Callable[[dict, Path], Any], type[BaseException], str]] = [
    (
        "checkpoint of another run",
        lambda made, tmp: resume(copied(made, tmp), owner(0.3)),
        ForeignFileError,
        r"the checkpoint .*checkpoint\.pt was written by a run with a different \[generalist\] "
        r"learning_rate \(0\.01, this run 0\.3\)\. Fix: point \[run\] out",
    ),
    (
        "checkpoint without an owner",
        lambda made, tmp: CheckpointFile(_unowned(tmp), owner=owner()).load(),
        ForeignFileError,
        r"carries no owner record .*Fix: point \[run\] out",
    ),
    (
        "unsealed checkpoint",
        lambda made, tmp: resume(unsealed(made, tmp)),
        UnsealedFileError,
        r"the checkpoint .*checkpoint\.pt has no checksum trailer .*Fix: delete",
    ),
    (
        "unsealed checkpoint holding NaN",
        lambda made, tmp: resume(unsealed(made, tmp, nan=True)),
        UnsealedFileError,
        r"has no checksum trailer",
    ),
    (
        "sealed checkpoints holding NaN",
        lambda made, tmp: resume(sealed_nan(made, tmp)),
        IntegrityError,
        r"no checkpoint of this run can be read: .*checkpoint\.pt holds a non-finite value "
        r"\(oracle\.policy\..*: .*nan",
    ),
    (
        "checkpoint.pt is a folder",
        lambda made, tmp: resume(a_folder_at(made, tmp)),
        IsADirectoryError,
        r"the checkpoint .*checkpoint\.pt is a folder, not a file\. Fix: move that folder away",
    ),
    (
        "cli: checkpoint.pt is a folder",
        cli_over_a_folder_at_the_checkpoint,
        Exit2,
        r"^error: the checkpoint .*checkpoint\.pt is a folder, not a file\. Fix",
    ),
    (
        "sharded checkpoint of another run",
        sharded,
        ForeignFileError,
        r"the checkpoint .*checkpoint was written by a run with a different \[generalist\] "
        r"learning_rate \(0\.3, this run 0\.01\)",
    ),
    (
        "unsealed sharded checkpoint",
        lambda made, tmp: sharded(made, tmp, seal=False),
        UnsealedFileError,
        r"no checksum trailer on its manifest\.json",
    ),
    (
        "cache entry of another key",
        warned(IntegrityWarning, foreign_cache_entry),
        IntegrityWarning,
        r"cache entry .*reference-.*\.npz .*computed for another key \(model \(\"m2\", this run "
        r"\"m1\"\)\): rebuilding it",
    ),
    (
        "cache entry is a folder",
        cache_entry_folder,
        IsADirectoryError,
        r"cache entry .*\.npz is a folder, not a file\. Fix",
    ),
    (
        "reference model of another run",
        warned(
            IntegrityWarning, lambda made, tmp: reference_file(made, tmp, sealed=True, rate=0.3)
        ),
        IntegrityWarning,
        r"the reference model .*reference-0\.pt was written by a run with a different .*: "
        r"computing it again",
    ),
    (
        "unsealed reference model",
        lambda made, tmp: reference_file(made, tmp, sealed=False),
        UnsealedFileError,
        r"the reference model .* has no checksum trailer",
    ),
    (
        "disk full while saving",
        failing_write(28, "No space left on device"),
        OSError,
        r"cannot write the checkpoint .*checkpoint\.pt: No space left on device \(ENOSPC\); it "
        r"needed about .* kB; .* were written; the previous checkpoint\.pt is intact\. "
        r"Fix: free disk space",
    ),
    (
        "file too large while saving",
        failing_write(27, "File too large"),
        OSError,
        r"checkpoint\.pt: File too large \(EFBIG.*\); .*previous checkpoint\.pt is intact\. "
        r"Fix: raise the file-size limit",
    ),
    (
        "permission lost while saving",
        failing_write(13, "Permission denied", after=0),
        PermissionError,
        r"checkpoint\.pt: Permission denied \(EACCES\); it needed about .*; the previous "
        r"checkpoint\.pt is intact\. Fix: make the folder writable",
    ),
    (
        "read-only file system while saving",
        failing_write(30, "Read-only file system", after=0),
        OSError,
        r"checkpoint\.pt: Read-only file system \(EROFS\).*Fix: remount",
    ),
    (
        "I/O error while saving",
        failing_write(5, "Input/output error"),
        OSError,
        r"checkpoint\.pt: Input/output error \(EIO\).*Fix: check the disk",
    ),
    (
        "disk full while saving a sharded checkpoint",
        sharded_disk_full,
        OSError,
        r"cannot write the checkpoint .*checkpoint: No space left on device \(ENOSPC\); it "
        r"needed about 4\.0 kB; the previous checkpoint checkpoint is intact\. Fix: free",
    ),
    (
        "checkpoints cannot rotate",
        rotation_refused,
        OSError,
        r"cannot rotate the checkpoints in .*: permission denied; the new state is kept at .*"
        r"\.checkpoint\.pt\.next\. Fix",
    ),
    (
        "disk full while logging",
        metrics_log_disk_full,
        OSError,
        r"cannot write the metrics log .*metrics\.jsonl: No space left on device \(ENOSPC\); .*"
        r"the previous metrics\.jsonl is intact",
    ),
]


def _unowned(tmp: Path) -> Path:
    """A sealed checkpoint written without an owner record (an older version's)."""
    from llm.checkpoint import save_atomic

    path = tmp / "checkpoint.pt"
    save_atomic({"step": 2, "w": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize(
    ("run", "error", "pattern"), [r[1:] for r in FILES], ids=[r[0] for r in FILES]
)
def test_a_bad_file_is_a_named_error(made, tmp_path, run, error, pattern):
    with pytest.raises(error, match=pattern):
        run(made, tmp_path)


def test_the_battery_counts_its_rows():
    """Every case tried is a row; the number is the size of the battery (with the amasim
    rows of test_bad_inputs.py)."""
    import test_bad_inputs as amasim_rows

    ours = len(ROWS) + len(FILES)
    theirs = sum(
        len(table)
        for table in (amasim_rows.API, amasim_rows.CLI, amasim_rows.WRITERS, amasim_rows.EXITS)
    ) + len(amasim_rows.WRITERS)  # each writer is tried twice: a held folder, a file
    assert ours >= 100 and theirs >= 90 and ours + theirs >= 130, (ours, theirs)
    assert len({r[0] for r in FILES}) == len(FILES)
