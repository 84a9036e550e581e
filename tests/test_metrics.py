"""The Table 12 metrics against loops written from their public definitions (the TRX and HyRSM /
CLIP-FSAR heads): one (query, support) pair or one (query, class) at a time, in fp64."""
import itertools
import math

import pytest
import torch

from hr2g.model.metrics import TRX, BiMHM


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Ta, C], [Tb, C] -> [Ta, Tb]: 1 - a.b / (|a||b| + 0.01), the OTAM/CLIP-FSAR frame distance."""
    return 1 - (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None] + 0.01)


@pytest.mark.parametrize("n, k, l, t", [(5, 1, 5, 8), (3, 2, 4, 5), (2, 3, 1, 1)])
def test_bimhm_sums_each_frames_nearest_distance_over_both_videos(n, k, l, t):
    torch.manual_seed(n * 100 + k * 10 + t)
    e, c = 2, 12
    q, s = torch.randn(e, l, t, c, dtype=torch.float64), torch.randn(e, n * k, t, c, dtype=torch.float64)
    want = torch.zeros(e, l, n, dtype=torch.float64)
    for ep, i, cls in itertools.product(range(e), range(l), range(n)):
        pairs = []
        for j in range(cls * k, (cls + 1) * k):  # class-major supports
            d = _cosine_distance(q[ep, i], s[ep, j])  # [Tq, Ts]
            pairs.append(sum(min(row) for row in d.tolist()) + sum(min(col) for col in d.T.tolist()))
        want[ep, i, cls] = -sum(pairs) / k
    got = BiMHM()(q, s, k)
    # the metric measures in fp32 (as OTAM does): fp32 rounding of distances summed over 2T frames
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2 * t * 1e-6)


def _trx_loop(m: TRX, q: torch.Tensor, s: torch.Tensor, k: int) -> torch.Tensor:
    """Public TRX, per query and class: keys layer-normed, values raw; each query tuple attends to
    all K*U tuples of the class's supports; distance |q_v - prototype|^2 summed, over U tuples;
    logits averaged over the cardinalities."""
    e, l, t, _ = q.shape
    n = s.shape[1] // k
    out = torch.zeros(e, l, n, dtype=q.dtype)
    for w_i, w in enumerate(m.cardinalities):
        tuples = list(itertools.combinations(range(t), w))
        fk, fv, nk = m.k[w_i], m.v[w_i], m.norm_k[w_i]
        embed = lambda x: torch.stack([torch.cat([x[f] + m.pe[f].to(x.dtype) for f in tup]) for tup in tuples])  # noqa: E731
        for ep, i, cls in itertools.product(range(e), range(l), range(n)):
            qt = embed(q[ep, i])  # [U, w*C]
            st = torch.cat([embed(s[ep, j]) for j in range(cls * k, (cls + 1) * k)])  # [K*U, w*C]
            qk, qv, sk, sv = nk(fk(qt)), fv(qt), nk(fk(st)), fv(st)
            attn = torch.softmax(qk @ sk.T / math.sqrt(qk.shape[-1]), dim=-1)  # [U, K*U]
            out[ep, i, cls] -= ((qv - attn @ sv) ** 2).sum() / len(tuples) / len(m.cardinalities)
    return out


@pytest.mark.parametrize("cardinalities, n, k, l, t", [((2, 3), 5, 1, 5, 8), ((2,), 3, 2, 2, 4), ((1, 3), 2, 3, 1, 3)])
def test_trx_equals_the_public_definition_per_query_and_class(cardinalities, n, k, l, t):
    torch.manual_seed(7)
    c = 10
    m = TRX(c, t, cardinalities, proj_dim=6).double()
    for p in m.parameters():  # LayerNorm starts as the identity affine map: make it count
        p.data.normal_()
    q, s = torch.randn(2, l, t, c, dtype=torch.float64), torch.randn(2, n * k, t, c, dtype=torch.float64)
    torch.testing.assert_close(m(q, s, k), _trx_loop(m, q, s, k), rtol=1e-10, atol=1e-10)


def test_trx_has_no_value_norm_and_defaults_to_pairs_and_triples():
    m = TRX(16, 8)
    assert m.cardinalities == (2, 3) and not any("norm_v" in name for name, _ in m.named_parameters())
    assert [getattr(m, f"tuples{i}").shape for i in range(2)] == [(28, 2), (56, 3)]  # C(8, 2), C(8, 3)
