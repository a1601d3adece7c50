"""fp16 / bf16 gradients of the chunk-likelihood objective (issue 16) against an fp32 reference, under loss scaling.

The student's logits are the only half-precision tensor (as under autocast: the LM head's output); everything after
them runs in fp32 inside `xvocab.token_logprobs` and `xvocab.chunk_likelihood_loss`, and the gradient reaches the fp16
logits in one cast, after the upstream loss scale has multiplied it. So the fp16 gradient, unscaled, must equal the
fp32 reference (the same fp16 logits upcast, fp32 autograd) up to fp16 rounding: cosine >= 0.9999 and relative norm
error <= 1e-3 at loss scales 1, 2^8, 2^16 and 2^24 (issue 14's criterion). Sizes: 4,096 student positions, about
2,000 chunks (half that for tau = 1, whose gradients are smaller), so max |grad| ~ 1e-3: 2^24 x grad still fits
fp16's 65,504, and at scale 1 most of the gradient's norm is above fp16's smallest normal number (6e-5).
"""
import math, pytest, torch
from kd_toolkit.xvocab import chunk_likelihood_loss, token_logprobs, binary_kl

SCALES = [1.0, 2.0**8, 2.0**16, 2.0**24]

def _case(seed=0, B=8, Ls=512, Lt=900, V=512):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, Ls, V, generator=g) * 3).half()  # peaked like a trained model's
    tg = torch.randint(0, V, (B, Ls), generator=g)
    tg[:, -1] = -100; tg[-1, -40:] = -100  # right padding in the last row
    # teacher log-probs near the student's, so chunk probabilities are not all ~0
    tlp = -torch.rand(B, Lt, generator=g) * 6
    m = torch.rand(B, Ls, generator=g) < 0.5
    m[-1, -40:] = False
    idx = torch.stack([torch.sort(torch.randperm(Lt, generator=g)[:Ls]).values for _ in range(B)])
    bm = torch.rand(V, generator=g) < 0.3
    tb = -torch.rand(B, Lt, generator=g) * 3
    return logits, tg, tlp, idx, m, bm, tb

def _loss(logits, case, tau, debias, merge):
    _, tg, tlp, idx, m, bm, tb = case
    if debias:
        slp, sb = token_logprobs(logits, tg, bm, chunk_size=1024)
        return chunk_likelihood_loss(slp, tlp, idx, m, sb, tb, merge_below=merge, temperature=tau)
    return chunk_likelihood_loss(token_logprobs(logits, tg, chunk_size=1024), tlp, idx, m, temperature=tau)

def _grads(case, dtype, scale, **kw):
    x = case[0].detach().to(dtype).clone().requires_grad_()
    (_loss(x, case, **kw) * scale).backward()
    ref = case[0].detach().to(dtype).float().requires_grad_()  # the same half-precision values, fp32 autograd
    _loss(ref, case, **kw).backward()
    return x.grad, ref.grad

@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('B,kw', [(4, dict(tau=1.0, debias=False, merge=0.0)), (8, dict(tau=100.0, debias=True, merge=0.1))],
                         ids=['plain', 'tau100-debiased-merged'])
def test_fp16_gradient_matches_fp32(scale, B, kw):
    case = _case(B=B)
    g16, ref = _grads(case, torch.float16, scale, **kw)
    assert g16.dtype == torch.float16 and torch.isfinite(g16).all()
    g = g16.float() / scale
    cos = float(torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0))
    rel = float((g - ref).norm() / ref.norm())
    print(f"\nscale {scale:.0e} {kw}: cosine {cos:.7f}, relative norm error {rel:.2e}, max |grad| {ref.abs().max():.2e}")
    assert cos >= 0.9999 and rel <= 1e-3

@pytest.mark.parametrize('scale', [1.0, 2.0**16])
def test_bf16_gradient_close_to_fp32(scale):
    "bf16 keeps 8 mantissa bits (relative rounding 2^-9 per entry): the bound is looser, stated here: rel <= 1e-2."
    case = _case(1)
    g16, ref = _grads(case, torch.bfloat16, scale, tau=100.0, debias=True, merge=0.1)
    g = g16.float() / scale
    assert float(torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0)) >= 0.999
    assert float((g - ref).norm() / ref.norm()) <= 1e-2

def test_fp16_loss_value_and_empty_mask():
    case = _case(2)
    v16 = _loss(case[0].clone(), case, 100.0, True, 0.1)
    v32 = _loss(case[0].float(), case, 100.0, True, 0.1)
    assert v16.dtype == torch.float32 and abs(float(v16) - float(v32)) <= 1e-6 * max(1.0, abs(float(v32)))
    x = case[0].detach().clone().requires_grad_()
    _, tg, tlp, idx, m, bm, tb = case
    z = chunk_likelihood_loss(token_logprobs(x, tg), tlp, idx, torch.zeros_like(m))
    (z * 2.0**24).backward()
    assert float(z.detach()) == 0.0 and torch.isfinite(x.grad).all() and float(x.grad.abs().max()) == 0.0

def test_extreme_chunks_are_finite_in_fp16():
    """Chunks the student is certain of (log-prob 0) and impossible ones (floored at -1e4), in fp16: a finite loss and
    gradients, each chunk's gradient bounded by 1/eps (binary KL's log barrier, shifted by eps = 1e-6). A loss scale
    large enough to push such a gradient past fp16's range gives inf, which the loss scaler skips and halves."""
    V = 64
    logits = torch.zeros(1, 6, V, dtype=torch.float16)
    logits[0, :3, 5] = 60.0  # probability 1 in fp32 too: log-prob exactly 0
    logits = logits.requires_grad_()
    tg = torch.tensor([[5, 5, 5, 7, 7, -100]])
    m = torch.tensor([[True, False, True, False, True, False]])
    idx = torch.tensor([[0, 0, 3, 0, 5, 0]])
    for tlp in (torch.full((1, 8), -30.0), torch.zeros(1, 8), torch.full((1, 8), -1e4)):
        loss = chunk_likelihood_loss(token_logprobs(logits, tg), tlp, idx, m, temperature=100.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
        logits.grad = None
    ls = torch.tensor([-1e4, 0.0, -1e-3, 0.0], requires_grad=True)
    d = binary_kl(torch.tensor([0.0, -1e4, -5.0, -3.0]), ls, 100.0)
    d.sum().backward()
    assert torch.isfinite(d).all() and float(ls.grad.abs().max()) <= 1 / 1e-6

# ------------------------------------------------------------------ the run's component: cross_vocab_loss='chunk'
def _chunk_component_case(B=8, Ls=512, Lt=900, V=512, seed=3):
    "A collated cross-tokenizer batch (right padding on both sides), fp32 teacher rows, and student logits ~ a trained model's."
    from kd_toolkit.losses import next_token_targets
    g = torch.Generator().manual_seed(seed)
    s_len, t_len = [Ls] * (B - 1) + [Ls - 40], [Lt] * (B - 1) + [Lt - 70]
    ids = torch.randint(0, V, (B, Ls), generator=g)
    am = (torch.arange(Ls) < torch.tensor(s_len)[:, None]).long()
    tam = (torch.arange(Lt) < torch.tensor(t_len)[:, None]).long()
    idx = torch.stack([torch.sort(torch.randperm(n, generator=g)[:Ls]).values for n in t_len])
    m = (torch.rand(B, Ls, generator=g) < 0.5) & am.bool()
    batch = dict(input_ids=ids, attention_mask=am, labels=ids.masked_fill(am == 0, -100), align_idx=idx, align_mask=m,
                 teacher_input_ids=torch.randint(0, V, (B, Lt), generator=g), teacher_attention_mask=tam)
    rows = -torch.rand(int(tam.sum()), generator=g) * 6  # the teacher's log-probs of its tokens, as the cache holds them
    return torch.randn(B, Ls, V, generator=g) * 3, batch, rows

@pytest.mark.parametrize('chunk_size,tau', [(None, 1.0), (700, 100.0)], ids=['plain-tau1', 'chunked-tau100'])
def test_chunk_component_fp16_bf16_grad_check(chunk_size, tau):
    """`components.kd_chunk` as the trainer calls it (a `components.MicroBatch`, the teacher's rows from the cache) on fp16 / bf16
    student logits under loss scales 1..2^24: `fp16_grad_check`'s bounds on every row (cosine, relative error over the
    dtype's own rounding, no non-finite entry, no extra zeros), and fp16 from 2^8 on within cos >= 0.9999, rel <= 1e-3."""
    from types import SimpleNamespace
    from kd_toolkit.components import KD_LOSSES, MicroBatch, Plan, kd_chunk
    from kd_toolkit.testing import fp16_grad_check
    logits, batch, rows = _chunk_component_case()
    plan = Plan('cached', 'chunk', temperature=tau, chunk_size=chunk_size)
    assert KD_LOSSES['chunk'].fn is kd_chunk and KD_LOSSES['chunk'].teacher == ('token_logprobs',)
    loss = lambda s: kd_chunk(MicroBatch(batch, plan, SimpleNamespace(logits=s), {'token_logprobs': rows}))
    ref = lambda s: kd_chunk(MicroBatch(batch, Plan('cached', 'chunk', temperature=tau), SimpleNamespace(logits=s), {'token_logprobs': rows}))
    df = fp16_grad_check(loss, dict(s=logits), ['s'], reference=ref)
    assert df[~df.ok].empty, df.to_string()
    assert (df.nonfinite == 0).all() and (df.overflow == 0).all(), df.to_string()
    f = df[(df.dtype == 'float16') & (df.scale >= 2**8)]
    assert (f.cos >= 0.9999).all() and (f.rel_err <= 1e-3).all(), f.to_string()
