"Evaluator properties beyond the lessons: float64 references, other architectures in the dtype matrix, the cross-tokenizer path, real assets."
import copy, itertools, math, warnings
import pytest, torch
import torch.nn.functional as F
from torch import nn
from kd_toolkit.align import VocabMap
from kd_toolkit.evaluate import Evaluator, compare
from kd_toolkit.testing import rand_batch, tiny_gpt2, tiny_llama, tiny_moe

V = 128

def _state(m):
    return ([s.training for s in m.modules()], [(n, p.dtype, p.device, p.requires_grad) for n, p in m.named_parameters()])

def _batches(n=3, B=4, L=20, seed=0):
    bs = [rand_batch(V, B, L, pad_frac=0.3, seed=seed + i) for i in range(n)]
    for i, b in enumerate(bs):  # ragged padding, one row unpadded
        b['attention_mask'][0, :] = 1; b['attention_mask'][1, L - 3 - i:] = 0
        b['labels'] = b['input_ids'].masked_fill(b['attention_mask'] == 0, -100)
        b['n_bytes'] = torch.tensor([3 * L + i] * B)
    return bs

@pytest.fixture(scope='module')
def models():
    t = tiny_llama(V, 48, seed=1)
    with torch.no_grad(): t.lm_head.weight.mul_(10)   # peaky, so agreement is not trivial
    return t, tiny_gpt2(V, 32, seed=2)

def _reference(student, teacher, batches, k):
    "Everything in float64 from the models' own logits, one sequence at a time."
    nll_s = nll_t = n = kl = top1 = topk = n_cmp = nbytes = 0.
    for b in batches:
        nbytes += float(b['n_bytes'].sum())
        for i in range(len(b['input_ids'])):
            L = int(b['attention_mask'][i].sum()); ids = b['input_ids'][i:i+1, :L]
            with torch.no_grad(): s, t = student(ids).logits[0].double(), teacher(ids).logits[0].double()
            nll_s += F.cross_entropy(s[:-1], ids[0, 1:], reduction='sum').item()
            nll_t += F.cross_entropy(t[:-1], ids[0, 1:], reduction='sum').item(); n += L - 1
            lp, lq = t.log_softmax(-1), s.log_softmax(-1)
            kl += (lp.exp() * (lp - lq)).sum().item(); n_cmp += L
            top1 += (s.argmax(-1) == t.argmax(-1)).sum().item()
            topk += (s.topk(k, -1).indices == t.argmax(-1)[:, None]).any(-1).sum().item()
    return dict(student_log_ppl=nll_s / n, teacher_log_ppl=nll_t / n, student_ppl=math.exp(nll_s / n), n_tokens=n,
                student_bpb=nll_s / math.log(2) / nbytes, teacher_bpb=nll_t / math.log(2) / nbytes, kl=kl / n_cmp,
                top1_agree=top1 / n_cmp, topk_agree=topk / n_cmp, n_compared=n_cmp, n_bytes=nbytes)

def test_float64_reference(models):
    "Every metric equals a float64 computation from the models' own logits, sequence by sequence, unpadded."
    teacher, student = models
    bs = _batches()
    r = Evaluator(student, teacher, topk=3, chunk_size=7).evaluate(bs)
    ref = _reference(student, teacher, bs, 3)
    for k, v in ref.items(): assert r[k] == pytest.approx(v, rel=2e-5, abs=1e-6), (k, r[k], v)
    assert 0 < r.top1_agree < r.topk_agree < 1 and r.kl > 0.1

@pytest.mark.parametrize('td,sd,pd', list(itertools.product([torch.float16, torch.bfloat16, torch.float32],
                                                             [torch.float32, torch.float16], [torch.float32, torch.float16])))
def test_dtype_matrix_moe_teacher(td, sd, pd):
    "An MoE teacher and a GPT-2 student in any dtype mix: no error, within 1% of fp32, every flag unchanged."
    teacher, student, proj = tiny_moe(V, 32, seed=3), tiny_gpt2(V, 32, seed=2), nn.Linear(32, 32)
    bs = _batches(2)
    ref = Evaluator(student, teacher, projector=proj).evaluate(bs)
    t, s, p = (copy.deepcopy(x).to(d) for x, d in ((teacher, td), (student, sd), (proj, pd)))
    t.train(); s.transformer.h[0].train(); s.lm_head.requires_grad_(False); p.requires_grad_(False)
    before = [_state(x) for x in (t, s, p)]
    r = Evaluator(s, t, projector=p).evaluate(bs)
    assert [_state(x) for x in (t, s, p)] == before
    for k in ['student_ppl', 'teacher_ppl', 'kl', 'feature', 'student_bpb']:
        assert r[k] == pytest.approx(ref[k], rel=0.01), (k, r[k], ref[k])

def test_batching_and_padding_invariance(models):
    "One sequence per batch vs all 12 in padded batches of 8 and 4: the same numbers (token-weighted, not batch means)."
    teacher, student = models
    rows = [{k: v[i:i+1] for k, v in b.items()} for b in _batches() for i in range(4)]
    singles = [{**r, **{k: r[k][:, :int(r['attention_mask'].sum())] for k in ('input_ids', 'attention_mask', 'labels')}} for r in rows]
    cat = lambda rs: {k: torch.cat([r[k] for r in rs]) for k in rs[0]}
    a = Evaluator(student, teacher).evaluate(singles)
    b = Evaluator(student, teacher).evaluate([cat(rows[:8]), cat(rows[8:])])
    for k in ['student_ppl', 'teacher_ppl', 'kl', 'top1_agree', 'topk_agree', 'student_bpb', 'n_tokens', 'n_compared']:
        assert a[k] == pytest.approx(b[k], rel=1e-5), (k, a[k], b[k])

def test_matches_hf_loss():
    "A single unpadded sequence: exp(model(ids, labels=ids).loss)."
    m = tiny_gpt2(V, 32, seed=5)
    ids = torch.randint(0, V, (1, 37))
    with torch.no_grad(): own = math.exp(m(ids, labels=ids).loss.item())
    assert Evaluator(m).evaluate([dict(input_ids=ids)]).student_ppl == pytest.approx(own, rel=1e-5)

def test_cross_tokenizer_path_identity(models):
    "The cross-tokenizer path (own teacher tokens, alignment, VocabMap, top-k with tail at k = V) equals the same-tokenizer one."
    teacher, student = models
    bs = _batches()
    same = Evaluator(student, teacher).evaluate(bs)
    xb = [dict(b, teacher_input_ids=b['input_ids'], teacher_attention_mask=b['attention_mask'],
               align_idx=torch.arange(b['input_ids'].shape[1]).expand_as(b['input_ids']),
               align_mask=b['attention_mask'].bool()) for b in bs]
    vm = VocabMap(torch.arange(V), torch.ones(V, dtype=torch.bool), V)
    cross = Evaluator(student, teacher, vocab_map=vm, kd_topk=V).evaluate(xb)
    for k in ['student_ppl', 'teacher_ppl', 'kl', 'top1_agree', 'topk_agree', 'n_compared']:
        assert cross[k] == pytest.approx(same[k], rel=1e-4), (k, cross[k], same[k])
    lower = Evaluator(student, teacher, vocab_map=vm, kd_topk=4).evaluate(xb)   # top-4 + tail: a lower bound of the KL
    assert lower.kl <= cross.kl + 1e-6 and lower.top1_agree == cross.top1_agree

def test_restores_on_exception(models):
    "A failing loss_fn mid-evaluation: every module's mode is restored."
    teacher, student = models
    s = copy.deepcopy(student).train(); s.transformer.h[1].eval()
    before = _state(s)
    def boom(b, so, to): raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): Evaluator(s, teacher, loss_fn=boom, weights={}).evaluate(_batches(1))
    assert _state(s) == before

def test_loss_at_fixed_weights(models):
    "loss = Σ weight · raw at the FIXED weights; the token-weighted `lm` is the log-perplexity."
    from kd_toolkit.losses import kd_loss, lm_loss, next_token_targets
    teacher, student = models
    fn = lambda b, so, to: dict(lm=lm_loss(so.logits, next_token_targets(b['labels'])),
                                kd=kd_loss(so.logits, to.logits, b['attention_mask']))
    r = Evaluator(student, teacher, loss_fn=fn, weights=dict(lm=0.3, kd=2.0)).evaluate(_batches())
    assert r['loss'] == pytest.approx(0.3 * r['loss/lm'] + 2.0 * r['loss/kd'])
    assert r['loss/lm'] == pytest.approx(r.student_log_ppl, rel=1e-5)

def test_overflow_is_flagged_not_capped():
    m = tiny_llama(V, 32, seed=0)
    with torch.no_grad(): m.lm_head.weight.mul_(3e4)
    with pytest.warns(UserWarning, match='overflows'): r = Evaluator(m).evaluate(_batches(1))
    assert math.isinf(r.student_ppl) and r.student_ppl_overflow == 1 and r.student_log_ppl > 709
    assert Evaluator(tiny_llama(V, 32)).evaluate(_batches(1)).student_ppl_overflow == 0

def test_compare_frame(models):
    teacher, student = models
    bs = _batches(1)
    rt, rs, rst = Evaluator(teacher).evaluate(bs), Evaluator(student).evaluate(bs), Evaluator(student, teacher).evaluate(bs)
    df = compare(teacher=rt, student=rs, student_vs_teacher=rst)
    assert list(df.columns) == ['teacher', 'student', 'student_vs_teacher'] and set(df.index) == set(rst.index)
    assert df.loc['student_ppl', 'teacher'] == rt.student_ppl == rst.teacher_ppl and math.isnan(df.loc['kl', 'student'])

def test_bad_inputs(models):
    teacher, student = models
    b = _batches(1)[0]
    with pytest.raises(ValueError, match='eval set is empty'): Evaluator(student).evaluate(iter([]))
    with pytest.raises(ValueError, match='no valid tokens'): Evaluator(student).evaluate([dict(b, labels=torch.full_like(b['labels'], -100))])
    with pytest.raises(ValueError, match='no valid tokens'): Evaluator(student).evaluate([dict(input_ids=torch.tensor([[5]]))])
    with pytest.raises(ValueError, match='no align_idx'): Evaluator(student, teacher).evaluate([dict(b, teacher_input_ids=b['input_ids'])])
    with pytest.raises(ValueError, match='vocab_map'):
        Evaluator(student, teacher).evaluate([dict(b, teacher_input_ids=b['input_ids'], align_idx=torch.zeros_like(b['input_ids']),
                                                   align_mask=b['attention_mask'].bool())])
    with pytest.raises(ValueError, match='kd_toolkit.align'): Evaluator(student, tiny_llama(V + 40, 32)).evaluate([b])
    with pytest.raises(ValueError, match='FIXED weights'): Evaluator(student, loss_fn=lambda *a: {})
    with pytest.raises(TypeError, match='input_ids'): Evaluator(student).evaluate([dict(ids=b['input_ids'])])
    with pytest.raises(ValueError, match='topk'): Evaluator(student, topk=0)

@pytest.mark.slow
def test_stories260k_perplexity():
    "The real stories260K on the TinyStories excerpt: about 5.7 (5.79 with kd_toolkit.data's chunks), equal to a float64 reference."
    from kd_toolkit.testing import load_stories260k, load_tokenizer, read_text, require_asset, STORIES260K
    from kd_toolkit.data import build_kd_dataset, KDCollator
    require_asset(STORIES260K)
    tok, m = load_tokenizer('tok512'), load_stories260k()
    stories = [s for s in read_text('tinystories').split('\n') if s.strip()]
    ds = build_kd_dataset(stories, tok, max_length=512)
    col = KDCollator(tok.eos_token_id)
    bs = [col([ds[i] for i in range(j, min(j + 8, len(ds)))]) for j in range(0, len(ds), 8)]
    r = Evaluator(m).evaluate(bs)
    nll = n = 0.
    for ex in ds:
        ids = torch.tensor([ex['input_ids']])
        with torch.no_grad(): nll += F.cross_entropy(m(ids).logits[0, :-1].double(), ids[0, 1:], reduction='sum').item()
        n += ids.shape[1] - 1
    assert r.n_tokens == n and r.n_bytes == sum(len(s.encode()) for s in stories)
    assert r.student_ppl == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert r.student_ppl == pytest.approx(5.7, abs=0.15), r.student_ppl

def test_no_aligned_positions_warns(models):
    "Cross-tokenizer batches where nothing aligns: perplexities reported, KL/agreement left out with a warning."
    teacher, student = models
    b = _batches(1)[0]
    xb = dict(b, teacher_input_ids=b['input_ids'], teacher_attention_mask=b['attention_mask'],
              align_idx=torch.zeros_like(b['input_ids']), align_mask=torch.zeros_like(b['attention_mask'], dtype=torch.bool))
    vm = VocabMap(torch.arange(V), torch.ones(V, dtype=torch.bool), V)
    with pytest.warns(UserWarning, match='no position was aligned'): r = Evaluator(student, teacher, vocab_map=vm).evaluate([xb])
    assert 'kl' not in r and r.teacher_ppl > 1 and r.n_tokens == r.teacher_n_tokens

def _pad(seqs, side, pad_id=0):
    from kd_toolkit.evaluate import _padded
    return _padded(seqs, pad_id, side)

def test_left_and_right_padding_agree(models):
    "Left- and right-padded batches of ragged sequences: the same scored tokens exactly, every metric to 1e-6 relative."
    teacher, student = models
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, V, (n,), generator=g) for n in (30, 12, 25, 7, 30, 19)]
    right, left = (Evaluator(student, teacher, topk=3).evaluate([_pad(seqs, side)]) for side in ('right', 'left'))
    assert left.n_tokens == right.n_tokens == sum(len(s) - 1 for s in seqs)
    assert left.n_compared == right.n_compared == sum(map(len, seqs))
    for k in ['student_ppl', 'teacher_ppl', 'kl', 'top1_agree', 'topk_agree']:
        assert left[k] == pytest.approx(right[k], rel=1e-6), (k, left[k], right[k])

def test_left_padding_real_stories260k():
    "A real left-padded batch (stories260K, TinyStories, 6 rows of 80-150 tokens): n_tokens and ppl equal right padding's."
    from kd_toolkit.testing import load_stories260k, load_tokenizer, read_text, require_asset, STORIES260K
    require_asset(STORIES260K)
    tok, m = load_tokenizer('tok512'), load_stories260k()
    stories = [s for s in read_text('tinystories').split('\n') if s.strip()][:6]
    seqs = [torch.tensor(tok(s).input_ids)[:n] for s, n in zip(stories, (120, 100, 90, 150, 80, 130))]
    right, left = (Evaluator(m).evaluate([_pad(seqs, side)]) for side in ('right', 'left'))
    assert left.n_tokens == right.n_tokens == sum(len(s) - 1 for s in seqs) == 664   # before the fix: 669 (one per padded row)
    assert left.student_ppl == pytest.approx(right.student_ppl, rel=1e-6), (left.student_ppl, right.student_ppl)
    with torch.no_grad():   # and both equal the unpadded sequences scored one by one
        nll = sum(F.cross_entropy(m(s[None]).logits[0, :-1].double(), s[1:], reduction='sum').item() for s in seqs)
    assert right.student_ppl == pytest.approx(math.exp(nll / 664), rel=1e-5)

def test_left_padded_cross_tokenizer_teacher(models):
    "A left-padded teacher sequence (its own tokens) scores the same teacher tokens as a right-padded one."
    teacher, student = models
    b = _batches(1)[0]
    L = b['input_ids'].shape[1]
    def with_teacher(side):
        rows = [b['input_ids'][i, :int(b['attention_mask'][i].sum())] for i in range(4)]
        tb = _pad(rows, side)
        return dict(b, teacher_input_ids=tb['input_ids'], teacher_attention_mask=tb['attention_mask'],
                    align_idx=torch.zeros_like(b['input_ids']), align_mask=torch.zeros_like(b['attention_mask'], dtype=torch.bool))
    vm = VocabMap(torch.arange(V), torch.ones(V, dtype=torch.bool), V)
    with pytest.warns(UserWarning, match='no position was aligned'):
        r, l = (Evaluator(student, teacher, vocab_map=vm).evaluate([with_teacher(s)]) for s in ('right', 'left'))
    assert l.teacher_n_tokens == r.teacher_n_tokens and l.teacher_ppl == pytest.approx(r.teacher_ppl, rel=1e-6)

def test_chunk_size_auto(models):
    teacher, student = models
    bs = _batches(1)
    a, b = Evaluator(student, teacher, chunk_size='auto').evaluate(bs), Evaluator(student, teacher).evaluate(bs)
    assert a.student_ppl == pytest.approx(b.student_ppl, rel=1e-6) and a.kl == pytest.approx(b.kl, rel=1e-5)
    with pytest.raises(ValueError, match="'auto'"): Evaluator(student, chunk_size='big')
