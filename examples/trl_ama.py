"""AutoMixAlign in a TRL DPO script: per-task datasets, specialists, AMADPOTrainer, a plot.

    python examples/trl_ama.py --smoke --out runs/smoke           # offline, tiny, CPU, < 2 min
    python examples/trl_ama.py --model MODEL_DIR --data TASKS_DIR --out runs/ama

TASKS_DIR holds one ``<task>.jsonl`` per task in TRL's preference format (prompt/chosen/
rejected rows, standard or conversational).  Writes ``<out>/weights.png``.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from datasets import load_dataset
from transformers import AutoTokenizer
from trl import DPOConfig

from amasim.mixers import ama_r, ama_s
from llm.trl import AMADPOTrainer, cache_specialist_losses, concatenate_tasks
from llm.trl.tiny import dataset_texts, synthetic_task_datasets, write_tiny_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--smoke", action="store_true", help="tiny local model and tasks, CPU")
parser.add_argument("--model", help="a local model directory (the base and reference)")
parser.add_argument("--data", help="a folder of <task>.jsonl preference files")
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
    files = sorted(Path(cli.data).glob("*.jsonl"))
    datasets = {f.stem: load_dataset("json", data_files=str(f), split="train") for f in files}
    model, steps = cli.model, cli.steps
tokenizer = AutoTokenizer.from_pretrained(model)
common = dict(
    per_device_train_batch_size=6,
    learning_rate=5e-4 if cli.smoke else 5e-7,
    max_steps=steps,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    gradient_checkpointing=False,
    use_cpu=cli.smoke,
    disable_tqdm=cli.smoke,
)
args = DPOConfig(output_dir=str(out / "ama"), **common)

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
