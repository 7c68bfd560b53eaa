"""A small GPT-2 learns to reverse strings: BP, RBP and SRBP side by side.

The model is Hugging Face's GPT2LMHeadModel built from a GPT2Config (random
init, nothing downloaded): 2 layers, 4 heads, width 64, a character vocabulary
of 11. Each training sequence is a random string of 6 letters from a-h, "=",
the string reversed, and "." (e.g. "cabhde=edhbac."); the loss is the
next-character cross-entropy on the answer (the reversed string and the "."),
so the random prompt is not scored. A model that knows only the answer's form
(6 letters, then ".") scores 6/7 ln 8 = 1.78 nats per character; a model that
reverses scores 0.

The same initial weights, the same minibatches and Adam train three converted
copies: `bp` (the exact gradient), `rbp` (feedback alignment) and `srbp`
(direct feedback alignment). GPT-2 ties its output layer to the token
embedding; `model.rbp_channel.report` says how rbp trains the shared tensor.
Writes the three loss curves (PNG) and the final losses (JSON beside it).
Needs `pip install 'rbp[transformers]' matplotlib`.

    python examples/08_gpt2_toy_lm.py [OUT.png]                 # 600 steps each
    RBP_EXAMPLE_QUICK=1 python examples/08_gpt2_toy_lm.py [OUT.png]   # 30 steps
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib
import torch
import transformers

import rbp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUICK = os.environ.get("RBP_EXAMPLE_QUICK") == "1"
STEPS = 30 if QUICK else 600
BATCH, LENGTH = 64, 6
out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpt2_toy_lm.png")
transformers.logging.set_verbosity_error()

LETTERS = "abcdefgh"
VOCAB = LETTERS + "=."                       # 10 characters, and a padding id no sequence uses
PAD = len(VOCAB)


def batch(g, n=BATCH):
    """n sequences "<string>=<reversed>." as ids, and labels that score only the answer."""
    s = torch.randint(0, len(LETTERS), (n, LENGTH), generator=g)
    eq = torch.full((n, 1), VOCAB.index("="))
    dot = torch.full((n, 1), VOCAB.index("."))
    ids = torch.cat([s, eq, s.flip(1), dot], dim=1)           # (n, 2 * LENGTH + 2)
    labels = ids.clone()
    labels[:, :LENGTH + 1] = -100                             # the prompt and "=" are not scored
    return ids, labels


config = transformers.GPT2Config(
    vocab_size=len(VOCAB) + 1, n_positions=2 * LENGTH + 2, n_embd=64, n_layer=2, n_head=4,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD)     # GPT-2's defaults name ids the toy vocabulary lacks
torch.manual_seed(0)
base = transformers.GPT2LMHeadModel(config)                   # random init; lm_head tied to wte
held_out = batch(torch.Generator().manual_seed(12345), n=512)


def evaluate(model):
    model.eval()
    with torch.no_grad():
        ids, labels = held_out
        out = model(input_ids=ids, labels=labels)
        pred = out.logits[:, :-1].argmax(-1)
        scored = labels[:, 1:] != -100
        acc = (pred == labels[:, 1:])[scored].float().mean().item()
    model.train()
    return out.loss.item(), acc


curves, final = {}, {}
for algorithm in ("bp", "rbp", "srbp"):
    model = rbp.convert(base, algorithm, seed=0)              # a copy; base stays as it is
    if algorithm == "srbp":
        print(model.rbp_channel.report)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)                      # the same minibatches for all three
    losses, t0 = [], time.perf_counter()
    for step in range(1, STEPS + 1):
        ids, labels = batch(g)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss       # .grad: the algorithm's update
        loss.backward()
        opt.step()
        model.rbp_channel.after_step()
        losses.append(loss.item())
        if step % max(STEPS // 6, 1) == 0:
            print(f"{algorithm:4s} step {step:4d}  training loss {loss.item():.4f}")
    held_loss, held_acc = evaluate(model)
    tail = losses[-max(STEPS // 10, 1):]
    final[algorithm] = {"train_loss_last_10pct": round(sum(tail) / len(tail), 4),
                        "held_out_loss": round(held_loss, 4), "held_out_char_accuracy": round(held_acc, 4),
                        "seconds": round(time.perf_counter() - t0, 1)}
    curves[algorithm] = losses
    print(f"{algorithm:4s} held-out loss {held_loss:.4f}  answer characters right {held_acc:.3f}")

fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
for algorithm, losses in curves.items():
    w = max(STEPS // 50, 1)                                   # a running mean over w steps
    smooth = [sum(losses[max(0, i - w + 1):i + 1]) / len(losses[max(0, i - w + 1):i + 1])
              for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, label=f"{algorithm} (held-out {final[algorithm]['held_out_loss']:.2f})")
form_only = LENGTH / (LENGTH + 1) * math.log(len(LETTERS))   # letters uniform, "." known
ax.axhline(form_only, color="grey", lw=0.8, ls="--")
ax.text(0.4 * STEPS, form_only - 0.03, "knows the form only: 6/7 ln 8", color="grey", fontsize=8,
        ha="center", va="top")
ax.set_xlabel("training step (Adam, lr 3e-3, batch 64)")
ax.set_ylabel("cross-entropy on the answer (nats/char)")
ax.set_title("GPT-2 (2 layers, width 64) learning to reverse 6-letter strings")
ax.set_ylim(bottom=0)
ax.legend()
fig.savefig(out, dpi=120)
summary = out.with_suffix(".json")
summary.write_text(json.dumps({"steps": STEPS, "batch": BATCH, "final": final}, indent=2) + "\n")
print(f"wrote {out} and {summary}")
