"""The Kaggle presets' shapes in fp16 on one GPU held to 16 GB: peak memory, tokens/s, skipped steps (issue 14).

    python bench/fp16_gpu_shapes.py                 # SmolLM2-360M -> SmolLM2-135M configs, random weights, B=8 x L=512, accum 4
    python bench/fp16_gpu_shapes.py --cap-gb 15     # a tighter cap (a T4 shows ~15 GB to PyTorch)
    python bench/fp16_gpu_shapes.py --smoke         # tiny shapes anywhere (CPU: fp32, no cap): checks the script

What a P100 or T4 runs with the fp16 preset (`fp16_16gb`; before issue 18 `kaggle_p100`): precision fp16 (autocast and
a GradScaler), an fp16 teacher, micro-batches of 8 x 512 tokens, 4 of them per optimizer step, the teacher's top-64
with a tail bucket. `torch.cuda.set_per_process_memory_fraction` holds the process to `--cap-gb` GB whatever the GPU
has, so an out-of-memory here is one on a 16 GB card. Weights are random (same seed for every method; no download: the
configs are the published shapes, in bench/flops.py), batches random tokens. For each KD path: the KDTrainer, `--warmup`
optimizer steps, then `--steps` timed ones; tokens/s = B*L*accum / median step time (CUDA-synchronised); peak GB =
torch.cuda.max_memory_allocated over the timed steps; skipped = optimizer steps the scaler skipped (inf/NaN gradients),
and the loss scale at the end (it starts at 2^16 and halves at each skip).
"""
from __future__ import annotations
import argparse, gc, json, os, statistics, sys, tempfile, time
import torch
from transformers import TrainerCallback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import CONFIGS, md_table
from gpu_bench import DEV, _Mem, _models, _sync
from kd_toolkit.core import make_config

METHODS = {   # KD knobs on top of the preset (which has kd_topk=64, chunk_size=1024)
    'preset (top-64, chunk 1024)': {},
    "top-64, chunk 'auto'": dict(chunk_size='auto'),
    "chunked full KD, 'auto'": dict(kd_topk=0, kd_path='chunked', chunk_size='auto'),
    'fused': dict(kd_topk=0, kd_path='fused', chunk_size='auto'),
}

def run(name, kd, teacher, student, B, L, accum, steps, warmup, smoke):
    "One KDTrainer run at the preset; a result row."
    from datasets import Dataset
    from kd_toolkit.train import KDTrainer
    mem, times, marks = _Mem(), [], {}
    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup: mem.start()
            _sync(); marks['t0'] = time.perf_counter()
        def on_step_end(self, *a, **kw): _sync(); times.append(time.perf_counter() - marks['t0'])
    n = (warmup + steps) * B * accum
    g = torch.Generator().manual_seed(0)
    ds = Dataset.from_dict({'input_ids': torch.randint(0, student.config.vocab_size, (n, L), generator=g).tolist()})
    knobs = dict(output_dir=tempfile.mkdtemp(prefix='kd_fp16_shapes_'), max_steps=warmup + steps, per_device_train_batch_size=B,
                 gradient_accumulation_steps=accum, max_length=L, logging_steps=1, eval_steps=0, save_steps=10**9,
                 progress_bar=False, dataloader_num_workers=0, time_budget_hours=None, early_stopping_patience=0, **kd)
    if smoke and DEV == 'cpu': knobs['precision'] = 'fp32'      # the trainer refuses fp16 on a CPU
    cfg = make_config('fp16_16gb', **knobs)
    row = {'method': name}
    try:
        tr = KDTrainer(cfg, teacher, student, ds, None, None, {'kd': 1.0, 'lm': 1.0}, callbacks=[Timer()])
        tr.args.save_strategy = 'no'
        tr.train()
        h = tr.history
        row.update({'kd_path': tr.kd_path_label, 'tokens/s': B * L * accum / statistics.median(times[warmup:] or times),
                    'skipped': int(tr.kd_state['skipped_steps']), 'final loss scale': float(h['loss_scale'].dropna().iloc[-1]),
                    'last loss': float(h['loss'].dropna().iloc[-1])})
    except torch.OutOfMemoryError as e:
        row['error'] = f"out of memory under the cap: {str(e)[:70]}"
    finally:
        peak, _ = mem.read()
        row['peak GB'] = peak
    return row

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--teacher', default='SmolLM2-360M'); ap.add_argument('--student', default='SmolLM2-135M')
    ap.add_argument('--batch', type=int, default=8); ap.add_argument('--seq-len', type=int, default=512)
    ap.add_argument('--accum', type=int, default=4); ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--cap-gb', type=float, default=16.0, help='hold the process to this many GB (1e9 bytes)')
    ap.add_argument('--methods', nargs='*', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--json', help='append one JSON line per method to this file')
    ap.add_argument('--smoke', action='store_true', help='tiny shapes (2 x 64 -> 1 x 32, V=512), B=2, L=64, accum 2, 2 steps')
    a = ap.parse_args(argv)
    if a.smoke:
        from transformers import LlamaConfig
        tiny = lambda n, d: LlamaConfig(vocab_size=512, hidden_size=d, intermediate_size=2*d, num_hidden_layers=n,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        CONFIGS.update({'tiny-teacher': tiny(2, 64), 'tiny-student': tiny(1, 32)})
        a.teacher, a.student, a.batch, a.seq_len, a.accum, a.steps, a.warmup = 'tiny-teacher', 'tiny-student', 2, 64, 2, 2, 1
    if DEV == 'cuda':
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gb * 1e9 / total))
        where = f"{torch.cuda.get_device_name()} held to {a.cap_gb:g} GB of {total/1e9:.0f} GB"
    else: where = 'CPU (smoke: fp32, no cap, no memory figures)'
    rows = []
    for name in a.methods:
        t, s = _models(a.teacher, a.student)
        r = run(name, METHODS[name], t, s, a.batch, a.seq_len, a.accum, a.steps, a.warmup, a.smoke)
        del t, s; gc.collect()
        if DEV == 'cuda': torch.cuda.empty_cache()
        rows.append(r)
        if a.json:
            with open(a.json, 'a') as f: f.write(json.dumps({'part': 'presets', **r}) + '\n')
    print(f"## {a.teacher} -> {a.student}, B={a.batch} x L={a.seq_len}, accum {a.accum}, fp16 preset, {a.warmup} warm-up + "
          f"{a.steps} timed optimizer steps\n\n{where}, torch {torch.__version__}\n\n" + md_table(rows))
    return 1 if any('error' in r for r in rows) and not a.smoke else 0

if __name__ == '__main__': sys.exit(main())
