"""The full AutoMixAlign pipeline: ``python -m llm run --config CONFIG``.

    tasks (JSONL manifest, or the built-in suite)
      → reference model (built-in GPT after a short SFT on the chosen answers, or a local
        Hugging Face model) → reference log-probs, cached once
      → one DPO specialist per task → its per-pair losses, cached once
      → one generalist per method × seed, at an equal example budget
      → per-task evaluation → ``results.json``, ``results.md``, plots

Every cache is keyed by the fingerprints of what produced it (model weights, token ids,
settings, the specialists' losses a generalist reads, device, dtype and CPU thread count),
so changing the model, the data, β or the thread count recomputes it (:mod:`llm.cache`);
a run on warm caches gives the numbers of a run from scratch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amasim import mixers, prng
from amasim.merging import merge
from amasim.methods import examples_per_step
from llm.cache import cache_key, load_or_compute
from llm.checkpoint import load, save_atomic
from llm.config import Config
from llm.data import load_manifest, read_preference_jsonl, tokenize_pairs
from llm.distributed import init_from_env, rank_streams, reduce_task_scores
from llm.dpo import sequence_logps
from llm.evaluate import greedy_exact_match
from llm.model import GPT, GPTConfig, fingerprint
from llm.oracle import DPOOracle, TaskData, dpo_settings, pair_losses, reference_logps
from llm.tokenizer import CharTokenizer
from llm.train import LoopConfig, MetricsLog, train

__all__ = ["run_pipeline", "build_mixer", "MERGES"]

#: pipeline method → amasim.merging method, applied to the specialists (base: reference)
MERGES = {
    "merge-linear": "linear",
    "merge-task-arithmetic": "task_arithmetic",
    "merge-ties": "ties",
    "merge-dare-ties": "dare_ties",
}


def build_mixer(method: str, num_tasks: int, sizes: tuple[int, ...], cfg: Config) -> mixers.Mixer:
    """The mixer of a pipeline method (LLM settings: constant steps from ``[mix]``)."""
    eta, c = cfg.mix.step_size, cfg.mix.smoothing
    factories = {
        "uniform": lambda: mixers.uniform(list(sizes)),
        "stratified": mixers.stratified,
        "group-dro": lambda: mixers.group_dro(eta),
        "ama-r": lambda: mixers.ama_r(eta),
        "ama-s": lambda: mixers.ama_s(eta, c),
        "ama-r-noclip": lambda: mixers.ama_r(eta, score="excess"),
        "ama-s-noclip": lambda: mixers.ama_s(eta, c, score="excess"),
        "doremi": lambda: mixers.doremi(eta, c),
        "odm": mixers.odm,
    }
    if method not in factories:
        known = sorted(factories) + sorted(MERGES)
        raise ValueError(f"[run] methods: {method!r} is unknown; use {known}")
    return factories[method]()


# ----------------------------------------------------------------------------- data
def _load_tasks(cfg: Config, out: Path, tokenizer) -> dict[str, dict[str, Any]]:
    if cfg.data.manifest:
        manifest = Path(cfg.data.manifest)
    else:
        from llm.synth import write_suite

        manifest = write_suite(out / "data", seed=cfg.data.synth_seed)
    tasks = {}
    for name, files in load_manifest(manifest).items():
        entry = {}
        for split, path in (("train", files.train), ("eval", files.eval or files.train)):
            raw = read_preference_jsonl(path, tokenizer)
            entry[split + "_raw"] = raw
            entry[split] = tokenize_pairs(
                raw,
                tokenizer,
                max_length=cfg.data.max_length,
                max_prompt_length=cfg.data.max_prompt_length,
                truncate_prompt=cfg.data.truncate_prompt,
            )
        tasks[name] = entry
    return tasks


# ------------------------------------------------------------------------ reference
def _cached_model(path: Path, key: str, build) -> dict:
    if path.exists():
        saved = load(path)
        if saved.get("key") == key:
            return saved["state"]
    state = build()
    save_atomic({"key": key, "state": state}, path)
    return state


def _sft(model: torch.nn.Module, tasks, cfg: Config, pad_id: int) -> dict:
    """Next-token loss on the chosen completions of every task (uniform over pairs).

    Leaves the model as a cache hit would: reference weights, no gradients (a stale
    ``.grad`` would be added to the first specialist's first step), global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.init_seed)  # dropout masks, if the model has dropout
        _sft_steps(model, tasks, cfg, pad_id)
    model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sft_steps(model: torch.nn.Module, tasks, cfg: Config, pad_id: int) -> None:
    from llm.data import collate_pairs

    generator = torch.Generator().manual_seed(cfg.model.init_seed)
    pairs = [(name, i) for name, t in tasks.items() for i in range(len(t["train"]))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft.learning_rate)
    model.train()
    for _ in range(cfg.sft.steps):
        pick = torch.randint(len(pairs), (cfg.sft.batch_size,), generator=generator).tolist()
        loss = 0.0
        for name in tasks:
            idx = [pairs[p][1] for p in pick if pairs[p][0] == name]
            if idx:
                batch = collate_pairs(tasks[name]["train"], idx, pad_id)
                logits = model(batch["input_ids"], batch["attention_mask"])
                n = len(idx)
                chosen = sequence_logps(
                    logits[:n], batch["input_ids"][:n], batch["loss_mask"][:n], average=True
                )
                loss = loss - chosen.sum() / cfg.sft.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _reference(cfg: Config, out: Path, tasks):
    """(model at the reference weights, tokenizer)."""
    if cfg.model.kind == "hf":
        from llm.hf import load_local

        return load_local(cfg.model.path)
    if cfg.model.kind != "gpt":
        raise ValueError(f"[model] kind={cfg.model.kind!r}: use 'gpt' or 'hf'")
    tokenizer = CharTokenizer()
    m = cfg.model
    config = GPTConfig(tokenizer.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)
    model = GPT(config, generator=torch.Generator().manual_seed(m.init_seed))
    key = cache_key(
        {"model": asdict(cfg.model), "sft": asdict(cfg.sft), "init": fingerprint(model)}
        | {name: t["train"].fingerprint for name, t in tasks.items()}
        | {"threads": torch.get_num_threads()}  # CPU reductions split by thread count
    )
    model.load_state_dict(
        _cached_model(
            out / "models" / f"reference-{key[:16]}.pt",  # one file per setting: no retraining
            key,
            lambda: _sft(model, tasks, cfg, tokenizer.pad_id),
        )
    )
    return model, tokenizer


# ---------------------------------------------------------------------------- stages
def _oracle(
    model, task_data, eval_data, cfg: Config, stage, pad_id, dpo, stream=prng.SAMPLE_STREAM
) -> DPOOracle:
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}
    if cfg.run.dtype not in dtypes:
        raise ValueError(f"[run] dtype={cfg.run.dtype!r}: use 'float32' or 'bfloat16'")
    return DPOOracle(
        model,
        task_data,
        eval_tasks=eval_data,
        pad_id=pad_id,
        dpo=dpo,
        grad_clip=stage.grad_clip,
        weight_decay=stage.weight_decay,
        device=cfg.run.device,
        autocast_dtype=dtypes[cfg.run.dtype],
        micro_batch_size=stage.micro_batch_size or None,
        eval_batch_size=cfg.eval.batch_size,
        sample_stream=stream,
    )


def _loop(stage, steps: int, seed: int, cfg: Config) -> LoopConfig:
    return LoopConfig(
        steps=steps,
        batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        schedule=stage.schedule,
        seed=seed,
        log_every=stage.log_every,
        checkpoint_every=stage.checkpoint_every,
        peak_flops=cfg.run.peak_flops or None,
    )


def _evaluated(oracle: DPOOracle, model, tokenizer, tasks, cfg: Config) -> dict[str, Any]:
    """Per-task held-out metrics of the current policy, greedy exact match included."""
    per_task = oracle.evaluate_tasks()
    for task, row in per_task.items():
        row["exact_match"] = greedy_exact_match(
            model,
            tokenizer,
            tasks[task]["eval_raw"][: cfg.eval.generate],
            max_new_tokens=cfg.eval.max_new_tokens,
            device=cfg.run.device,
        )
    return {"tasks": per_task, "worst_task_excess": max(v["clipped"] for v in per_task.values())}


def run_pipeline(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run every stage; returns the results record (also written to ``OUT/results.json``)."""
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    started = time.perf_counter()
    dpo = dpo_settings(cfg.dpo.beta, cfg.dpo.loss_type, cfg.dpo.label_smoothing)
    tokenizer = CharTokenizer() if cfg.model.kind == "gpt" else None
    if tokenizer is None:
        from llm.hf import load_local

        tokenizer = load_local(cfg.model.path)[1]
    tasks = _load_tasks(cfg, out, tokenizer)
    model, model_tokenizer = _reference(cfg, out, tasks)
    if model_tokenizer.fingerprint != tokenizer.fingerprint:
        raise ValueError("the policy and reference tokenizers differ: use one tokenizer for both")
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_fp = fingerprint(model)
    # What else sets the numbers: on CPU the intra-op thread count changes how reductions
    # are split (so the last bits); a cache written under other settings is not reused.
    numerics = {
        "device": cfg.run.device,
        "dtype": cfg.run.dtype,
        "threads": torch.get_num_threads(),
    }
    average = dpo["loss_type"] == "ipo"
    cache = out / "cache"
    say = print if progress else (lambda *a, **k: None)

    def ref_logps(pairs):
        key = {"model": ref_fp, "pairs": pairs.fingerprint, "average": average}
        key["threads"] = numerics["threads"]  # computed on the CPU, in float32

        def compute():
            logps = reference_logps(model, pairs, pad_id=tokenizer.pad_id, average=average)
            return {"logps": logps}

        return load_or_compute(cache, "reference", key, compute)["logps"]

    for t in tasks.values():
        t["train_ref"], t["eval_ref"] = ref_logps(t["train"]), ref_logps(t["eval"])
    say(f"reference ready ({time.perf_counter() - started:.0f} s)")

    # One DPO specialist per task; its per-pair losses are cached (specialist stage).
    spec = cfg.specialist
    merges_wanted = any(method in MERGES for method in cfg.run.methods)
    for name, t in tasks.items():
        key = {
            "reference": ref_fp,
            "pairs": t["train"].fingerprint,
            "eval_pairs": t["eval"].fingerprint,
            "dpo": dpo,
            "stage": asdict(spec),
            # 2: trained without the reference SFT's leftover gradients (entries written
            # before could differ between a fresh and a cached reference: not reused).
            "version": 2,
        } | numerics

        folder = out / "specialists" / f"{name}-{cache_key(key)[:12]}"
        t["specialist_checkpoint"] = folder / "checkpoint.pt"

        def specialist_losses(t=t, name=name, folder=folder):
            model.load_state_dict(reference_state)
            data = [TaskData(name, t["train"], t["train_ref"], np.zeros(len(t["train"])))]
            oracle = _oracle(model, data, None, cfg, spec, tokenizer.pad_id, dpo)
            log = MetricsLog(folder / "metrics.jsonl")
            train(
                oracle,
                mixers.stratified(),
                _loop(spec, spec.steps, 0, cfg),
                out_dir=folder,
                log=log,
                progress=f"specialist {name}" if progress else None,
            )
            losses = {}
            for split in ("train", "eval"):
                res = pair_losses(
                    model, t[split], t[split + "_ref"], pad_id=tokenizer.pad_id, dpo=dpo
                )
                losses[split] = res["loss"]
            return losses

        cached = load_or_compute(cache, "specialist", key, specialist_losses)
        if merges_wanted and not t["specialist_checkpoint"].exists():
            # The merges read the specialist's weights, not its cached losses: train it
            # again (deterministic, so its losses are the cached ones).
            say(f"specialist {name}: checkpoint missing, retraining it for the merges")
            specialist_losses()
        t["train_spec"], t["eval_spec"] = cached["train"], cached["eval"]
        say(f"specialist {name}: mean eval loss {cached['eval'].mean():.4f}")
    model.load_state_dict(reference_state)

    names = list(tasks)
    # The generalists read the specialists' losses: key their runs by those numbers.
    specialist_fp = cache_key(
        {n: hashlib.sha256(tasks[n]["train_spec"].tobytes()).hexdigest() for n in names}
    )
    train_data = [
        TaskData(n, tasks[n]["train"], tasks[n]["train_ref"], tasks[n]["train_spec"]) for n in names
    ]
    eval_data = [
        TaskData(n, tasks[n]["eval"], tasks[n]["eval_ref"], tasks[n]["eval_spec"]) for n in names
    ]
    # Data parallel under torchrun: DDP averages gradients, per-task scores are all-reduced
    # before each mixer update, every rank draws its own examples (llm.distributed).
    rank, world = init_from_env()
    policy = model
    if world > 1:
        policy = torch.nn.parallel.DistributedDataParallel(model)
    loop_stream, oracle_stream = rank_streams(rank)
    oracle = _oracle(
        policy, train_data, eval_data, cfg, cfg.generalist, tokenizer.pad_id, dpo, oracle_stream
    )
    if cfg.run.compile:
        model.forward = torch.compile(model.forward)
    sizes = tuple(len(t["train"]) for t in tasks.values())
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in cfg.run.methods:
        if method in MERGES:  # a merge of the specialists: no training, evaluated per seed
            states = [load(tasks[n]["specialist_checkpoint"])["oracle"]["policy"] for n in names]
            for seed in cfg.run.seeds:
                tick = time.perf_counter()
                options = {"seed": seed} if MERGES[method].startswith("dare") else {}
                weights = [1.0 / len(names)] * len(names)  # task vectors averaged, not summed
                model.load_state_dict(
                    merge(MERGES[method], reference_state, states, weights=weights, **options)
                )
                record = _evaluated(oracle, model, tokenizer, tasks, cfg)
                record |= {"seed": seed, "steps": 0, "seconds": time.perf_counter() - tick}
                runs.setdefault(method, []).append(record)
                say(f"{method} seed {seed}: worst-task excess {record['worst_task_excess']:.4f}")
            continue
        mixer = build_mixer(method, len(names), sizes, cfg)
        steps = max(
            1, cfg.mix.examples // examples_per_step(mixer, len(names), cfg.generalist.batch_size)
        )
        for seed in cfg.run.seeds:
            run_key = {
                "reference": ref_fp,
                "specialists": specialist_fp,
                "dpo": dpo,
                "mix": asdict(cfg.mix),
            } | numerics
            run_key |= {
                "stage": asdict(cfg.generalist),
                "data": [d.pairs.fingerprint for d in train_data],
            }
            name = f"{method}-seed{seed}-{cache_key(run_key)[:12]}"
            folder = out / "generalists" / name / f"rank{rank}"
            log = MetricsLog(
                folder / "metrics.jsonl", folder / "tb" if cfg.run.tensorboard else None
            )
            tick = time.perf_counter()
            result = train(
                oracle,
                mixer,
                _loop(cfg.generalist, steps, seed, cfg),
                out_dir=folder,
                log=log,
                flops_per_token=model.flops_per_token(cfg.data.max_length),
                reduce=reduce_task_scores if world > 1 else None,
                stream=loop_stream,
                progress=f"{method} seed {seed}" if progress and rank == 0 else None,
            )
            log.close()
            record = _evaluated(oracle, model, tokenizer, tasks, cfg)
            record |= {"seed": seed, "steps": steps, "seconds": time.perf_counter() - tick}
            record["history"] = result["history"]
            runs.setdefault(method, []).append(record)
            say(f"{method} seed {seed}: worst-task excess {record['worst_task_excess']:.4f}")
    results = {"config": asdict(cfg), "tasks": names, "sizes": sizes, "runs": runs}
    results["seconds"] = time.perf_counter() - started
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results))
        from llm.report import write_report

        write_report(results, out)
    return results
