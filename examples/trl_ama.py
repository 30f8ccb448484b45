"""AutoMixAlign in a TRL DPO script: per-task datasets, specialists, AMADPOTrainer, a plot.

    python examples/trl_ama.py --smoke --out runs/smoke           # offline, tiny, CPU, < 2 min
    python examples/trl_ama.py --model MODEL_DIR --data DATA --out runs/ama

DATA is the pipeline's layout, read and audited as ``python -m llm run`` reads it: a manifest
(``tasks.toml`` naming ``<task>.train.jsonl`` and ``<task>.eval.jsonl``), or a folder holding
one, or a folder of ``<task>.jsonl`` files, in TRL's preference format (prompt/chosen/rejected
rows, standard or conversational).  Writes ``<out>/weights.png``.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from transformers import AutoTokenizer
from trl import DPOConfig

from amasim.mixers import ama_r, ama_s
from llm.trl import AMADPOTrainer, cache_specialist_losses, concatenate_tasks, load_task_datasets
from llm.trl.tiny import dataset_texts, synthetic_task_datasets, write_tiny_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="tiny local model and tasks, CPU")
parser.add_argument("--model", help="a local model directory (the base and reference)")
parser.add_argument("--data", help="a manifest (tasks.toml) or a folder of <task>.jsonl files")
parser.add_argument("--out", required=True, help="output folder")
parser.add_argument("--mixer", choices=["ama_r", "ama_s"], default="ama_r")
parser.add_argument("--step-size", type=float, default=5.0, help="the mixer's step size η")
parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (smoke: 20)")
cli = parser.parse_args()
if not cli.smoke and not (cli.model and cli.data):
    parser.error("pass --model and --data, or --smoke")
out = Path(cli.out)

if cli.smoke:  # everything made here: tasks from llm.synth, a BPE tokenizer, a 1-layer GPT-2
    datasets = synthetic_task_datasets({"arithmetic": 60, "safety": 30, "format": 90})
    model, steps = write_tiny_model(out / "tiny-model", dataset_texts(datasets)), 20
else:
    model, steps = cli.model, cli.steps
tokenizer = AutoTokenizer.from_pretrained(model)
common = dict(
    per_device_train_batch_size=6,
    learning_rate=5e-4 if cli.smoke else 5e-7,
    max_steps=steps,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    activation_checkpointing=False,  # transformers 5.25: gradient_checkpointing is deprecated
    use_cpu=cli.smoke,
    disable_tqdm=cli.smoke,
)
args = DPOConfig(output_dir=str(out / "ama"), **common)
if not cli.smoke:  # the training split of every task, audited with TRL's tokenisation
    datasets = load_task_datasets(cli.data, tokenizer, max_length=args.max_length)

# 1. Each task's specialist (TRL's DPOTrainer on that task alone), its per-pair losses cached.
specialists = DPOConfig(output_dir=str(out / "specialists"), **common)
losses = cache_specialist_losses(
    model, datasets, specialists, args=args, cache_dir=out / "cache", processing_class=tokenizer
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

log = trainer.mixture_log
for i, task in enumerate(trainer.task_names):
    plt.plot([0, *log["step"]], [1 / len(datasets), *log["weights"][:, i]], label=task)
plt.xlabel("optimizer step")
plt.ylabel("task weight α")
plt.title(f"{mixer.name} in TRL's DPOTrainer")
plt.legend()
plt.savefig(out / "weights.png", dpi=120)
final = {task: round(float(w), 3) for task, w in zip(trainer.task_names, log["weights"][-1])}
print(f"final weights {final}; plot: {out / 'weights.png'}")
