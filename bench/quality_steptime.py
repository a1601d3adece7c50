"""LM-only step time: the toolkit's trainer vs a plain PyTorch loop on the reference protocol (issue 15: within 1.1x).

    .venv/bin/python bench/quality_steptime.py                 # 5 rounds x 40 steps each, interleaved; prints the ratio

Same student (the reference 2 x 32 Llama), same 16 x 128 windows, AdamW lr 3e-3, fp32, one thread. The toolkit runs
`distill` with curriculum {'lm': 1} (its defaults otherwise: warmup-stable-decay schedule, clipping); the plain loop runs
`lm_loss` + AdamW + clipping. Step time = the median gap between consecutive step ends (so data loading, the teacher
forward the trainer may run and the trainer's bookkeeping all count), the first 5 steps dropped. Rounds alternate
which runs first; the ratio is the median over rounds of the per-round ratio, so machine load mostly cancels.
"""
from __future__ import annotations
import argparse, os, statistics, sys, tempfile, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocols as P
from flops import md_table

WARM = 5

def toolkit_times(steps:int, seed:int=0) -> list[float]:
    from transformers import TrainerCallback
    from kd_toolkit.train import distill
    import quality as Q
    ends = []
    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k): ends.append(time.perf_counter())
    cfg = Q.toolkit_config(tempfile.mkdtemp(prefix='q15_steptime_'), steps, seed, logging_steps=10)
    distill(cfg, P.teacher(), P.student(seed), Q._windows_dataset(P.reference(), steps, seed), None,
            student_tokenizer=P.tokenizer(), curriculum={'lm': 1.0}, callbacks=[Clock()])
    return [b - a for a, b in zip(ends[WARM:], ends[WARM + 1:])]

def plain_times(steps:int, seed:int=0) -> list[float]:
    from kd_toolkit.losses import lm_loss, next_token_targets
    proto, s = P.reference(), P.student(seed)
    opt = torch.optim.AdamW(s.parameters(), lr=3e-3, weight_decay=0.01)
    g, ends = torch.Generator().manual_seed(2 + seed), []
    for _ in range(steps):
        x = P.windows(proto, g)
        lm_loss(s(x).logits, next_token_targets(x)).backward()
        torch.nn.utils.clip_grad_norm_(s.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[WARM:], ends[WARM + 1:])]

def main(rounds:int, steps:int):
    P.reference(); P.teacher()
    rows, ratios = [], []
    for r in range(rounds):
        order = [('toolkit', toolkit_times), ('plain', plain_times)]
        if r % 2: order.reverse()
        med = {k: statistics.median(f(steps)) for k, f in order}
        ratios.append(med['toolkit'] / med['plain'])
        rows.append(dict(round=r, **{f'{k} ms/step': 1000 * v for k, v in med.items()}, ratio=ratios[-1]))
        print(md_table(rows[-1:]), flush=True)
    print(f"\n## LM-only step time, reference protocol (2 x 32 student, 16 x 128, fp32, 1 thread): toolkit / plain loop = "
          f"{statistics.median(ratios):.2f}x (median of {rounds} interleaved rounds, {steps} steps each)\n")
    print(md_table(rows))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--steps', type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(1)
    main(a.rounds, a.steps)
