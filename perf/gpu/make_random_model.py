"""Write a random-weight model with Qwen2.5-Math-1.5B's architecture (hidden 1536, 28 layers,
GQA 12/2 heads) and SmolLM2's tokenizer (vocab 49,152) as a HF directory, for throughput runs
on machines without hub access: both engines load the same directory, and random weights rarely
emit the stop token, so every sample runs to max_new_tokens (a fixed, comparable workload).

    python perf/gpu/make_random_model.py --tokenizer DIR --out /tmp/rand-qwen1.5b
"""

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from prefix_rft.models import load_tokenizer, qwen2_5_math_1_5b_config

p = argparse.ArgumentParser()
p.add_argument("--tokenizer", required=True)
p.add_argument("--out", required=True)
a = p.parse_args()
tok = load_tokenizer(a.tokenizer)
cfg = qwen2_5_math_1_5b_config()
cfg.vocab_size = len(tok)
cfg.bos_token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
cfg.eos_token_id = tok.eos_token_id
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
out = Path(a.out)
model.save_pretrained(out)
tok.save_pretrained(out)
for f in Path(a.tokenizer).glob("*.jinja"):
    shutil.copy(f, out / f.name)
print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
