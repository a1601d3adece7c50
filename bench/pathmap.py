"""The teacher's next-token distribution over student ids, built along the text (issue 16; moved out of
`kd_toolkit.align` in issue 26: only `bench/xtok.py` and `tests/test_xtok_path.py` use it).

`chunk_likelihood_loss` gives one number per chunk: how likely the teacher finds the text that *was* written. On a
corpus large enough that LM-only does not overfit, that is not enough (`bench/xtok.py`, stories260K teacher, 3M
sampled tokens, 300 steps of 16 x 128: a GPT-2-tokenizer student with CE + 10 x chunk loss ends at 1.76 bits/byte
against 1.68 for LM only); it adds no knowledge of the *alternatives*, which same-tokenizer KD transfers.

Across tokenizers that distribution can be built along the text: at an aligned position, the student's next token
`s*` spells some bytes; the teacher reads them in one or more pieces `b1, b2, ...`, and at every step on that path
its top-k says where else the text could have gone. Each alternative piece `c` after the path prefix `A` is a
continuation that starts with `A + bytes(c)`: its probability is the product of the teacher's probabilities along
the path times `P(c)`, and the student token it starts is the longest student token that is a prefix of those bytes
(greedy longest match). When the path has spelled `s*`, one more step splits its mass between `s*` and the longer
student tokens the next piece would merge it into. Where `A + bytes(c)` is only the start of several student tokens,
its mass goes to the longest student prefix, or, with token `counts` from the training text, is spread over the seen
student tokens that extend it, by frequency.

The result is a top-k over **student ids** at every aligned student position (the format of `VocabMap.map_topk`),
scored with `losses.kd_loss_topk`. With one step and no extension it is exactly `VocabMap.map_topk`.
"""
from __future__ import annotations
import math
import torch
from kd_toolkit.align import VocabMap, _kinds, _lookups, token_bytes
from kd_toolkit.losses import TopK, _FLOOR

__all__ = ['PathMap', 'path_topk']


def _extensions(sb, counts, top): # byte prefix -> [(student id, share)] of the seen tokens that start with it
    ext = {}
    for t in torch.nonzero(torch.as_tensor(counts)).flatten().tolist():
        if t < len(sb) and sb[t]:
            for n in range(1, len(sb[t]) + 1): ext.setdefault(sb[t][:n], []).append((int(counts[t]), t))
    out = {}
    for w, v in ext.items():
        v = sorted(v, reverse=True)[:top]; z = sum(c for c, _ in v)
        out[w] = [(t, c / z) for c, t in v]
    return out


class PathMap:
    "Byte tables for `path_topk`: teacher piece bytes, the student's longest-prefix lookup, optional spread."
    def __init__(self,
                 teacher_bytes:list, # bytes of each teacher id (None: special)
                 student_bytes:list, # bytes of each student id (None: special)
                 t2s:list|torch.Tensor, # student id of each teacher id (`VocabMap.t2s`), used for special tokens
                 counts:torch.Tensor|None=None, # (Vs,) student token counts in the training text: spread by frequency
                 top:int=8, # student tokens kept per byte prefix for the spread
                 student_kinds:list|None=None, # 0 ordinary, 1 byte-fallback, 2 added (ordinary pieces win ties)
                ):
        self.tb, self.sb, self.t2s = teacher_bytes, student_bytes, [int(x) for x in t2s]
        self.lookup = _lookups(student_bytes, student_kinds or [0] * len(student_bytes))[1]
        self.maxlen = max(map(len, self.lookup), default=0)
        self.ext = None if counts is None else _extensions(student_bytes, counts, top)

    @classmethod
    def from_tokenizers(cls, teacher_tok, student_tok, counts=None, top:int=8) -> PathMap:
        "Tables for a real pair (`counts`: the student's token counts on the training text, `torch.bincount(ids)`)."
        sb, sfb = token_bytes(student_tok)
        return cls(token_bytes(teacher_tok)[0], sb, VocabMap.from_tokenizers(teacher_tok, student_tok).t2s, counts,
                   top, _kinds(student_tok, sfb))

    def longest(self, w:bytes) -> int|None:
        "The longest student token that is a prefix of the bytes `w` (None: none)."
        for n in range(min(len(w), self.maxlen), 0, -1):
            s = self.lookup.get(w[:n])
            if s is not None: return s
        return None

    def _give(self, out:dict, w:bytes, p:float) -> float: # mass p to the student token(s) w starts; returns the rest
        cand = self.ext.get(w) if self.ext is not None else None
        if cand and not (len(cand) == 1 and self.sb[cand[0][0]] == w):
            for t, q in cand: out[t] = out.get(t, 0.0) + p * q
            return 0.0
        s = self.longest(w)
        if s is None: return p
        out[s] = out.get(s, 0.0) + p
        return 0.0

    def _ends_here(self, w:bytes, n:int) -> bool: # after n bytes of s*: does piece bytes w leave s* as the token?
        if self.ext is not None and self.ext.get(w): return False
        s = self.longest(w)
        return s is None or len(self.sb[s] or b'') <= n

    def position(self,
                 s_next:int, # the student's actual next token
                 j:int, # the teacher position aligned with the student's position
                 t_ids:list, # the teacher's tokens (one row)
                 t_len:int, # its real length
                 tk_ids:list, tk_p:list, # the teacher's top-k ids and probabilities at every teacher position
                 t_lp:list, # log-prob of the teacher's actual next token at every teacher position
                ) -> dict|None:
        "{student id: probability} of the next student token at one aligned position (None: the text ends first)."
        out, A, pi, n = {}, b'', 1.0, len(self.sb[s_next] or b'')
        if self.sb[s_next] is None: return None
        for pos in range(j, t_len - 1):
            beta, covered, tot = t_ids[pos + 1], len(A) >= n, 0.0
            for c, p in zip(tk_ids[pos], tk_p[pos]):
                if c == beta and not covered: continue
                tot += p
                if self.tb[c] is None:  # a special token: the document ends (or starts) after A
                    s = self.t2s[c] if not A else (s_next if covered else self.longest(A))
                    if s is not None: out[s] = out.get(s, 0.0) + pi * p
                elif covered and self._ends_here(A + self.tb[c], n): out[s_next] = out.get(s_next, 0.0) + pi * p
                else: self._give(out, A + self.tb[c], pi * p)
            if covered:
                out[s_next] = out.get(s_next, 0.0) + pi * max(0.0, 1.0 - tot)  # outside the top-k: s* ends here
                return out
            pi, A = pi * math.exp(t_lp[pos]), A + (self.tb[beta] or b'')
        return None


def _rows_topk(rows, n_rows, k, vocab): # {row: {student id: p}} -> TopK (n_rows, k): the k largest, distinct fillers
    lp, ids, tail = torch.full((n_rows, k), _FLOOR), torch.zeros(n_rows, k, dtype=torch.long), torch.zeros(n_rows)
    for r, d in rows.items():
        top = sorted(d.items(), key=lambda x: -x[1])[:k]
        used = {s for s, _ in top}
        fill = [f for f in range(vocab - 1, -1, -1) if f not in used][:k - len(top)]
        ids[r] = torch.tensor([s for s, _ in top] + fill)
        lp[r, :len(top)] = torch.tensor([p for _, p in top], dtype=torch.float64).clamp_min(1e-30).log().float()
        tail[r] = math.log(max(1.0 - sum(p for _, p in top), 1e-30))
    return TopK(lp.clamp_min(_FLOOR), ids, tail.clamp_min(_FLOOR))


def path_topk(
    pm:PathMap, # the pair's tables (`PathMap.from_tokenizers`)
    input_ids:torch.Tensor, # (B, Ls) student tokens
    teacher_input_ids:torch.Tensor, # (B, Lt) teacher tokens of the same text
    align_idx:torch.Tensor, # (B, Ls) aligned teacher position of each student position
    align_mask:torch.Tensor, # (B, Ls) bool
    teacher_topk:TopK, # the teacher's top-k at every teacher position, flattened (B·Lt, k), teacher ids
    teacher_lp:torch.Tensor, # (B, Lt) log-prob of the teacher's actual next token (`xvocab.token_logprobs`)
    attention_mask:torch.Tensor|None=None, # (B, Ls) the student's real tokens
    teacher_attention_mask:torch.Tensor|None=None, # (B, Lt) the teacher's real tokens
    k:int=32, # student ids kept per position
) -> tuple[TopK, torch.Tensor]:
    "The teacher's next-token distribution over student ids at every student position `(B·Ls, k)`, and where defined."
    (B, Ls), Lt = input_ids.shape, teacher_input_ids.shape[1]
    sl = (attention_mask.sum(1) if attention_mask is not None else torch.full((B,), Ls)).tolist()
    tl = (teacher_attention_mask.sum(1) if teacher_attention_mask is not None else torch.full((B,), Lt)).tolist()
    kk = teacher_topk.ids.shape[-1]
    tk_ids = teacher_topk.ids.reshape(B, Lt, kk).tolist()
    tk_p = teacher_topk.logprobs.float().exp().reshape(B, Lt, kk).tolist()
    s_ids, t_ids, idx, am, tlp = (x.tolist() for x in (input_ids, teacher_input_ids, align_idx, align_mask.bool(),
                                                       teacher_lp.float()))
    rows = {}
    for b in range(B):
        for i in range(sl[b] - 1):
            if not am[b][i]: continue
            d = pm.position(s_ids[b][i + 1], idx[b][i], t_ids[b], tl[b], tk_ids[b], tk_p[b], tlp[b])
            if d: rows[b * Ls + i] = d
    mask = torch.zeros(B * Ls, dtype=torch.bool)
    mask[list(rows)] = True
    return _rows_topk(rows, B * Ls, k, len(pm.sb)), mask
