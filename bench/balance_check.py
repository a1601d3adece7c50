"""Is `balance='adaptive'` (curriculum.AdaptiveBalancer) worth a knob? Issue 15's reference protocol, KD + LM, with and without it.

    .venv/bin/python bench/balance_check.py                     # 300 steps, seeds 1 and 2 (about 4 min on 2 CPU cores)
    .venv/bin/python bench/balance_check.py --steps 1000 --seeds 1

Protocol (issue 15): the real stories260K teacher; the TinyStories excerpt tokenized whole with tok512, the first 80% of
tokens for training and the last 20% held out; a LlamaConfig(vocab 512, hidden 32, intermediate 86, 2 layers, 4 heads,
tied embeddings) student; 16 random 128-token windows per step (drawn once, seeded); AdamW lr 3e-3; fp32; held-out
perplexity on consecutive 128-token windows. Only `balance` differs between the two runs of a seed.
"""
from __future__ import annotations
import argparse, os, tempfile, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np, torch, datasets
from transformers import LlamaConfig, LlamaForCausalLM
from kd_toolkit.core import make_config
from kd_toolkit.evaluate import Evaluator
from kd_toolkit.assets import load_stories260k, load_tokenizer, read_text
from kd_toolkit.train import distill

L, B = 128, 16

def tokens() -> tuple[np.ndarray, np.ndarray]:
    "The excerpt's tokens: the first 80% for training, the rest held out."
    ids = np.array(load_tokenizer('tok512')(read_text('tinystories'))['input_ids'])
    cut = int(0.8 * len(ids))
    return ids[:cut], ids[cut:]

def run(train_ids, held_ids, steps, seed, balance) -> dict:
    "Held-out perplexity of one distilled student."
    g = np.random.default_rng(seed)
    starts = g.integers(0, len(train_ids) - L, size=steps * B)
    train = datasets.Dataset.from_dict({'input_ids': [train_ids[s:s + L].tolist() for s in starts]})
    torch.manual_seed(seed)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=86, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=L))
    cfg = make_config('cpu_demo', output_dir=tempfile.mkdtemp(prefix='balance_'), max_steps=steps, per_device_train_batch_size=B, max_length=L,
                      learning_rate=3e-3, eval_steps=0, logging_steps=max(steps // 10, 1), seed=seed, progress_bar=False, balance=balance,
                      curriculum={'lm': 1.0, 'kd': 1.0}, dataloader_num_workers=0, save_steps=steps)
    t0 = time.time()
    r = distill(cfg, load_stories260k(), student, train)
    held = [torch.tensor(held_ids[i:i + L])[None] for i in range(0, len(held_ids) - L + 1, L)]
    batches = [dict(input_ids=x, attention_mask=torch.ones_like(x), labels=x) for x in held]
    ppl = float(Evaluator(r.student).evaluate(batches)['student_ppl'])
    return dict(balance=balance, seed=seed, steps=steps, held_out_ppl=round(ppl, 2), seconds=round(time.time() - t0, 1))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--seeds', type=int, nargs='*', default=[1, 2])
    a = ap.parse_args()
    torch.set_num_threads(1)
    tr, held = tokens()
    rows = []
    for s in a.seeds:
        for b in ('none', 'adaptive'):
            rows.append(run(tr, held, a.steps, s, b)); print(rows[-1], flush=True)
    import sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flops import md_table
    print(md_table(rows))
