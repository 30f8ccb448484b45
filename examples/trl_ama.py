"""AutoMixAlign in a TRL DPO script: per-task datasets, specialists, AMADPOTrainer, the report.

    python examples/trl_ama.py --smoke --out runs/smoke           # offline, tiny, < 2 min
    python examples/trl_ama.py --model MODEL_DIR --data DATA --out runs/ama

DATA is the pipeline's layout, read and audited as ``python -m llm run`` reads it: a manifest
(``tasks.toml`` naming ``<task>.train.jsonl`` and ``<task>.eval.jsonl``), or a folder holding
one, or a folder of ``<task>.jsonl`` files, in TRL's preference format (prompt/chosen/rejected
rows, standard or conversational).  ``--smoke`` makes a tiny model in ``<out>`` and trains it
on the built-in tasks (``llm.synth``), or on ``--data``.

It runs where the pipeline runs: on the GPU when there is one, in bfloat16 where that GPU
supports it (float32 otherwise), else on the CPU (``--device``, ``--dtype`` choose).  After
training, the held-out split is scored by the pipeline's evaluator and ``<out>/results.json``,
``results.md`` and the figures are written as ``python -m llm run`` writes them.
"""

import argparse
from pathlib import Path

from transformers import AutoTokenizer
from trl import DPOConfig

from amasim.mixers import ama_r, ama_s
from llm.config import EvalSection
from llm.report import summary_table, task_table
from llm.synth import write_suite
from llm.trl import AMADPOTrainer, cache_specialist_losses, concatenate_tasks, load_task_datasets
from llm.trl.device import DEVICES, DTYPES, device_settings, precision_of
from llm.trl.report import evaluate_and_report
from llm.trl.tiny import task_texts, write_tiny_model

SMOKE_SIZES = {"arithmetic": (60, 20), "safety": (30, 20), "format": (90, 20)}  # (train, eval)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--smoke", action="store_true", help="a tiny model made here; the built-in tasks unless --data"
)
parser.add_argument("--model", help="a local model directory (the base and reference)")
parser.add_argument("--data", help="a manifest (tasks.toml) or a folder of <task>.jsonl files")
parser.add_argument("--out", required=True, help="output folder")
parser.add_argument("--mixer", choices=["ama_r", "ama_s"], default="ama_r")
parser.add_argument("--step-size", type=float, default=5.0, help="the mixer's step size η")
parser.add_argument(
    "--steps",
    type=int,
    help="optimizer steps, each specialist's and the run's (default 1000; smoke: 20)",
)
parser.add_argument("--batch-size", type=int, default=6, help="pairs per device and step")
parser.add_argument(
    "--generate",
    type=int,
    default=EvalSection().generate,
    help="held-out prompts per task decoded for exact match (0: none), as [eval] generate",
)
parser.add_argument("--device", choices=DEVICES, help="default: cuda when there is a GPU")
parser.add_argument(
    "--dtype", choices=DTYPES, help="default: bfloat16 where the GPU supports it, else float32"
)
cli = parser.parse_args()
if not cli.smoke and not (cli.model and cli.data):
    parser.error("pass --model and --data, or --smoke")
out = Path(cli.out)

data, model = cli.data, cli.model
if cli.smoke:  # made here: a BPE tokenizer and a 1-layer GPT-2, the built-in tasks unless --data
    data = data or write_suite(out / "data", sizes=SMOKE_SIZES)
    model = write_tiny_model(out / "tiny-model", task_texts(data))
tokenizer = AutoTokenizer.from_pretrained(model)
common = dict(
    per_device_train_batch_size=cli.batch_size,
    learning_rate=5e-4 if cli.smoke else 5e-7,
    max_steps=cli.steps or (20 if cli.smoke else 1000),
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    activation_checkpointing=False,  # transformers 5.25: gradient_checkpointing is deprecated
    disable_tqdm=cli.smoke,
    **device_settings(cli.device, cli.dtype),
)
args = DPOConfig(output_dir=str(out / "ama"), **common)
precision = precision_of(args)
print(f"device: {precision.device.type}, {precision.dtype_name} (--device, --dtype choose)")
# the training split of every task, audited with TRL's tokenisation
datasets = load_task_datasets(data, tokenizer, max_length=args.max_length)

# 1. Each task's specialist (TRL's DPOTrainer on that task alone), its per-pair losses cached,
#    its weights kept for the held-out report.
specialists = DPOConfig(output_dir=str(out / "specialists"), **common)
losses = cache_specialist_losses(
    model,
    datasets,
    specialists,
    args=args,
    cache_dir=out / "cache",
    processing_class=tokenizer,
    need_weights=True,
)
# 2. One run on all tasks; the mixer moves weight to the tasks furthest behind their specialist.
mixer = ama_r(cli.step_size) if cli.mixer == "ama_r" else ama_s(cli.step_size, 0.1)
trainer = AMADPOTrainer(
    model,
    args=args,
    train_dataset=concatenate_tasks(datasets),
    processing_class=tokenizer,
    mixer=mixer,
    specialist_losses=losses,
)
trainer.train()

# 3. The held-out split scored by the pipeline's evaluator; its report written into <out>.
results = evaluate_and_report(trainer, data, losses, out, generate=cli.generate)
print(f"\n{summary_table(results)}\n\n{task_table(results)}\n")
print(f"report: {out / 'results.md'}; results: {out / 'results.json'}")
