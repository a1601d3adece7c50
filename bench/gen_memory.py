"""Memory and time of `model.generate` (KV cache) at the fp16_16gb pair's shapes, against the KV-cache memory model.

    nice -n 10 .venv/bin/python bench/gen_memory.py                         # CPU, fp32, small B/P/G (minutes on one core)
    python bench/gen_memory.py --device cuda --dtype fp16 --batch 32 --prompt 256 --new 256   # on a GPU (prepared)

Models are built from their published configs with random weights (no download): SmolLM2-135M (the student),
SmolLM2-360M and Qwen2.5-0.5B (teachers that may sample for `seq_kd`). Each model runs in a fresh process: build,
warm up with a 2-token generate, reset the peak (CPU: `/proc/self/clear_refs`, VmHWM; GPU:
`torch.cuda.reset_peak_memory_stats`), then one `generate` (sampling, top-k 0, no EOS stop: exactly `--new` tokens).
Reported: the peak above the resident model (MB), the model's KV-cache formula
`2 · layers · kv_heads · head_dim · bytes · B · (P + G)` (MB), and ms per generated token (the whole batch).
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # the published config.json values that matter here
    'SmolLM2-135M': dict(arch='llama', vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    'SmolLM2-360M': dict(arch='llama', vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, tie_word_embeddings=True),
    'Qwen2.5-0.5B': dict(arch='qwen2', vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}

def kv_bytes(name, batch, tokens, nbytes):
    c = CONFIGS[name]
    return 2 * c['num_hidden_layers'] * c['num_key_value_heads'] * (c['hidden_size'] // c['num_attention_heads']) * nbytes * batch * tokens

def worker(name, device, dtype, batch, prompt, new):
    import warnings; warnings.filterwarnings('ignore')
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from loss_memory import _reset_peak, _status_bytes
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    c = dict(CONFIGS[name]); arch = c.pop('arch')
    dt = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)[dtype]
    cfg = (LlamaConfig if arch == 'llama' else Qwen2Config)(**c, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = (LlamaForCausalLM if arch == 'llama' else Qwen2ForCausalLM)(cfg).to(device=device, dtype=dt).eval()
    ids = torch.randint(0, c['vocab_size'], (batch, prompt), device=device)
    kw = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.no_grad(): model.generate(ids[:, :2], max_new_tokens=2, **kw)          # warm-up
    if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else: _reset_peak(); base = _status_bytes('VmRSS:')
    t0 = time.perf_counter()
    with torch.no_grad(): out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    if device == 'cuda': torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
    else: peak = _status_bytes('VmHWM:') - base
    secs = time.perf_counter() - t0
    nb = torch.finfo(dt).bits // 8
    print(json.dumps(dict(model=name, device=device, dtype=dtype, batch=batch, prompt=prompt, new=out.shape[1] - prompt,
                          peak_mb=peak / 2**20, kv_model_mb=kv_bytes(name, batch, prompt + new, nb) / 2**20,
                          weights_mb=sum(p.numel() for p in model.parameters()) * nb / 2**20, ms_per_token=1000 * secs / new)))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='+', default=list(CONFIGS))
    ap.add_argument('--device', default='cpu'); ap.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    ap.add_argument('--batch', type=int, default=8); ap.add_argument('--prompt', type=int, default=64)
    ap.add_argument('--new', type=int, default=64)
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a.worker, a.device, a.dtype, a.batch, a.prompt, a.new)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='1048576')
    print(f"{'model':<14} {'dev':>4} {'dtype':>5} {'B':>3} {'P':>4} {'G':>4} {'peak MB':>8} {'KV model MB':>11} {'weights MB':>10} {'ms/token':>8}")
    for m in a.models:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', m, '--device', a.device, '--dtype', a.dtype,
                            '--batch', str(a.batch), '--prompt', str(a.prompt), '--new', str(a.new)], capture_output=True, text=True, env=env)
        lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
        if not lines: print(m, 'failed:', (r.stderr.strip().splitlines() or ['?'])[-1]); continue
        d = json.loads(lines[-1])
        print(f"{m:<14} {a.device:>4} {a.dtype:>5} {a.batch:>3} {a.prompt:>4} {d['new']:>4} {d['peak_mb']:>8.1f} "
              f"{d['kv_model_mb']:>11.1f} {d['weights_mb']:>10.0f} {d['ms_per_token']:>8.1f}", flush=True)

if __name__ == '__main__': main()
