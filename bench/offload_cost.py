"""Cost model of a teacher cache built by a teacher bigger than the GPU (issue 27): tokens per hour on a P100 and a T4.

    .venv/bin/python bench/offload_cost.py                  # the tables (markdown)
    .venv/bin/python bench/offload_cost.py --pcie-gbs 9     # another PCIe figure (e.g. the one bench/gpu_check.sh measured)

One cache pass runs the teacher forward over T batch tokens. With accelerate's big-model inference the layers that do
not fit the GPU live in CPU RAM (or on disk) and are copied to the GPU, layer by layer, on every pass; accelerate's
hooks copy synchronously (no prefetch), so a pass costs

    t_pass(T) = offloaded bytes / PCIe (+ disk bytes / disk) + max(T x FLOP/token / (peak x MFU), resident bytes / HBM)

and the cache fills at T / t_pass(T) tokens per second: weight streaming is paid once per pass and amortised over T.
FLOPs per token, the GPUs' peaks, bandwidths and the assumed MFU are bench/flops.py's (the project's figures).
Every other figure is an ASSUMPTION stated in `ASSUME` (change it with the flags); bench/gpu_check.sh's offload step
measures the real PCIe rate and pass time on a lent GPU.
"""
from __future__ import annotations
import argparse, math, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import GPUS, GB, forward_flops, md_table, param_counts   # the project's FLOP/bandwidth figures
from transformers import Qwen2Config

def _qwen2(L, d, h, kv, ffn, V=152064):
    return Qwen2Config(vocab_size=V, hidden_size=d, intermediate_size=ffn, num_hidden_layers=L, num_attention_heads=h,
                       num_key_value_heads=kv, tie_word_embeddings=False, max_position_embeddings=32768)

# Teachers with the Qwen vocabulary of the project's seeds; shapes from the published config.json files.
TEACHERS = {'Qwen2.5-7B': _qwen2(28, 3584, 28, 4, 18944), 'Qwen2.5-14B': _qwen2(48, 5120, 40, 8, 13824)}

ASSUME = dict(
    pcie_gbs=6.0,       # H2D of accelerate's pageable, synchronous copies on PCIe 3.0 x16 (pinned: ~12 of 15.75 peak)
    pinned_gbs=12.0,    # what a pinned, prefetching loader could reach on the same link (the upper line)
    disk_gbs=0.5,       # sequential read of the disk-offloaded shards when the page cache cannot hold them
    ram_gb=29.0,        # Kaggle VM RAM (P100 and T4 x2 sessions)
    ram_reserve_gb=6.0, # Python, torch, tokenizer, dataset, one safetensors shard while loading
    ctx_gb=0.5,         # CUDA context and allocator slack on the GPU
    act_mult=12,        # live activation bytes per token per layer ~ act_mult x d (fp16 residual, q/k/v, attention out)
    chunk=1024,         # positions per top-k chunk (the fp32 log-softmax chunk of losses.topk_teacher)
    seq_len=1024,       # tokens per cached row (attention FLOPs grow with it)
    int8_speed=0.7,     # LLM.int8 forward vs fp16 at large batches (outlier decomposition overhead): ASSUMED
    nf4_speed=0.9,      # NF4: dequantize each weight to fp16 per pass, then fp16 matmuls: ASSUMED
)

def sizes(cfg) -> dict:
    "Weight bytes of a teacher in fp16, 8-bit and 4-bit (bitsandbytes keeps embeddings and lm_head in fp16)."
    p = param_counts(cfg)
    emb_head = 2*p['embedding']                                     # untied: input embedding + lm_head, fp16 in every case
    lin = p['total'] - emb_head                                     # the decoder's linear layers (norms negligible)
    return {'params B': p['total']/1e9, 'fp16 GB': 2*p['total']/GB, 'int8 GB': (lin*1.0 + emb_head*2)/GB,
            'nf4 GB': (lin*(0.5 + 0.127/8) + emb_head*2)/GB}   # NF4: 4 bits + double-quantized absmax (~0.127 bit/param)

def logit_bytes(V, T, path) -> float:
    "GPU bytes of the logits in one pass (fp16 logits, and the fp32 log-softmax of one top-k chunk)."
    work = min(T, ASSUME['chunk'])*V*4*2                     # one chunk's fp32 log-softmax and exp
    if path == 'before': return T*V*2*2 + work                # (T, V) logits and their copy at real positions
    if path == 'library': return T*V*2 + work                 # issue 27: top-k over the logits, then real rows
    return min(T, ASSUME['chunk'])*V*2 + work                 # a chunked head (not built): one chunk of logits

def gpu_budget(cfg, gpu, T, path='library', n_gpus=1) -> float:
    "GPU bytes left for weights when a pass of T tokens runs (activations of one layer, logits, context)."
    act = T*ASSUME['act_mult']*cfg.hidden_size*2 + T*3*cfg.intermediate_size*2
    return n_gpus*(GPUS[gpu]['mem_gb']*GB - ASSUME['ctx_gb']*GB) - act - logit_bytes(cfg.vocab_size, T, path)

def pass_cost(cfg, gpu, T, weight_gb, speed=1.0, pcie=None, n_gpus=1, path='library') -> dict:
    "One cache pass of T tokens: where the weights are, seconds streaming and computing, tokens per hour."
    g, pcie = GPUS[gpu], pcie or ASSUME['pcie_gbs']
    W, room = weight_gb*GB, gpu_budget(cfg, gpu, T, path, n_gpus)
    if room < 0: return {'note': f"does not fit: a pass's activations and logits need {-room/GB:.1f} GB more"}
    res = max(0.0, min(W, room))
    cpu = min(W - res, (ASSUME['ram_gb'] - ASSUME['ram_reserve_gb'])*GB)
    disk = W - res - cpu
    t_stream = cpu/(pcie*GB) + disk/(ASSUME['disk_gbs']*GB) + disk/(pcie*GB)
    f = sum(forward_flops(cfg, min(T, ASSUME['seq_len'])).values())
    t_comp = max(T*f/(g['tflops']*1e12*g['mfu']*speed), res/(g['bw_gbs']*GB))
    t = t_stream + t_comp
    return {'resident GB': res/GB, 'resident %': 100*res/W, 'CPU GB': cpu/GB, 'disk GB': disk/GB, 'stream s/pass': t_stream,
            'compute s/pass': t_comp, 'stream share %': 100*t_stream/t, 'M tokens/h': 3600*T/t/1e6}

def crossover(cfg, gpu, weight_gb, speed=1.0, pcie=None) -> float:
    "Batch tokens per pass at which streaming costs as much as computing (90% efficiency needs 9x this)."
    g, T = GPUS[gpu], 8192
    c = pass_cost(cfg, gpu, T, weight_gb, speed, pcie)
    f = sum(forward_flops(cfg, ASSUME['seq_len']).values())/(g['tflops']*1e12*g['mfu']*speed)
    return c['stream s/pass']/f

def table(Ts, pcie=None) -> list[dict]:
    rows = []
    for tn, cfg in TEACHERS.items():
        sz = sizes(cfg)
        cases = [('fp16, GPU+CPU (accelerate)', sz['fp16 GB'], 1.0, 1, pcie),
                 ('fp16, GPU+CPU, pinned + prefetch', sz['fp16 GB'], 1.0, 1, ASSUME['pinned_gbs']),
                 ('int8 (bnb LLM.int8)', sz['int8 GB'], ASSUME['int8_speed'], 1, pcie),
                 ('nf4 (bnb 4-bit)', sz['nf4 GB'], ASSUME['nf4_speed'], 1, pcie)]
        for gpu in GPUS:
            for name, w, speed, n, bw in cases + ([('fp16, T4 x2 (device_map over both GPUs)', sz['fp16 GB'], 1.0, 2, pcie)] if gpu == 'T4' else []):
                if name.startswith('int8') and gpu == 'P100':
                    rows.append(dict(teacher=tn, gpu=gpu, placement=name, note='LLM.int8 needs sm_75+ (bitsandbytes docs)')); continue
                for T in Ts:
                    c = pass_cost(TEACHERS[tn], gpu, T, w, speed, bw, n)
                    rows.append(dict(teacher=tn, gpu=gpu, placement=name, **{'weights GB': w, 'T tokens/pass': T}, **c))
                    if 'note' in c: break
    return rows

def size_table() -> list[dict]:
    out = []
    for tn, cfg in TEACHERS.items():
        sz = sizes(cfg)
        for gpu in GPUS:
            b = gpu_budget(cfg, gpu, 8192)/GB
            out.append(dict(teacher=tn, gpu=gpu, **sz, **{'GPU room for weights at T=8k (GB)': b},
                            **{f'{p} fits': sz[f'{p} GB'] <= b for p in ('fp16', 'int8', 'nf4')},
                            **{'T* fp16 (stream = compute)': crossover(cfg, gpu, sz['fp16 GB'])}))
    return out

def logit_table(Ts) -> list[dict]:
    V = TEACHERS['Qwen2.5-7B'].vocab_size
    return [dict(**{'T tokens/pass': T, 'logits GB, before issue 27 ((T,V) fp16 x2)': logit_bytes(V, T, 'before')/GB,
                    'logits GB, the library ((T,V) fp16 once)': logit_bytes(V, T, 'library')/GB,
                    'logits GB, a chunked head (not built)': logit_bytes(V, T, 'chunked')/GB}) for T in Ts]

def compact(rows) -> list[dict]:
    "The tokens-per-hour table, one row per teacher, GPU and placement, one column per T."
    out, Ts = {}, sorted({r['T tokens/pass'] for r in rows if 'T tokens/pass' in r})
    for r in rows:
        key = (r['teacher'], r['gpu'], r['placement'])
        o = out.setdefault(key, dict(teacher=key[0], gpu=key[1], placement=key[2],
                                     **{f"M tokens/h @ T={T:,}": '' for T in Ts}, **{'stream % (largest T run)': ''}))
        if 'M tokens/h' in r:
            o[f"M tokens/h @ T={r['T tokens/pass']:,}"], o['stream % (largest T run)'] = r['M tokens/h'], r['stream share %']
        if 'note' in r: o['note'] = (f"T={r['T tokens/pass']:,}: " if 'T tokens/pass' in r else '') + r['note']
    return list(out.values())

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tokens', type=int, nargs='+', default=[1024, 4096, 8192, 16384], help='batch tokens per pass')
    for k, v in ASSUME.items(): ap.add_argument('--' + k.replace('_', '-'), type=type(v), default=v)
    ap.add_argument('--full', action='store_true', help='also every case with its streaming and compute seconds')
    a = ap.parse_args()
    ASSUME.update({k: getattr(a, k) for k in ASSUME})
    print("## Assumptions\n\n" + '\n'.join(f"- {k} = {v}" for k, v in ASSUME.items()))
    print("- GPUs (bench/flops.py): " + '; '.join(f"{g}: {s['tflops']} fp16 TFLOP/s peak x {s['mfu']:.0%} MFU, {s['mem_gb']} GB, "
                                                   f"{s['bw_gbs']} GB/s" for g, s in GPUS.items()))
    print("\n## Teacher sizes and what fits one 16 GB GPU during a cache pass (T = 8,192 tokens)\n")
    print(md_table(size_table()))
    print("\n## Logit memory of one pass (V = 152,064)\n")
    print(md_table(logit_table(a.tokens)))
    rows = table(a.tokens)
    print("\n## Cache tokens per hour (T = batch tokens per weight pass: `batch_tokens`)\n")
    print(md_table(compact(rows)))
    if a.full: print("\n## Every case\n\n" + md_table(rows))
