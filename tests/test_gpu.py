"""GPU-only properties, skipped without CUDA (CI has none; run them where a GPU is: `pytest -q tests/test_gpu.py`).

What only a GPU can show: fp16 training with loss scaling and fp32 master weights, the non-finite guard under the
scaler, exact resume with the scaler state, the losses on fp16/bf16 inputs against float64, and the evaluator's
dtype matrix with the models on the device and autocast on.
"""
import copy, itertools, math, os, sys
from pathlib import Path
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # deterministic cuBLAS, for the exact-resume test
import datasets, pytest, torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from kd_toolkit.core import gpu_preflight, make_config
from kd_toolkit.evaluate import Evaluator
from kd_toolkit.losses import DIVERGENCES, TopK, fused_kd_lm_loss, kd_loss, kd_loss_topk, lm_loss, topk_teacher
from kd_toolkit.testing import fp16_grad_check, rand_batch, tiny_gpt2, tiny_llama, tiny_moe
from kd_toolkit.train import KDTrainer, NonFiniteError
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU: run `pytest -q tests/test_gpu.py` on one')]
V = 128

def test_preflight_picks_the_dtype_of_this_gpu():
    pf, cap = gpu_preflight(), torch.cuda.get_device_capability()
    assert pf.ok and pf.capability == cap, pf.message
    assert pf.dtype == (torch.bfloat16 if cap >= (8, 0) else torch.float16)

# ------------------------------------------------------------------ losses on half-precision inputs
def _inputs(N=256, Vl=5000, H=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, H, generator=g), torch.randn(Vl, H, generator=g)*0.3, torch.randn(N, Vl, generator=g)*3,
            torch.randint(0, Vl, (N,), generator=g))

def _kl_ce_f64(h, W, t, tg):
    "Reference: forward KL(teacher || student) + CE, mean over tokens, float64 on the CPU."
    z = h.double() @ W.double().T
    ls, lt = z.log_softmax(-1), t.double().log_softmax(-1)
    return (lt.exp()*(lt - ls)).sum(-1).mean(), torch.nn.functional.cross_entropy(z, tg)

@pytest.mark.parametrize('dt', [torch.float16, torch.bfloat16])
def test_losses_on_half_inputs_match_float64(dt):
    "fp16/bf16 hidden states, lm_head and teacher logits on the GPU: fp32 inside, so within rounding of a float64 reference."
    h, W, t, tg = _inputs()
    hq, Wq, tq = (x.to(dt) for x in (h, W, t))                     # the reference sees the same rounded inputs
    kd_ref, ce_ref = _kl_ce_f64(hq.float(), Wq.float(), tq.float(), tg)
    hc, Wc = (x.detach().cuda().requires_grad_() for x in (hq, Wq))
    out = fused_kd_lm_loss(hc, Wc, tq.cuda(), tg.cuda(), chunk_size=64)
    assert out['kd'].dtype == torch.float32 and out['lm'].dtype == torch.float32
    tol = 2e-2 if dt == torch.bfloat16 else 3e-3                   # one half-precision matmul of 64 terms
    assert out['kd'].item() == pytest.approx(kd_ref.item(), rel=tol) and out['lm'].item() == pytest.approx(ce_ref.item(), rel=tol)
    (out['kd'] + out['lm']).backward()
    assert hc.grad.dtype == dt and torch.isfinite(hc.grad).all() and torch.isfinite(Wc.grad).all()
    z = (hq.float() @ Wq.float().T).cuda().detach().requires_grad_()  # same losses through full logits: same gradient direction
    (kd_loss(z, tq.cuda()) + lm_loss(z, tg.cuda())).backward()
    g_ref = z.grad @ Wq.cuda().float()
    cos = torch.nn.functional.cosine_similarity(hc.grad.float().flatten(), g_ref.flatten(), dim=0)
    assert cos > 0.999, cos

def test_chunked_and_topk_equal_plain_on_gpu():
    "On the device in fp32, the chunked pass equals the plain one (values and gradients, rel. 1e-5), as on the CPU."
    h, W, t, tg = _inputs()
    z = (h @ W.T).cuda()
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    la, lb = kd_loss(a, t.cuda()), kd_loss(b, t.cuda(), chunk_size=37)
    la.backward(); lb.backward()
    assert lb.item() == pytest.approx(la.item(), rel=1e-5)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-9)
    tk = topk_teacher(t.cuda(), 5000)                              # k = V: the tail is empty, so it is the full KD
    assert kd_loss_topk(z, tk).item() == pytest.approx(la.item(), rel=1e-5)

def test_half_teacher_with_masked_vocab_stays_finite():
    "fp16 teacher logits at ±65504 and -inf on padded vocabulary rows (Qwen pads its vocab): finite loss and gradient."
    t = torch.randn(64, 1000, device='cuda').half()
    t[:, 900:] = float('-inf'); t[0, 0], t[1, 1] = 65504, -65504
    s = torch.randn(64, 1000, device='cuda').half().requires_grad_()
    for div in ('fkl', 'rkl', 'jsd', 'tvd'):
        loss = kd_loss(s, t, divergence=div, temperature=2.0, chunk_size=16)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all(), div
        s.grad = None

# ------------------------------------------------------------------ the evaluator on the device
def _state(m):
    return ([x.training for x in m.modules()], [(n, p.dtype, p.device, p.requires_grad) for n, p in m.named_parameters()])

@pytest.mark.parametrize('td,sd,amp', list(itertools.product([torch.float16, torch.bfloat16, torch.float32],
                                                             [torch.float32, torch.float16], [None, torch.float16])))
def test_evaluator_dtype_matrix_on_gpu(td, sd, amp):
    "MoE teacher and GPT-2 student on the GPU in any dtype mix (fp16 projector, autocast or not): within 1% of fp32 on the CPU, flags unchanged."
    teacher, student, proj = tiny_moe(V, 32, seed=3), tiny_gpt2(V, 32, seed=2), nn.Linear(32, 32)
    bs = [rand_batch(V, 4, 24, pad_frac=0.3, seed=i) for i in range(2)]
    ref = Evaluator(student, teacher, projector=proj).evaluate(bs)
    t, s, p = (copy.deepcopy(x).to('cuda', d) for x, d in ((teacher, td), (student, sd), (proj, torch.float16)))
    t.train(); s.lm_head.requires_grad_(False)
    before = [_state(x) for x in (t, s, p)]
    r = Evaluator(s, t, projector=p, amp_dtype=amp).evaluate([{k: v.cuda() for k, v in b.items()} for b in bs])
    assert [_state(x) for x in (t, s, p)] == before
    for k in ['student_ppl', 'teacher_ppl', 'kl', 'feature']:
        assert r[k] == pytest.approx(ref[k], rel=0.01), (k, r[k], ref[k])

# ------------------------------------------------------------------ fp16 training
def _ds(n=64, L=32):
    g = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({'input_ids': torch.randint(0, V, (n, L), generator=g).tolist()})

class _StopAt(TrainerCallback):
    def __init__(self, n): self.n = n
    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.n: control.should_training_stop = True

def _teacher():
    t = tiny_llama(V, 64, num_layers=2, seed=1)
    with torch.no_grad(): t.lm_head.weight.mul_(10)   # a peaky teacher, so there is KD to learn
    return t

def _trainer(out, teacher=None, curriculum=None, **kw):
    cfg = make_config(None, **{**dict(output_dir=str(out), precision='fp16', max_steps=30, per_device_train_batch_size=8,
                                    max_length=32, learning_rate=3e-3, logging_steps=5, save_steps=10, progress_bar=False,
                                    seed=0), **kw})
    return KDTrainer(cfg, teacher or _teacher(), tiny_llama(V, 32, num_layers=1, seed=2), _ds(),
                     curriculum=curriculum or {'lm': 1.0, 'kd': 1.0, 'feature': 0.5})

@pytest.mark.parametrize('kd', [dict(kd_path='chunked', chunk_size=64), dict(kd_topk=8), dict(kd_path='fused', chunk_size=64)])
def test_fp16_training(tmp_path, kd):
    "fp16 teacher, fp32 master weights, the loss scale logged, KD going down, no skipped steps beyond the scaler's first."
    tr = _trainer(tmp_path, **kd)
    tr.train()
    tp = next(tr.teacher.parameters())
    assert tp.dtype == torch.float16 and tp.is_cuda
    assert all(p.dtype == torch.float32 and p.is_cuda for p in tr.model.parameters())
    h = tr.history
    assert len(h) == 6 and h['loss'].map(math.isfinite).all(), h
    assert (h['loss_scale'] >= 1).all() and h['loss_scale'].iloc[0] > 1
    assert h['raw/kd'].iloc[-1] < 0.95*h['raw/kd'].iloc[0], h[['step', 'raw/kd']]
    assert h['skipped_steps'].iloc[-1] <= 2

def test_fp16_nonfinite_guard(tmp_path):
    "A NaN teacher under the fp16 scaler: steps skipped and named, nothing applied, then a diagnosis."
    t, n = tiny_llama(V, 64, num_layers=2, seed=1), [0]
    def hook(m, i, o):
        n[0] += 1
        o.logits.fill_(float('nan'))
    t.register_forward_hook(hook)
    tr = _trainer(tmp_path, teacher=t, curriculum={'lm': 1.0, 'kd': 1.0}, max_nonfinite_steps=3, kd_topk=8)
    before = [p.detach().clone() for p in tr.model.parameters()]
    with pytest.raises(NonFiniteError, match='non-finite loss component'): tr.train()
    assert tr.kd_state['skipped_steps'] == 3 and all(c == ['kd'] for _, c, _ in tr.kd_state['nonfinite'])
    assert max((p - q).abs().max().item() for p, q in zip(before, tr.model.parameters())) == 0.0

def test_fp16_resume_is_exact(tmp_path):
    "20 steps in one go vs 10, a resume and 10 more, fp16 with the scaler: same parameters and the same loss-scale history."
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        kw = dict(max_steps=20, kd_topk=8, curriculum={'lm': 1.0, 'kd': 1.0}, logging_steps=2)
        full = _trainer(tmp_path/'full', **kw); full.train()
        half = _trainer(tmp_path/'half', **kw); half.add_callback(_StopAt(10)); half.train()
        res = _trainer(tmp_path/'half', **kw); res.train(resume_from_checkpoint=str(tmp_path/'half'/'checkpoint-10'))
    finally: torch.use_deterministic_algorithms(False)
    diff = max((p - q).abs().max().item() for p, q in zip(full.model.parameters(), res.model.parameters()))
    assert diff <= 1e-6, diff
    assert full.history['loss_scale'].tolist() == res.history['loss_scale'].tolist()

# ------------------------------------------------------------------ fp16 vs fp32: gradients and training quality (issue 14)
def _fp16_inputs(N=1024, V=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(N, V, generator=g) * 3, torch.randn(N, V, generator=g) * 3
    tg = torch.randint(0, V, (N,), generator=g)
    return s.cuda(), t.cuda(), tg.cuda()

@pytest.mark.parametrize('divergence', DIVERGENCES)
def test_fp16_gradients_on_gpu(divergence):
    "On the device, fp16/bf16 logits under scales 1..2^24: chunked and top-k KD, chunked CE within one rounding of fp32."
    s, t, tg = _fp16_inputs()
    tk = topk_teacher(t.half(), 64)
    cases = {'chunked': (lambda x: kd_loss(x, t.half().float(), divergence=divergence, chunk_size=100),
                         lambda x: kd_loss(x, t.half().float(), divergence=divergence)),
             'topk': (lambda x: kd_loss_topk(x, tk, divergence=divergence, chunk_size='auto'), lambda x: kd_loss_topk(x, tk, divergence=divergence)),
             'lm': (lambda x: lm_loss(x, tg, chunk_size=100), lambda x: lm_loss(x, tg))}
    for name, (fn, ref) in cases.items():
        df = fp16_grad_check(fn, dict(x=s), ['x'], reference=ref)
        assert df.ok.all() and (df.nonfinite == 0).all(), (name, df[~df.ok].to_string())
        f = df[(df.dtype == 'float16') & (df.scale >= 2**8)]
        assert (f.cos >= 0.9999).all() and (f.rel_err <= 1e-3).all(), (name, f.to_string())

def test_fp16_fused_gradients_on_gpu():
    "fp16 hidden states, fp32 lm_head weight (autocast's pair), under autocast and a 2^16 scale: hidden and weight gradients."
    g = torch.Generator().manual_seed(1)
    h, W = torch.randn(1024, 256, generator=g).cuda(), (torch.randn(4096, 256, generator=g) * 0.1).cuda().requires_grad_()
    _, t, tg = _fp16_inputs()
    fused = lambda h: (lambda o: o['kd'] + o['lm'])(fused_kd_lm_loss(h, W, t.half(), tg, chunk_size=128))
    plain = lambda h: kd_loss(F.linear(h, W), t.half().float()) + lm_loss(F.linear(h, W), tg)
    df = fp16_grad_check(fused, dict(h=h), ['h'], params=[W], reference=plain, scales=(1., 2.**16), dtypes=(torch.float16,))
    assert df.ok.all(), df.to_string()

def test_fp16_training_quality_matches_fp32():
    """bench/fp16_train_check.py on the device, the presets' top-k path: real autocast + GradScaler vs fp32, mean held-out
    perplexity of 3 seeds within 2% (one run moves by a few % with any last-bit change; bench/gpu_check.sh runs all paths)."""
    import json, tempfile
    from fp16_train_check import main
    out = Path(tempfile.mkdtemp()) / 'r.jsonl'
    main(['--device', 'cuda', '--modes', 'fp32', 'autocast', '--paths', 'topk', '--steps', '200', '--seeds', '1', '2', '3',
          '--synthetic', '--json', str(out)])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    mean = {m: sum(r['ppl'] for r in rows if r['mode'] == m) / 3 for m in ('fp32', 'autocast')}
    assert abs(mean['autocast'] / mean['fp32'] - 1) <= 0.02, rows
    assert all(r['skipped'] <= 2 for r in rows), rows
