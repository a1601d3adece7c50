"""align.path_topk on real tokenizer pairs: valid student-id targets, mass kept, the actual token's chained probability."""
import math, pytest, torch
from kd_toolkit.testing import load_tokenizer, require_asset, read_text
from kd_toolkit.align import PathMap, path_topk, VocabMap, token_bytes
from kd_toolkit.data import pack_stream, packed_windows, KDCollator
from kd_toolkit.losses import topk_teacher, kd_loss_topk

def _batch(student, teacher, n=4, length=48):
    for t in (student, teacher): require_asset(f'tokenizers/{t}')
    st, tt = load_tokenizer(student), load_tokenizer(teacher)
    stream = pack_stream(read_text('shakespeare', 4000).split('\n\n'), st, tt)
    b = KDCollator(0, 0)(list(packed_windows(stream, length))[:n])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*b['teacher_input_ids'].shape, len(tt), generator=g) * 4
    tlp = logits.log_softmax(-1)[:, :-1].gather(-1, b['teacher_input_ids'][:, 1:, None])[..., 0]
    tlp = torch.cat([tlp, torch.zeros(len(tlp), 1)], 1)
    return st, tt, b, logits, tlp

@pytest.mark.parametrize('student,teacher', [('gpt2', 'llama2-spm'), ('llama2-spm', 'gpt2')])
def test_path_targets_are_valid_distributions(student, teacher):
    st, tt, b, logits, tlp = _batch(student, teacher)
    am = b['align_mask'] & b['attention_mask'].bool()
    counts = torch.bincount(b['input_ids'].flatten(), minlength=len(st))
    for pm in (PathMap.from_tokenizers(tt, st), PathMap.from_tokenizers(tt, st, counts)):
        tk, m = path_topk(pm, b['input_ids'], b['teacher_input_ids'], b['align_idx'], am, topk_teacher(logits, 16), tlp,
                          b['attention_mask'], b['teacher_attention_mask'], k=16)
        assert m.sum() > 0.8 * am.sum() and not (m & ~am.flatten()).any()
        total = tk.logprobs[m].exp().sum(-1) + tk.tail[m].exp()
        assert torch.allclose(total, torch.ones_like(total), atol=1e-4)  # listed mass + tail = 1
        assert all(len(set(r)) == len(r) for r in tk.ids[m].tolist())  # distinct ids (fillers carry mass 0)
        assert int(tk.ids.max()) < len(st)
        x = torch.randn(len(tk.ids), len(st), requires_grad=True)
        loss = kd_loss_topk(x, tk, m)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()

def test_actual_token_gets_its_chained_teacher_probability():
    "Where the teacher spells the student's next token in whole pieces, its target is the product of their probabilities times the share of next pieces that do not extend it."
    st, tt, b, logits, tlp = _batch('gpt2', 'llama2-spm', n=2)
    am = b['align_mask'] & b['attention_mask'].bool()
    K = 512  # a top-k wide enough that the checked pieces are in it
    full = topk_teacher(logits, K)
    pm = PathMap.from_tokenizers(tt, st)
    tk, m = path_topk(pm, b['input_ids'], b['teacher_input_ids'], b['align_idx'], am, full, tlp,
                      b['attention_mask'], b['teacher_attention_mask'], k=K)
    sb, tb = token_bytes(st)[0], token_bytes(tt)[0]
    probs = logits.softmax(-1)
    checked = equal = 0
    Ls = b['input_ids'].shape[1]
    for bi in range(2):
        pos = torch.nonzero(am[bi]).flatten().tolist()
        for i, i2 in zip(pos, pos[1:]):
            if i2 != i + 1: continue  # the next student token ends at the next common boundary
            j, j2 = int(b['align_idx'][bi, i]), int(b['align_idx'][bi, i2])
            s_next = int(b['input_ids'][bi, i + 1])
            if sb[s_next] is None: continue  # a document end: no bytes to spell
            chained = math.prod(float(probs[bi, p, b['teacher_input_ids'][bi, p + 1]]) for p in range(j, j2))
            stay = sum(float(probs[bi, j2, c]) for c in range(len(tt))
                       if tb[c] is None or pm._ends_here(sb[s_next] + tb[c], len(sb[s_next])))
            got = float((tk.logprobs[bi * Ls + i].exp() * (tk.ids[bi * Ls + i] == s_next)).sum())
            # alternatives on the path that spell s* again (other teacher splits of the same bytes) add to it
            assert got >= chained * stay * (1 - 1e-3) - 1e-6
            checked += 1; equal += abs(got - chained * stay) <= 1e-3 * max(got, 1e-6) + 1e-7
    assert checked > 20 and equal > 0.5 * checked  # mostly nothing else spells s*: exactly the chained probability
