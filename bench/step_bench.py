"""One full distillation step on tiny models: kd_toolkit's trainer vs a hand-written loop vs TRL's GKDTrainer.

    .venv/bin/python bench/step_bench.py                  # V = 8,192 and 49,152; speed + memory tables
    .venv/bin/python bench/step_bench.py --rounds 5 --steps 3     # steadier medians (slower)
    .venv/bin/python bench/step_bench.py --workload lm --vocab 8192 --rounds 9 --steps 3   # issue 15: an LM-only run vs a plain loop
    python bench/step_bench.py --device cuda              # the same on a GPU (fp32, TF32 off; memory from the CUDA allocator)

Teacher: Llama 4 layers x 256; student: 2 x 128 (kd_toolkit.assets.tiny_llama); B=4, L=128, fp32 on CPU.
Every method does the same work on the same batches from the same weights: teacher forward (no grad), student
forward, forward KL (T=1, mean over valid next-token positions) [+ next-token CE], backward, grad clip at 1.0,
AdamW step. The first losses are checked equal before anything is timed. Workloads: `kd+lm` (KD + CE), `kd` (KD
only), `lm` (next-token CE only: the plain loop runs no teacher, and neither should the trainer).

Speed: all methods in one process, R rounds, each round runs every method for `--steps` steps (order reversed
every other round); per round the median step time; ratio = median over rounds of the per-round ratio.
Memory: each method in a fresh process; peak extra = process high-water mark (VmHWM, reset through
/proc/self/clear_refs just before the steps) minus the resident set before the first step (models, optimizer object and batches already built), in MB and in units of one fp32
(B*L, V) buffer; on CUDA the allocator's peak (torch.cuda.max_memory_allocated) minus what was allocated before the steps.
"""
from __future__ import annotations
import argparse, contextlib, io, json, os, statistics, subprocess, sys, tempfile, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
import torch, torch.nn.functional as F
from kd_toolkit.assets import tiny_llama
from kd_toolkit.testing import rand_batch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import md_table

TRL_PIN = '1.16.0'
B, L, LR, CLIP = 4, 128, 1e-3, 1.0
DEV = 'cpu'  # --device

def _sync():
    if DEV != 'cpu': torch.cuda.synchronize()

def make_models(V:int):
    "Teacher (4 x 256) and student (2 x 128), sdpa attention, fp32."
    t = tiny_llama(V, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, seed=1, attn='sdpa')
    s = tiny_llama(V, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, seed=2, attn='sdpa').train()
    for p in t.parameters(): p.requires_grad_(False)
    return t.to(DEV), s.to(DEV)

def make_batches(V:int, n:int):
    "n batches with some right padding (so masks matter)."
    return [{k: v.to(DEV) for k, v in rand_batch(V, B, L, pad_frac=0.1, seed=i).items()} for i in range(n)]

# ------------------------------------------------------------------ the hand-written loop (~30 lines)
class Hand:
    name = 'hand loop'
    def __init__(self, t, s, workload):
        self.t, self.s, self.workload = t, s, workload
        self.opt = torch.optim.AdamW(s.parameters(), lr=LR, weight_decay=0.0)
    def loss(self, b):
        sl = self.s(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits
        tgt = b['labels'][:, 1:]; mask = tgt != -100                              # next-token positions
        s_lp = F.log_softmax(sl[:, :-1].float(), -1)
        ce = F.nll_loss(s_lp.flatten(0, 1), tgt.flatten(), ignore_index=-100)
        if self.workload == 'lm': return ce                                       # a plain LM loop: no teacher at all
        with torch.no_grad(): tl = self.t(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits
        t_lp = F.log_softmax(tl[:, :-1].float(), -1)
        kd = (t_lp.exp()*(t_lp - s_lp)).sum(-1)[mask].mean()                      # forward KL, mean over tokens
        return kd + ce if self.workload == 'kd+lm' else kd
    def step(self, b):
        loss = self.loss(b)
        self.opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(self.s.parameters(), CLIP); self.opt.step()
        return loss.item()

# ------------------------------------------------------------------ TRL GKDTrainer (lmbda=0: off-policy, beta=0: forward KL)
def _trl_import():
    "TRL's GKD trainer, or the reason it cannot run here."
    try:
        import trl
        from trl.experimental.gkd import GKDTrainer, GKDConfig
    except Exception as e:
        return None, f"TRL GKDTrainer unavailable ({type(e).__name__}: {e}); install: .venv/bin/pip install --no-deps trl=={TRL_PIN}"
    if trl.__version__ != TRL_PIN: warnings.warn(f"TRL {trl.__version__} installed; benchmarks were taken with {TRL_PIN}")
    return (GKDTrainer, GKDConfig), None

def _tiny_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({'<pad>': 0, '<unk>': 1}, unk_token='<unk>')),
                                   pad_token='<pad>', unk_token='<unk>')

class TRL:
    name = f'TRL {TRL_PIN} GKDTrainer'
    def __init__(self, t, s, workload):
        if workload != 'kd': raise ValueError("TRL's GKD loss has no CE term: compare it on the KD-only workload")
        from transformers import TrainerCallback
        from datasets import Dataset
        (GKDTrainer, GKDConfig), why = _trl_import()
        self.times, self.losses, self.s = [], [], s
        bench = self
        class _Timer(TrainerCallback):
            def on_step_begin(self, *a, **k): _sync(); bench._t0 = time.perf_counter()
            def on_step_end(self, *a, **k): _sync(); bench.times.append(time.perf_counter() - bench._t0)
        self._ds = lambda batches: Dataset.from_dict({k: [r for b in batches for r in b[k].tolist()]
                                                      for k in ('input_ids', 'attention_mask', 'labels')})
        collate = lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in ('input_ids', 'attention_mask', 'labels')}
        self.args = GKDConfig(output_dir=tempfile.mkdtemp(prefix='gkd_bench_'), lmbda=0.0, beta=0.0, temperature=1.0,
                              per_device_train_batch_size=B, learning_rate=LR, lr_scheduler_type='constant',
                              weight_decay=0.0, max_grad_norm=CLIP, max_steps=1, logging_steps=10**6,
                              save_strategy='no', report_to=[], use_cpu=DEV == 'cpu', dataloader_num_workers=0,
                              disable_tqdm=True, max_length=None, bf16=False, fp16=False, seed=0,
                              optim='adamw_torch', adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            self.tr = GKDTrainer(model=s, teacher_model=t, args=self.args, data_collator=collate,
                                 train_dataset=self._ds(make_batches(s.config.vocab_size, 1)),
                                 processing_class=_tiny_tokenizer(), callbacks=[_Timer()])
    def loss(self, b):
        return self.tr.compute_loss(self.tr.model, {k: v.clone() for k, v in b.items()})
    def run(self, batches):
        "Train on `batches` (one step each) with the trainer's own loop; returns the per-step times."
        self.times.clear()
        self.tr.train_dataset = self._ds(batches); self.tr.args.max_steps = len(batches)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with contextlib.redirect_stdout(io.StringIO()): self.tr.train()
        return list(self.times)

# ------------------------------------------------------------------ ours: kd_toolkit's trainer
def _ours_import():
    try:
        import kd_toolkit.train as kt
        return kt, None
    except Exception as e:
        return None, f"kd_toolkit.train not importable ({type(e).__name__}: {e})"

class Ours:
    name, extra = 'kd_toolkit KDTrainer', dict(kd_path='full')   # the `full` path (the 'auto' default before 2026-11-28)
    def __init__(self, t, s, workload):
        kt, why = _ours_import()
        if kt is None: raise RuntimeError(why)
        from kd_toolkit.core import KDConfig
        from datasets import Dataset
        self.times, bench = [], self
        class _Timer(kt.TrainerCallback):
            def on_step_begin(self, *a, **k): _sync(); bench._t0 = time.perf_counter()
            def on_step_end(self, *a, **k): _sync(); bench.times.append(time.perf_counter() - bench._t0)
        self._ds = lambda batches: Dataset.from_dict({k: [r for b in batches for r in b[k].tolist()]
                                                      for k in ('input_ids', 'attention_mask', 'labels')})
        collate = lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in ('input_ids', 'attention_mask', 'labels')}
        cfg = KDConfig(output_dir=tempfile.mkdtemp(prefix='kd_bench_'), max_steps=1, per_device_train_batch_size=B, learning_rate=LR,
                       weight_decay=0.0, lr_scheduler_type='constant', max_grad_norm=CLIP, precision='fp32', divergence='fkl',
                       temperature=1.0, logging_steps=10**6, eval_steps=0, save_steps=10**9, progress_bar=False, optim='adamw_torch',
                       teacher_dtype='keep', **self.extra)   # 'keep': the fp32 teacher stays fp32 on a GPU too (same work)
        cur = {'kd+lm': {'kd': 1.0, 'lm': 1.0}, 'kd': {'kd': 1.0}, 'lm': {'lm': 1.0}}[workload]
        self.tr = kt.KDTrainer(cfg, t, s, self._ds(make_batches(s.config.vocab_size, 1)), None, collate, cur,
                               callbacks=[_Timer()])
        self.tr.args.save_strategy = 'no'
    def loss(self, b):
        return self.tr.compute_loss(self.tr.model, {k: v.clone() for k, v in b.items()})
    def run(self, batches):
        "Train on `batches` (one step each) with the trainer's own loop; returns the per-step times."
        self.times.clear()
        self.tr.train_dataset = self._ds(batches); self.tr.args.max_steps = len(batches)
        with contextlib.redirect_stdout(io.StringIO()): self.tr.train()
        return list(self.times)

class OursFused(Ours):
    name, extra = "kd_toolkit KDTrainer (kd_path='fused')", dict(kd_path='fused', chunk_size=256)

METHODS = {'ours': Ours, 'ours-fused': OursFused, 'hand': Hand, 'trl': TRL}

def _available(key):
    if key == 'trl': return _trl_import()[1]
    if key.startswith('ours'): return _ours_import()[1]
    return None

def _times(m, batches):
    "Per-step seconds of `m` on `batches` (one step each)."
    if hasattr(m, 'run'): return m.run(batches)
    out = []
    for b in batches:
        _sync(); t0 = time.perf_counter(); m.step(b); _sync(); out.append(time.perf_counter() - t0)
    return out

def speed(V, keys, workload, rounds, steps):
    "Per-round median step times of each method (same process, alternating order) and the first losses."
    batches = make_batches(V, steps)
    ms, first = {}, {}
    for k in keys:
        t, s = make_models(V)
        ms[k] = METHODS[k](t, s, workload)
        with torch.no_grad(): first[k] = float(ms[k].loss(batches[0]))
    ref = first['hand']
    for k, v in first.items():
        assert abs(v - ref) <= 1e-4*max(1, abs(ref)), f"first loss of {k} = {v} differs from the hand loop's {ref}: not the same work"
    for k in keys: _times(ms[k], batches[:2])  # warm-up (allocator, optimizer state)
    per = {k: [] for k in keys}
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]): per[k].append(statistics.median(_times(ms[k], batches)))
    return per, first

def _where():
    if DEV == 'cpu': return f"CPU, {torch.get_num_threads()} thread(s)"
    return f"{torch.cuda.get_device_name()} (TF32 off), torch {torch.__version__}"

def _rss_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1])

def peak_child(method, V, workload, steps):
    "In this (fresh) process: extra peak RSS in MB of `steps` steps of `method`."
    t, s = make_models(V); batches = make_batches(V, steps)
    m = METHODS[method](t, s, workload)
    import gc; gc.collect()
    if DEV != 'cpu':
        _sync(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        _times(m, batches); _sync()
        return (torch.cuda.max_memory_allocated() - base)/2**20
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')  # reset the high-water mark (VmHWM) to the current RSS
    base = _rss_kb('VmRSS:')
    _times(m, batches)
    return (_rss_kb('VmHWM:') - base)/1024

def peak(method, V, workload, steps=3):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), '--peak-child', method, '--vocab', str(V), '--device', DEV,
                        '--workload', workload, '--steps', str(steps)], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f"memory child for {method} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])['peak_mb']

WORKLOADS = {'kd+lm': 'KD + CE', 'kd': 'KD only', 'lm': 'LM only'}

def main(vocabs, rounds, steps, workloads=tuple(WORKLOADS), memory=True):
    avail = {k: _available(k) for k in METHODS}
    for k, why in avail.items():
        if why: print(f"skipped {METHODS[k].name}: {why}")
    rows, ratio_rows = [], []
    for wl in workloads:
        workload = WORKLOADS[wl]
        keys = [k for k in ('ours', 'ours-fused', 'hand', 'trl') if not avail[k] and not (k == 'trl' and wl != 'kd') and not (k == 'ours-fused' and wl == 'lm')]
        for V in vocabs:
            try:
                per, first = speed(V, keys, wl, rounds, steps)
                mem = {k: peak(k, V, wl) if memory else float('nan') for k in keys}
            except Exception as e:
                print(f"FAILED {workload} V={V}: {type(e).__name__}: {str(e)[-1500:]}", flush=True); continue
            unit = B*L*V*4/2**20  # one fp32 (B*L, V) buffer, MB
            for k in keys:
                med = statistics.median(per[k])
                rows.append({'workload': workload, 'V': V, 'method': METHODS[k].name, 'first loss': first[k],
                             'step s (median)': med, 'tokens/s': B*L/med, 'peak extra MB': mem[k],
                             'peak / fp32 (N,V)': mem[k]/unit})
            for a, b in [('ours', 'hand'), ('ours-fused', 'hand'), ('ours', 'trl'), ('ours-fused', 'trl'), ('hand', 'trl')]:
                if a in keys and b in keys:
                    sp = statistics.median(tb/ta for ta, tb in zip(per[a], per[b]))
                    ratio_rows.append({'workload': workload, 'V': V, 'pair': f"{METHODS[a].name} / {METHODS[b].name}",
                                       'tokens/s ratio (median of rounds)': sp,
                                       'min..max over rounds': f"{min(tb/ta for ta, tb in zip(per[a], per[b])):.2f}..{max(tb/ta for ta, tb in zip(per[a], per[b])):.2f}",
                                       'peak memory ratio': mem[a]/mem[b] if mem[b] else float('nan')})
            print(f"(partial) {workload} V={V}:", md_table([r for r in rows if r['V'] == V and r['workload'] == workload]), sep='\n', flush=True)
    print(f"\n## One distillation step, teacher 4x256 -> student 2x128, B={B}, L={L}, fp32 "
          f"{_where()}, {rounds} rounds x {steps} steps\n")
    print(md_table(rows)); print(); print(md_table(ratio_rows))
    return rows, ratio_rows

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--vocab', type=int, nargs='*', default=[8192, 49152])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--workload', nargs='*', default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument('--no-memory', action='store_true', help='speed only (no memory child processes)')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--peak-child', choices=list(METHODS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    DEV = a.device
    if DEV == 'cuda' and not torch.cuda.is_available(): sys.exit("--device cuda: no CUDA device on this machine")
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    if a.peak_child: print(json.dumps({'peak_mb': peak_child(a.peak_child, a.vocab[0], a.workload[0], a.steps)}))
    else: main(a.vocab, a.rounds, a.steps, a.workload, not a.no_memory)
