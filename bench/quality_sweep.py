"""The sweep that chooses the toolkit's default recipe (issue 15): weights, temperature, divergence, LR schedule, warmup, clipping.

    .venv/bin/python bench/quality_sweep.py --protocol reference --stage weights     # run one stage (resumable: done rows are skipped)
    .venv/bin/python bench/quality_sweep.py --table                                  # print every recorded row as markdown tables

Every run is `protocols.train_loop`: a plain PyTorch loop with the toolkit's own `kd_loss` / `lm_loss` and the engine's
`transformers.get_scheduler`, on a protocol of `protocols.py` (reference: the 12k-token TinyStories excerpt; rich: 3M
tokens sampled from the teacher, scored on the real excerpt). Rows are appended to `bench/results/quality_sweep.jsonl`
(one JSON object per run: protocol, stage, knobs, steps, seed, held-out ppl and bits/byte, seconds, the curve).
A constant-LR run of 1,000 steps also gives its @300 score (the LR is the same at step 300 whatever the length);
every other schedule depends on the run length, so @300 and @1,000 are separate runs.
Stages run coordinate-wise from a base recipe (`--base`, e.g. `--base lm=0.1,kd=0.9,temperature=2`): each stage varies
one group of knobs around it.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocols as P
from flops import md_table

RESULTS = Path(__file__).parent/'results'/'quality_sweep.jsonl'
KNOBS = dict(lm=0.0, kd=0.0, temperature=1.0, divergence='fkl', schedule='constant', warmup=0.0, clip=0.0, init='', decay=0.2)
STEPS = (300, 1000)

def _parse_base(s:str) -> dict:
    out = {}
    for kv in filter(None, (s or '').split(',')):
        k, v = kv.split('=')
        if k not in KNOBS: raise SystemExit(f"--base: unknown knob {k!r}; knobs: {', '.join(KNOBS)}")
        out[k] = type(KNOBS[k])(v)
    return out

def _w(alpha:float) -> dict: return dict(lm=round(1 - alpha, 4), kd=alpha)

def stage_runs(stage:str, base:dict) -> list[dict]:
    "The recipes of one stage (knob dicts), varied around `base`."
    b = {**KNOBS, **base}
    if stage == 'baselines':   # the MEASUREMENTS.md rows and today's toolkit default (KD 1 + LM 1, cosine, 5% warmup, clip 1)
        return [{**KNOBS, 'lm': 1.0}, {**KNOBS, **_w(0.5)}, {**KNOBS, 'kd': 1.0}, {**KNOBS, **_w(0.9), 'temperature': 2.0},
                {**KNOBS, 'lm': 1.0, 'kd': 1.0, 'schedule': 'cosine', 'warmup': 0.05, 'clip': 1.0},
                {**KNOBS, 'lm': 1.0, 'schedule': 'cosine', 'warmup': 0.05, 'clip': 1.0}]
    if stage == 'weights':     # alpha (KD share) x temperature, constant LR
        return [{**b, **_w(a), 'temperature': t} for a in (0.5, 0.75, 0.9, 1.0) for t in (1.0, 2.0, 4.0)]
    if stage == 'divergence':
        return [{**b, 'divergence': d} for d in ('fkl', 'rkl', 'jsd', 'skl', 'srkl', 'tvd')]
    if stage == 'schedule':    # schedule x warmup share
        return [{**b, 'schedule': s, 'warmup': w} for s in ('constant', 'constant_with_warmup', 'linear', 'cosine', 'warmup_stable_decay')
                for w in ((0,) if s == 'constant' else (0.0, 0.05, 0.1) if s != 'constant_with_warmup' else (0.05, 0.1))]
    if stage == 'clip':
        return [{**b, 'clip': c} for c in (0.0, 0.5, 1.0, 2.0)]
    if stage == 'confirm':     # the candidates for the defaults, run with several seeds (base = the candidate recipe)
        return [b, {**b, 'clip': 1.0}, {**b, 'warmup': 0.05}, {**b, 'lm': 0.0, 'kd': 1.0}, {**b, **_w(0.75)},
                {**b, **_w(0.75), 'temperature': 2.0}, {**b, 'lm': 1.0, 'kd': 0.0}, {**KNOBS, 'lm': 1.0}]
    if stage == 'finalists':   # the default's candidates (KD share 0.75 / 0.9 / 1) and LM only, under the base schedule
        return [{**b, **_w(a)} for a in (1.0, 0.9, 0.75)] + [{**b, 'lm': 1.0, 'kd': 0.0}]
    if stage == 'decay':       # warmup_stable_decay: the share of the run spent decaying
        return [{**b, 'decay': d} for d in (0.1, 0.2, 0.35, 0.5)]
    if stage == 'lm':          # LM-only references under the same schedule as the base
        return [{**b, 'lm': 1.0, 'kd': 0.0}]
    if stage == 'init':        # compression: students of the teacher's width (64), k of its 5 layers, from the teacher or random; KD (base) vs LM only
        return [{**b, **w, 'init': i} for i in ('teacher:2', 'teacher:3', 'random:2') for w in (dict(lm=b['lm'], kd=b['kd']), dict(lm=1.0, kd=0.0))]
    if stage == 'base': return [b]
    raise SystemExit(f"unknown stage {stage!r}")

def _key(r:dict) -> tuple: return (r['protocol'], r['steps'], r['seed'], *(r['knobs'].get(k, v) for k, v in KNOBS.items()))

def load() -> list[dict]:
    return [json.loads(l) for l in RESULTS.read_text().splitlines() if l.strip()] if RESULTS.is_file() else []

def _commit() -> str:
    try: return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError: return ''

TCACHE = [False]   # --tcache: read the teacher's logits from a disk cache (the same numbers; seconds then exclude the teacher)

def run_one(protocol:str, knobs:dict, steps:int, seed:int, stage:str, eval_at=()) -> dict:
    proto = P.PROTOCOLS[protocol]()
    kw = dict(knobs)
    tc = P.TeacherLogits(proto, seed, max(STEPS)) if TCACHE[0] and kw['kd'] > 0 else None
    # warmup_stable_decay: the engine's cosine decay over the last `decay` share of the run (default 20%, as WSD papers use)
    sk = dict(num_decay_steps=int(kw.pop('decay', 0.2) * steps)) if kw['schedule'] == 'warmup_stable_decay' else None
    kw.pop('decay', None)
    r = P.train_loop(proto, steps, seed=seed, eval_at=eval_at, sched_kwargs=sk, tcache=tc, **kw)
    return dict(protocol=protocol, stage=stage, knobs=knobs, steps=steps, seed=seed, ppl=r['ppl'], bpb=r['bpb'],
                secs=round(r['secs'], 1), teacher='cache' if tc else 'live', curve={str(k): v for k, v in r['curve'].items()}, commit=_commit(),
                time=time.strftime('%Y-%m-%d %H:%M'), load=round(os.getloadavg()[0], 1))

def sweep(protocol:str, stage:str, base:dict, seeds=(0,), steps=STEPS, dry=False):
    done = {_key(r) for r in load()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for knobs in stage_runs(stage, base):
        for seed in seeds:
            # a constant LR gives every shorter length inside the longest run
            lens = [max(steps)] if knobs['schedule'] == 'constant' else list(steps)
            for n in lens:
                eval_at = tuple(s for s in (250, 300, 500, 750) if s < n) + ((0,) if knobs.get('init') else ())
                keys = [(protocol, m, seed, *(knobs[k] for k in KNOBS)) for m in (steps if knobs['schedule'] == 'constant' else [n])]
                if all(k in done for k in keys): continue
                print(f"[{time.strftime('%H:%M:%S')}] {protocol} {stage} seed={seed} steps={n} {knobs}", flush=True)
                if dry: continue
                r = run_one(protocol, knobs, n, seed, stage, eval_at)
                rows = [r]
                if knobs['schedule'] == 'constant':   # the shorter lengths, read off the curve
                    rows += [{**r, 'steps': m, 'ppl': r['curve'][str(m)][0], 'bpb': r['curve'][str(m)][1],
                              'secs': None, 'from_run': n} for m in steps if m != n]
                with RESULTS.open('a') as f:
                    for x in rows:
                        f.write(json.dumps(x) + '\n'); done.add(_key(x))
                print(f"    ppl {r['ppl']:.2f}  bpb {r['bpb']:.3f}  {r['secs']:.0f} s  " +
                      ' '.join(f"@{k}:{v[0]:.2f}" for k, v in r['curve'].items()), flush=True)

def recipe(k:dict) -> str:
    "A short name of a recipe."
    parts = ['LM only' if not k['kd'] else 'KD only' if not k['lm'] else f"{k['lm']:g} CE + {k['kd']:g} KD"]
    if k['kd']: parts += [f"T={k['temperature']:g}", k['divergence']]
    parts.append(k['schedule'] + (f" decay={k['decay']:g}" if k['schedule'] == 'warmup_stable_decay' and k.get('decay', 0.2) != 0.2 else '')
                 + (f" wu={k['warmup']:g}" if k['warmup'] else ''))
    if k['clip']: parts.append(f"clip={k['clip']:g}")
    if k.get('init'): parts.insert(0, f"[student {k['init']}]")
    return ', '.join(parts)

def table(rows=None, protocol=None):
    "Markdown tables: one row per recipe, columns @300 / @1000 (held-out ppl, bits/byte; mean over seeds with the count)."
    import pandas as pd
    rows = rows if rows is not None else load()
    if not rows: print('no rows yet'); return
    df = pd.DataFrame([{**KNOBS, **r['knobs'], 'protocol': r['protocol'], 'stage': r['stage'], 'steps': r['steps'], 'seed': r['seed'],
                        'ppl': r['ppl'], 'bpb': r['bpb'], 'secs': r['secs']} for r in rows])
    df['recipe'] = [recipe(r) for r in df[list(KNOBS)].to_dict('records')]
    for proto, d in df.groupby('protocol', sort=False):
        if protocol and proto != protocol: continue
        g = d.groupby(['recipe', 'steps']).agg(ppl=('ppl', 'mean'), bpb=('bpb', 'mean'), n=('seed', 'nunique'),
                                               secs=('secs', 'max'), stage=('stage', 'first')).reset_index()
        w = g.pivot(index='recipe', columns='steps', values=['ppl', 'bpb', 'n', 'secs'])
        out = pd.DataFrame({'stage': g.groupby('recipe')['stage'].first()})
        for s in sorted(d.steps.unique()):
            if ('ppl', s) in w:
                out[f'ppl @{s}'] = w[('ppl', s)].map(lambda v: f'{v:.2f}' if v == v else '')
                out[f'bpb @{s}'] = w[('bpb', s)].map(lambda v: f'{v:.3f}' if v == v else '')
        out['seeds'] = w['n'].max(axis=1).astype(int)
        out['s @1000'] = w[('secs', 1000)].round(0) if ('secs', 1000) in w else float('nan')
        out = out.iloc[w[('ppl', max(d.steps.unique()))].fillna(1e9).argsort().values]
        print(f"\n### {proto} protocol ({len(d)} rows; held-out ppl and bits/byte; mean over seeds)\n")
        print(md_table(out.reset_index().to_dict('records')))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--protocol', choices=list(P.PROTOCOLS), default='reference')
    ap.add_argument('--stage', nargs='*', default=[])
    ap.add_argument('--base', default='', help="knobs the stage varies around, e.g. lm=0.1,kd=0.9,temperature=2")
    ap.add_argument('--seeds', type=int, nargs='*', default=[0])
    ap.add_argument('--steps', type=int, nargs='*', default=list(STEPS))
    ap.add_argument('--dry', action='store_true', help='list the runs a stage would make')
    ap.add_argument('--tcache', action='store_true', help="teacher logits from a disk cache (~4.2 GB per protocol and seed; seconds exclude the teacher)")
    ap.add_argument('--table', action='store_true', help='print the recorded rows as tables')
    a = ap.parse_args()
    torch.set_num_threads(1)
    TCACHE[0] = a.tcache
    for st in a.stage: sweep(a.protocol, st, _parse_base(a.base), a.seeds, tuple(a.steps), a.dry)
    if a.table or not a.stage: table()
