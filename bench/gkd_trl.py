"""TRL 1.16's GKDTrainer beside the plain-loop GKD prototype of bench/onpolicy.py: same models, data, lmbda/beta.

Set-up: TRL lives in a SEPARATE venv (never in the project's .venv), with the project's torch and transformers:

    python3 -m venv /tmp/h24/trlvenv
    /tmp/h24/trlvenv/bin/pip install torch==2.13.0 transformers==5.25.0 trl==1.16.0   # transformers: as in .venv

Run (each in its own fresh process, one after the other, so the two do not share a core):

    nice -n 10 /tmp/h24/trlvenv/bin/python bench/gkd_trl.py trl  --lmbda 0.5 --beta 0.5 --seed 1 --out /tmp/h24/trl.jsonl
    nice -n 10 .venv/bin/python            bench/gkd_trl.py ours --lmbda 0.5 --beta 0.5 --seed 1 --out /tmp/h24/trl.jsonl
    nice -n 10 .venv/bin/python            bench/gkd_trl.py lib  --lmbda 0.5 --beta 0.5 --seed 1 --out /tmp/h24/trl.jsonl
    .venv/bin/python bench/gkd_trl.py table /tmp/h24/trl.jsonl

The trl side imports only `kd_toolkit.testing` (assets) and this folder's protocol code from the working tree, so it
needs no kd_toolkit install. Settings shared by both sides (those of GKD's paper/TRL: pure generalized JSD, no LM term):
the protocol's student and teacher, the teacher-sampled (prompt, completion) pairs of bench/onpolicy.py (BOS + 24-token
prompt, <= 104-token completion, EOS where the story ends), 8 pairs a step, 300 steps, AdamW, weight decay 0.3
(matrices), warmup_stable_decay (last 20%), clip 1.0, lr 1.5e-3 (`--lr`), `max_new_tokens` 104, sampling temperature 1 (top-k 0, top-p 1),
the student stops at EOS or BOS, fp32, one thread. TRL draws `random.random() <= lmbda` per step; the prototype
`random.Random(seed).random() < lmbda`.

Measured per run: tokens/s = non-pad tokens of the trained batches (prompt + completion, what the student's forward
sees) / wall seconds of the training loop; peak memory = the process high-water mark (VmHWM): absolute, and the
training loop's own (VmHWM after `/proc/self/clear_refs` at the loop's start, minus VmRSS then); then the quality
score of bench/onpolicy.py (`score`: teacher NLL of the student's samples, distinct-2, held-out bits/byte).

TRL's GKDConfig inherits SFTConfig's `gradient_checkpointing=True`, and GKDTrainer then builds its generation config
with `use_cache=False`: the student samples WITHOUT a KV cache (each new token re-runs the whole sequence; measured
here: forward inputs (8, 25), (8, 26), ... instead of (8, 25), (8, 1), ...). `--no-gradient-checkpointing` measures TRL
with the cache on as well.
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); sys.path.insert(1, os.path.dirname(HERE))   # bench/ and the working tree (kd_toolkit.testing)
warnings.filterwarnings('ignore')
import torch
import onpolicy as op
from loss_memory import _reset_peak, _status_bytes

class _Mem:
    "VmRSS at the loop's start (after resetting the high-water mark), then the peaks."
    def start(self): _reset_peak(); self.rss0 = _status_bytes('VmRSS:')
    def result(self): hwm = _status_bytes('VmHWM:'); return dict(vmhwm_mb=hwm / 2**20, loop_peak_mb=(hwm - self.rss0) / 2**20)

def _rows(tok):
    "The protocol's pairs as TRL examples: input_ids = BOS + prompt + completion (+ EOS), completion_mask."
    out = []
    for p, c, end in op.pairs():
        c = c + ([tok.eos_token_id] if end else [])
        out.append(dict(prompt=tok.decode(p), input_ids=[tok.bos_token_id] + p + c,   # `prompt`: the collator reads it
                        completion_mask=[0] * (1 + len(p)) + [1] * len(c)))
    return out

def run_trl(lmbda, beta, seed, steps, max_new_tokens, lr=1.5e-3, gradient_checkpointing=True):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    torch.set_num_threads(1)
    tok = op.tokenizer()
    tok.pad_token = tok.eos_token                                     # the collator needs one; id 2, as the prototype pads
    ds = Dataset.from_list(_rows(tok))
    model = op.make_student(tok, seed)
    model.generation_config.eos_token_id = op.stops(tok)             # stop at EOS or BOS, as the prototype does
    args = GKDConfig(output_dir=tempfile.mkdtemp(prefix='gkd_trl_'), max_steps=steps, per_device_train_batch_size=op.BATCH,
                     learning_rate=lr, lr_scheduler_type='warmup_stable_decay',
                     lr_scheduler_kwargs=dict(num_decay_steps=max(1, round(0.2 * steps))), warmup_steps=0,
                     weight_decay=0.3, max_grad_norm=1.0, lmbda=lmbda, beta=beta, temperature=1.0,
                     max_new_tokens=max_new_tokens, seq_kd=False, logging_steps=50, save_strategy='no', report_to='none',
                     seed=seed, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,
                     gradient_checkpointing=gradient_checkpointing)   # TRL's SFTConfig default: True
    counts = dict(tokens=0, on_policy=0, gen_secs=0.0)
    class Counting(GKDTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            counts['tokens'] += int(inputs['attention_mask'].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        @staticmethod
        def generate_on_policy_outputs(model, inputs, generation_config):
            t0 = time.perf_counter()
            out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            counts['gen_secs'] += time.perf_counter() - t0; counts['on_policy'] += 1
            return out
    trainer = Counting(model=model, teacher_model=op.teacher(), args=args, train_dataset=ds, processing_class=tok)
    mem = _Mem(); mem.start()
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = mem.result()
    import trl, transformers
    return dict(side='trl', gradient_checkpointing=gradient_checkpointing, versions=f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
                model=trainer.model, secs=secs, cpu_secs=cpu, tokens=counts['tokens'], on_policy_steps=counts['on_policy'],
                gen_secs=counts['gen_secs'], **m)

def run_ours(lmbda, beta, seed, steps, max_new_tokens, lr=1.5e-3):
    torch.set_num_threads(1)
    op.pairs(); op.teacher()                                          # loaded before the loop, as TRL's side does
    mem = _Mem()
    r = op.train(steps, seed, lmbda, beta, kd=1.0, lm=0.0, max_new_tokens=max_new_tokens, lr=lr, on_start=mem.start)
    import transformers
    return dict(side='ours', versions=f"transformers {transformers.__version__}, torch {torch.__version__}",
                model=r['model'], secs=r['secs'], cpu_secs=r['cpu_secs'], tokens=r['tokens'],
                on_policy_steps=r['on_policy_steps'], gen_secs=r['gen_secs'], **mem.result())

def run_lib(lmbda, beta, seed, steps, max_new_tokens, lr=1.5e-3):
    "The toolkit's own GKD (`distill` with lmbda/beta, divergence='jsd', curriculum {'kd': 1}: no LM term, as TRL's)."
    from transformers import TrainerCallback
    from kd_toolkit.train import KDTrainer
    torch.set_num_threads(1)
    op.pairs(); op.teacher(); op._lib_dataset()                       # loaded before the loop, as TRL's side does
    mem, counts, inner = _Mem(), dict(tokens=0), KDTrainer.compute_loss
    def counting(self, model, inputs, *a, **kw):
        counts['tokens'] += int(inputs['attention_mask'].sum()); return inner(self, model, inputs, *a, **kw)
    class Start(TrainerCallback):
        def on_train_begin(self, *a, **kw): mem.start()
    KDTrainer.compute_loss = counting
    try: r = op.run_lib(seed, steps, lr, kd=1.0, lm=0.0, lmbda=lmbda, divergence='jsd', beta=beta,
                        max_new_tokens=max_new_tokens, callbacks=[Start()])
    finally: KDTrainer.compute_loss = inner
    import transformers
    return dict(side='lib', versions=f"transformers {transformers.__version__}, torch {torch.__version__}",
                model=r['model'], secs=r['secs'], cpu_secs=r['cpu_secs'], tokens=counts['tokens'],
                on_policy_steps=round(r['policy_share'] * steps), gen_secs=r['gen_secs'], **mem.result())

def table(path):
    from flops import md_table
    rows = [json.loads(l) for l in open(path)]
    out = []
    for r in rows:
        same = lambda o, k: o.get(k, 5e-4 if k == 'lr' else None) == r.get(k, 5e-4 if k == 'lr' else None)
        mate = [o for o in rows if o['side'] == 'lib' and all(same(o, k) for k in ('lmbda', 'beta', 'seed', 'steps', 'lr'))]
        mate = mate or [o for o in rows if o['side'] == 'ours' and all(same(o, k) for k in ('lmbda', 'beta', 'seed', 'steps', 'lr'))]
        side = r['side'] + ('' if r['side'] in ('ours', 'lib') else ' (grad. ckpt: no KV cache)' if r.get('gradient_checkpointing', True)
                            else ' (grad. ckpt off)')
        row = {'side': side, 'lr': r.get('lr', 5e-4), 'lmbda': r['lmbda'], 'beta': r['beta'], 'seed': r['seed'], 'steps': r['steps'],
               'on-policy steps': r['on_policy_steps'], 'tokens/s': r['tokens'] / r['secs'], 'train s': r['secs'],
               'gen share': r['gen_secs'] / r['secs'], 'VmHWM MB': r['vmhwm_mb'], 'loop peak MB': r['loop_peak_mb'],
               'teacher NLL': f"{r['teacher_nll']:.3f}", 'distinct-2 (words)': f"{r['distinct2_words']:.3f}",
               'bpb': f"{r['bpb']:.4f}"}
        if r['side'] == 'trl' and mate:
            o = mate[-1]; row['vs'] = o['side']
            row['tokens/s vs'] = (r['tokens'] / r['secs']) / (o['tokens'] / o['secs'])
            row['VmHWM vs'] = r['vmhwm_mb'] / o['vmhwm_mb']
            row['loop peak vs'] = r['loop_peak_mb'] / max(o['loop_peak_mb'], 1e-9)
        out.append(row)
    print(md_table(out))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('side', choices=['trl', 'ours', 'lib', 'table'])
    ap.add_argument('path', nargs='?')
    ap.add_argument('--lmbda', type=float, default=0.5); ap.add_argument('--beta', type=float, default=0.5)
    ap.add_argument('--seed', type=int, default=1); ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--max-new-tokens', type=int, default=op.COMPLETION)
    ap.add_argument('--lr', type=float, default=1.5e-3, help="the protocol's (bench/onpolicy.py)")
    ap.add_argument('--no-gradient-checkpointing', action='store_true', help="trl: turn off SFTConfig's default "
                    "gradient_checkpointing=True (with it, GKDTrainer also generates WITHOUT the KV cache)")
    ap.add_argument('--out')
    a = ap.parse_args()
    if a.side == 'table': return table(a.path)
    if a.side == 'trl': r = run_trl(a.lmbda, a.beta, a.seed, a.steps, a.max_new_tokens, a.lr, not a.no_gradient_checkpointing)
    elif a.side == 'lib': r = run_lib(a.lmbda, a.beta, a.seed, a.steps, a.max_new_tokens, a.lr)
    else: r = run_ours(a.lmbda, a.beta, a.seed, a.steps, a.max_new_tokens, a.lr)
    model = r.pop('model')
    row = dict(lmbda=a.lmbda, beta=a.beta, seed=a.seed, steps=a.steps, lr=a.lr, **r, **op.score(model))
    print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, 'a') as f: f.write(json.dumps(row) + '\n')

if __name__ == '__main__': main()
