"""fp16 vs fp32: the same seeded distillation run, held-out perplexity side by side (issue 14's training-level check).

    .venv/bin/python bench/fp16_train_check.py                     # CPU: fp32 vs emulated fp16 ('cast') vs CPU autocast, 300 steps
    .venv/bin/python bench/fp16_train_check.py --paths chunked topk fused --steps 300
    .venv/bin/python bench/fp16_train_check.py --device cuda --modes fp32 autocast   # a GPU: real autocast + GradScaler
    .venv/bin/python bench/fp16_train_check.py --synthetic         # no assets: a random teacher and text sampled from it
    .venv/bin/python bench/fp16_train_check.py --smoke             # 3 steps on the synthetic pair: checks the script

Protocol (../shared/MEASUREMENTS.md, "reference quality protocol"): the real stories260K teacher; the TinyStories
excerpt tokenized whole with its tokenizer, the first 80% of tokens for training, the last 20% held out; student
Llama 2 x 32 (vocab 512, intermediate 86, 4 heads, tied embeddings) built after `torch.manual_seed(1)`; every step 16
random windows of 128 tokens (`torch.Generator().manual_seed(2)`), loss 0.5·CE + 0.5·KL(teacher || student) at T=1
through the toolkit's losses, AdamW lr 3e-3, weight decay 0.01, no clipping; held-out perplexity over consecutive
128-token windows. Every mode sees the same windows and starts from the same weights.

Modes: `fp32` everything fp32; `fp32-plain` fp32 through plain autograd (chunk_size=None) instead of the chunked
path (a check of the chunked path: on the CPU the two runs come out identical); `fp32-round` the logits (student's and
teacher's) rounded to fp16 *values* with an fp32 gradient through them and no scaler: what `cast` computes, minus the
fp16 gradient path, so `cast` vs `fp32-round` isolates what the losses' fp16 gradients change;
`cast` the student runs in fp32 but its logits are rounded to fp16 before the loss (what
autocast's lm_head hands the loss on a GPU) and the teacher's logits are fp16 too, with a real `torch.amp.GradScaler`
(initial scale 2^16: overflow skips the step and halves the scale, unscale, inf check, step); `autocast` the student's
forward under `torch.autocast(device, float16)` (fp16 matmuls, fp32 master weights) with the same GradScaler. Paths:
`chunked` kd_loss + lm_loss with chunk_size='auto'; `topk` kd_loss_topk against the teacher's top-32 (+ tail), the
presets' path; `fused` fused_kd_lm_loss on the last hidden state and lm_head. `--seeds 1 2 3` repeats everything with
other student inits and data orders and compares the means (one 300-step run moves by a few % with any last-bit change). `--losses FILE` runs another copy of
kd_toolkit.losses (e.g. the one before the fix: `git show fb6f790:kd_toolkit/losses.py > FILE`).
"""
from __future__ import annotations
import argparse, copy, importlib.util, json, math, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch

def load_losses(path=None):
    if not path:
        from kd_toolkit import losses
        return losses
    import kd_toolkit   # the file imports `.core`: load it inside the package
    spec = importlib.util.spec_from_file_location('kd_toolkit._losses_other', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

@torch.no_grad()
def synthetic(n_tokens=8192, seed=3):
    "A random Llama teacher (vocab 512, 3 x 64, sharpened head) and a corpus sampled from it: a language it models well."
    from kd_toolkit.assets import tiny_llama
    teacher = tiny_llama(512, 64, num_layers=3, seed=seed)
    teacher.lm_head.weight.mul_(4)
    g, x = torch.Generator().manual_seed(seed), torch.randint(0, 512, (n_tokens // 128, 1), generator=torch.Generator().manual_seed(seed))
    for _ in range(127):
        p = teacher(x).logits[:, -1].float().softmax(-1)
        x = torch.cat([x, torch.multinomial(p, 1, generator=g)], 1)
    return x.flatten(), teacher

def data(smoke=False, synthetic_data=False):
    "Train and held-out token streams and the teacher: the real stories260K and TinyStories, else a synthetic pair."
    from kd_toolkit.assets import has_asset, load_stories260k, load_tokenizer, read_text, STORIES260K
    if smoke or synthetic_data or not has_asset(STORIES260K):
        if not (smoke or synthetic_data):
            raise SystemExit("the real stories260K teacher is not in ../shared/data: pass --synthetic (a random teacher "
                             "and text sampled from it), or set KD_TOOLKIT_DATA to the assets' folder")
        ids, teacher = synthetic(2048 if smoke else 8192)
        src = 'synthetic: a random 3 x 64 Llama and 8,192 tokens sampled from it'
    else:
        ids = load_tokenizer('tok512')(read_text('tinystories'), return_tensors='pt').input_ids[0]
        teacher, src = load_stories260k(), 'stories260K on the TinyStories excerpt'
    n = int(0.8 * len(ids))
    return ids[:n], ids[n:], teacher.eval(), src

def make_student(device, seed=1):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=86, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).to(device).train()

@torch.no_grad()
def heldout_ppl(model, ids, L=128, device='cpu'):
    "exp(mean NLL) over consecutive L-token windows (L-1 predictions each), in fp32."
    model.eval()
    nll, n = 0., 0
    for i in range(0, len(ids) - L + 1, L):
        x = ids[i:i+L][None].to(device)
        logits = model(x).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction='sum').item(); n += L - 1
    model.train()
    return math.exp(nll / n)

def step_loss(L, student, teacher_out, x, mode, path, device):
    "0.5·CE + 0.5·KL through the toolkit's losses; `mode` decides what the losses see (fp32 or fp16)."
    half = not mode.startswith('fp32')
    tl = teacher_out.logits.half() if half else teacher_out.logits.float()      # an fp16 teacher on a GPU
    if mode == 'fp32-round': tl = tl.half().float()
    tgt = L.next_token_targets(x)
    amp = torch.autocast(device, dtype=torch.float16, enabled=mode == 'autocast')
    with amp:
        if path == 'fused':
            h = student.model(x).last_hidden_state
            h = h.half() if mode == 'cast' else h + (h.half().float() - h).detach() if mode == 'fp32-round' else h
            out = L.fused_kd_lm_loss(h.reshape(-1, h.shape[-1]), student.lm_head.weight, tl.reshape(-1, tl.shape[-1]),
                                     tgt.reshape(-1), chunk_size='auto' if 'auto_chunk' in dir(L) else 256)
            return 0.5 * out['lm'] + 0.5 * out['kd']
        z = student(x).logits
    z = z.half() if half else z.float()                                       # autocast's lm_head output is fp16 already
    if mode == 'fp32-round': z = z + (z.half().float() - z).detach()           # fp16 values, fp32 gradient, no scaler
    chunk = None if mode == 'fp32-plain' else 'auto' if 'auto_chunk' in dir(L) else 256
    if path == 'topk':
        V = z.shape[-1]
        kd = L.kd_loss_topk(z.reshape(-1, V), L.topk_teacher(tl.reshape(-1, V), 32), chunk_size=chunk)
    else: kd = L.kd_loss(z, tl, chunk_size=chunk)
    return 0.5 * L.lm_loss(z, tgt, chunk_size=chunk) + 0.5 * kd

def train(L, mode, path, train_ids, teacher, steps, device, B=16, T=128, lr=3e-3, seed=1):
    "One run; returns the student, the scaler's final scale and the number of skipped steps."
    fp32 = mode.startswith('fp32')
    student = make_student(device, seed)
    teacher = teacher.to(device, torch.float16 if not fp32 and device == 'cuda' else torch.float32)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device, init_scale=2.**16, enabled=not fp32)
    gen = torch.Generator().manual_seed(seed + 1)
    skipped = 0
    for _ in range(steps):
        starts = torch.randint(0, len(train_ids) - T - 1, (B,), generator=gen)
        x = torch.stack([train_ids[s:s+T] for s in starts]).to(device)
        with torch.no_grad(): t_out = teacher(x)
        loss = step_loss(L, student, t_out, x, mode, path, device)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.
        scaler.step(opt); scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale: skipped += 1
    return student, (scaler.get_scale() if scaler.is_enabled() else 1.), skipped

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--paths', nargs='+', default=['chunked', 'topk'], choices=['chunked', 'topk', 'fused'])
    ap.add_argument('--modes', nargs='+', default=['fp32', 'cast', 'autocast'], choices=['fp32', 'fp32-plain', 'fp32-round', 'cast', 'autocast'])
    ap.add_argument('--seeds', type=int, nargs='+', default=[1], help='student-init seeds (data order: seed + 1); means compared')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--losses', help='another copy of kd_toolkit/losses.py to run (e.g. the one before the fix)')
    ap.add_argument('--tol', type=float, default=0.02, help='allowed relative perplexity difference to fp32 (exit 1 above)')
    ap.add_argument('--synthetic', action='store_true', help='a random teacher and text sampled from it (no assets needed)')
    ap.add_argument('--json', help='append one JSON line per run to this file')
    ap.add_argument('--smoke', action='store_true', help='the synthetic pair, small, and 3 steps: checks the script runs')
    a = ap.parse_args(argv)
    if a.smoke: a.steps = min(a.steps, 3)
    L = load_losses(a.losses)
    train_ids, held, teacher, src = data(a.smoke, a.synthetic)
    print(f"fp16 vs fp32 distillation, {a.steps} steps, device={a.device}, torch {torch.__version__}, losses="
          f"{a.losses or 'kd_toolkit.losses'}; {src}: train {len(train_ids)} / held-out {len(held)} tokens", flush=True)
    print(f"{'path':<8} {'mode':<10} {'seed':>4} {'held-out ppl':>12} {'vs fp32':>8} {'final scale':>11} {'skipped':>7} {'s':>6}", flush=True)
    res = {}
    for path in a.paths:
        for seed in a.seeds:
            for mode in a.modes:
                t0 = time.time()
                student, scale, skipped = train(L, mode, path, train_ids, copy.deepcopy(teacher), a.steps, a.device, seed=seed)
                ppl = res[path, mode, seed] = heldout_ppl(student, held, device=a.device)
                ref = res.get((path, 'fp32', seed))
                rel = ppl / ref - 1 if ref else float('nan')
                print(f"{path:<8} {mode:<10} {seed:>4} {ppl:>12.3f} {100*rel:>+7.2f}% {scale:>11.0f} {skipped:>7} {time.time()-t0:>6.0f}", flush=True)
                if a.json:
                    with open(a.json, 'a') as f:
                        f.write(json.dumps(dict(part='training', path=path, mode=mode, seed=seed, ppl=ppl, vs_fp32=rel, final_scale=scale,
                                                skipped=skipped, device=a.device, steps=a.steps, data=src)) + '\n')
    worst = 0.
    print(f"\nmean over seeds {a.seeds}:")
    for path in a.paths:
        mean = {m: sum(res[path, m, s] for s in a.seeds) / len(a.seeds) for m in a.modes}
        for m in a.modes:
            rel = mean[m] / mean['fp32'] - 1 if 'fp32' in mean else float('nan')
            if m in ('cast', 'autocast') and rel == rel: worst = max(worst, abs(rel))
            spread = max(res[path, m, s] for s in a.seeds) - min(res[path, m, s] for s in a.seeds)
            print(f"{path:<8} {m:<10} mean ppl {mean[m]:8.3f}  vs fp32 {100*rel:+6.2f}%  (spread over seeds {spread:.3f})")
    print(f"largest |fp16 - fp32| / fp32 of the mean perplexity: {100*worst:.2f}% (tolerance {100*a.tol:.0f}%)")
    return 0 if a.smoke or worst <= a.tol else 1

if __name__ == '__main__': sys.exit(main())
