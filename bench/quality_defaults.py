"""The toolkit-level stage of issue 15's sweep: `distill` itself (not the plain loop) on the protocols, varying the knobs
the plain-loop sweep (`bench/quality_sweep.py`) could not settle: weight decay, clipping, schedules of the KD weights and
temperature.

    .venv/bin/python bench/quality_defaults.py --protocol reference --seeds 0 1 2 --steps 300 1000 --variants wd0.01 wd0.1 wd0.3
    .venv/bin/python bench/quality_defaults.py --table          # bench/results/quality_defaults.jsonl as a markdown table

Every run: `quality.toolkit_run` (the protocol's windows, lr 3e-3, batch 16 x 128, fp32), with
`lr_scheduler_type='warmup_stable_decay', warmup_steps=0, max_grad_norm=0` and the variant's knobs on top.
Rows are appended to bench/results/quality_defaults.jsonl.
"""
from __future__ import annotations
import argparse, json, os, sys
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OUT = Path(__file__).parent/'results'/'quality_defaults.jsonl'
KD_LM = {'kd': 0.75, 'lm': 0.25}

def variants():
    from kd_toolkit.curriculum import Curriculum, Linear
    return {'wd0.01': (KD_LM, dict(weight_decay=0.01)), 'wd0.1': (KD_LM, dict(weight_decay=0.1)), 'wd0.3': (KD_LM, dict(weight_decay=0.3)),
            'clip1-wd0.01': (KD_LM, dict(weight_decay=0.01, max_grad_norm=1.0)),
            'T-ramp-1-2': (Curriculum(KD_LM, temperature=Linear(1.0, 2.0)), dict(weight_decay=0.01)),
            'lm-decay-to-0': (Curriculum({'kd': 0.75, 'lm': Linear(0.25, 0.0)}), dict(weight_decay=0.01)),
            'kd0.9-wd0.3': ({'kd': 0.9, 'lm': 0.1}, dict(weight_decay=0.3)), 'kd1-wd0.3': ({'kd': 1.0}, dict(weight_decay=0.3)),
            'LM-wd0.01': ({'lm': 1.0}, dict(weight_decay=0.01)), 'LM-wd0.3': ({'lm': 1.0}, dict(weight_decay=0.3)),
            # students initialised from the teacher (its width, 3 of its 5 layers: `protocols.student(seed, 'teacher:3')`)
            'init3-wd0.01': (KD_LM, dict(weight_decay=0.01, init='teacher:3')), 'init3-wd0.3': (KD_LM, dict(weight_decay=0.3, init='teacher:3')),
            'init3-LM-wd0.3': ({'lm': 1.0}, dict(weight_decay=0.3, init='teacher:3'))}

def run(protocol, seeds, steps, names):
    import protocols as P, quality as Q
    proto, table = P.PROTOCOLS[protocol](), variants()
    for name in names:
        cur, knobs = table[name]
        for seed in seeds:
            for n in steps:
                e = Q.toolkit_run(proto, n, seed, cur, **{**dict(lr_scheduler_type='warmup_stable_decay', warmup_steps=0, max_grad_norm=0.0), **knobs})
                row = dict(variant=name, protocol=protocol, seed=seed, steps=n, **e)
                with OUT.open('a') as f: f.write(json.dumps(row) + '\n')
                print(json.dumps(row), flush=True)

def table():
    import pandas as pd
    from flops import md_table
    d = pd.read_json(OUT, lines=True)
    t = d.pivot_table(index=['protocol', 'variant'], columns=['steps', 'seed'], values='ppl').round(2)
    t.columns = [f'ppl @{n} seed {s}' for n, s in t.columns]
    print(md_table(t.reset_index().fillna('').to_dict('records')))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--protocol', choices=['reference', 'rich'], default='reference')
    ap.add_argument('--seeds', type=int, nargs='*', default=[0])
    ap.add_argument('--steps', type=int, nargs='*', default=[300, 1000])
    ap.add_argument('--variants', nargs='*', default=['wd0.01', 'wd0.3'])
    ap.add_argument('--table', action='store_true')
    a = ap.parse_args()
    if a.table: table()
    else:
        bad = sorted(set(a.variants) - set(variants()))
        if bad: raise SystemExit(f"unknown variant(s) {bad}; known: {', '.join(variants())}")
        run(a.protocol, a.seeds, a.steps, a.variants)
