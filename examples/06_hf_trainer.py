"""Train a Hugging Face model with weight mirrors inside transformers.Trainer.

A tiny BERT classifier, randomly initialised from its config (nothing is
downloaded), learns a toy task: does the sequence of 12 random tokens contain
token 7? `rbp.convert(model, "wm")` gives it weight mirrors (Akrout et al.
2019): random feedback that learns to mirror the forward weights between
training steps, in `model.rbp_channel.after_step()`. The Trainer owns the loop,
so `RBPTrainerCallback` makes that call after every optimizer step. Everything
else is the usual Trainer: its optimizer (AdamW), scheduler, batching, logging.
Needs `pip install 'rbp[transformers]'` (transformers and accelerate).

    python examples/06_hf_trainer.py [OUT_DIR]                 # 300 steps
    RBP_EXAMPLE_QUICK=1 python examples/06_hf_trainer.py       # 100 steps
"""

import os
import sys
import tempfile

import torch
import transformers

import rbp
from rbp.integrations import RBPTrainerCallback

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
STEPS = 100 if QUICK else 300
out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hf-trainer-")
transformers.logging.set_verbosity_error()


class ContainsSeven(torch.utils.data.Dataset):
    """Sequences of 12 tokens from a vocabulary of 20; label 1 (half of them) when token 7 occurs."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 19, (n, 12), generator=g)
        ids[ids >= 7] += 1                                   # no 7 anywhere ...
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        where = torch.randint(0, 12, (n,), generator=g)
        ids[self.labels.bool(), where[self.labels.bool()]] = 7   # ... except once in the positives
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


config = transformers.BertConfig(
    vocab_size=20, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=128, max_position_embeddings=16, num_labels=2)
torch.manual_seed(0)
model = transformers.BertForSequenceClassification(config)   # random init
model = rbp.convert(model, "wm", seed=0)                      # weight mirrors
print(model.rbp_channel.report)

args = transformers.TrainingArguments(
    output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=32,
    learning_rate=1e-3, warmup_steps=STEPS // 10, logging_steps=max(STEPS // 10, 1),
    report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
trainer = transformers.Trainer(
    model=model, args=args,
    train_dataset=ContainsSeven(2000, seed=0), eval_dataset=ContainsSeven(500, seed=1),
    callbacks=[RBPTrainerCallback()],   # calls model.rbp_channel.after_step() after each step
    compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
trainer.remove_callback(transformers.PrinterCallback)   # quiet: the losses are printed below
trainer.train()

for entry in trainer.state.log_history:
    if "loss" in entry:
        print(f"step {entry['step']:4d}  training loss {entry['loss']:.4f}")
metrics = trainer.evaluate()
print(f"held-out loss {metrics['eval_loss']:.4f}  accuracy {metrics['eval_accuracy']:.3f}")
