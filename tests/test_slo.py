"""SLO mode: relaxed exit rules, anytime answers at a deadline, and the scorer flagging what it pressed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from schemas.messages import DegradedFlag, ImpressionRequest
from scorer import checkpoint
from scorer.exit_rules import EntropyRule, ExitRule, MaxProbRule, PatienceRule, RatioTrendRule
from scorer.prompt import NeighbourEvidence, PromptInputs
from scorer.retrievers import GcnRetriever
from scorer.scoring import RequestContext, Scorer, ScorerOptions, now_ms

TS = 946_684_800_000


def test_relaxing_a_rule_moves_its_bar_from_calibrated_to_anything_exits():
    assert MaxProbRule(0.9).relaxed(1.0) == MaxProbRule(0.9)
    assert MaxProbRule(0.9).relaxed(0.5).threshold == pytest.approx(0.7)
    assert MaxProbRule(0.9).relaxed(-3).threshold == 0.5  # clipped: every probability passes
    assert EntropyRule(0.3).relaxed(0.0).threshold == pytest.approx(np.log(2))
    assert RatioTrendRule(4.0).relaxed(0.0).threshold == pytest.approx(1.0)
    assert PatienceRule(2).relaxed(0.0) == PatienceRule(2) and ExitRule().relaxed(0.0) == ExitRule()


@pytest.fixture(scope="module")
def scorer(tiny_scorer_checkpoint, tmp_path_factory):
    model, tokenizer, card, rule = checkpoint.load(tiny_scorer_checkpoint, tmp_path_factory.mktemp("cache"))
    return lambda slo: Scorer(model, tokenizer, card, rule, GcnRetriever(None), {},
                              ScorerOptions(latency_slo_ms=slo, model_batch_size=8))


def contexts(n: int, age_ms: float) -> list[RequestContext]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        inputs = PromptInputs(f"item {k}", ((f"item {k + 1}", 1), (f"item {k + 2}", 0)),
                              NeighbourEvidence(int(rng.integers(5)), int(rng.integers(5))), (k % 7, 9),
                              (int(rng.integers(20)), 30), float(rng.uniform(-1, 1)))
        out.append(RequestContext(ImpressionRequest(request_id=f"r{k}", user_id=f"u{k}", item_ids=[f"i{k}"], ts=TS),
                                  0.0, now_ms() - age_ms, [inputs]))
    return out


def test_a_deadline_already_passed_answers_every_row_from_the_first_head(scorer):
    model = scorer(None).model
    enc = scorer(None).tokenizer(["a b c", "d e f g h", "i"], padding=True, return_tensors="pt")
    features = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    import torch

    free = model.predict(enc["input_ids"], enc["attention_mask"], ExitRule(), torch.from_numpy(features))
    late = model.predict(enc["input_ids"], enc["attention_mask"], ExitRule(), torch.from_numpy(features),
                         deadline=time.monotonic() - 1)
    far = model.predict(enc["input_ids"], enc["attention_mask"], ExitRule(), torch.from_numpy(features),
                        deadline=time.monotonic() + 3600)
    assert (free.exit_layer == 2).all() and not free.cut.any()
    assert (late.exit_layer == 0).all() and late.cut.all()  # the layer-0 head's answer, no block ran
    np.testing.assert_array_equal(late.ctr, free.probs[:, 0])
    np.testing.assert_array_equal(far.ctr, free.ctr)
    assert not far.cut.any()


def test_the_scorer_relaxes_or_cuts_only_requests_near_their_slo_and_flags_them(scorer):
    relaxed_scorer, baseline = scorer(50.0), scorer(None).infer(contexts(24, age_ms=0))
    generous = scorer(60_000.0)
    unhurried = generous.infer(contexts(24, age_ms=0))  # a minute to spare: the calibrated rule, no flag
    assert generous.batch_ms > 0
    np.testing.assert_allclose(unhurried.ctr, baseline.ctr)
    assert not unhurried.pressed.any()
    relaxed_scorer.batch_ms = 40.0  # a 50 ms aim with 40 ms batches: a fresh request's rule is relaxed
    fresh = relaxed_scorer.infer(contexts(24, age_ms=0))
    # rows the calibrated rule releases at the layer-0 head are answered before any batch: never pressed
    calibrated_at_0 = baseline.exit_layer == 0
    assert 0 < calibrated_at_0.sum() < 24
    assert (fresh.pressed == ~calibrated_at_0).all() and (fresh.exit_layer <= baseline.exit_layer).all()
    np.testing.assert_array_equal(fresh.ctr[calibrated_at_0], baseline.ctr[calibrated_at_0])
    late_contexts = contexts(24, age_ms=10_000)  # already past a 50 ms aim: answered at once, flagged
    late = relaxed_scorer.infer(late_contexts)
    assert (late.pressed == ~calibrated_at_0).all() and (late.exit_layer == 0).all()
    flags = [t.degraded for _, t in relaxed_scorer.outputs(late_contexts, late, now_ms())]
    assert flags == [[] if at_0 else [DegradedFlag.SLO] for at_0 in calibrated_at_0]


def test_rows_released_at_layer_0_skip_their_prompt_and_score_as_in_one_pass(scorer, monkeypatch):
    plain = scorer(None)
    ctxs = contexts(24, age_ms=0)
    inputs = [x for c in ctxs for x in c.inputs]
    texts = [plain.prompt(x) for x in inputs]
    enc = plain.tokenizer(texts, padding=True, truncation=True, max_length=plain.card.max_length,
                          return_tensors="pt")
    import torch

    from scorer.features import feature_matrix

    features = torch.from_numpy(feature_matrix(inputs, plain.card.prior, plain.card.features))
    one_pass = plain.model.predict(enc["input_ids"], enc["attention_mask"], plain.rule, features)
    from scorer import scoring

    prompted = []
    real = scoring.build_prompts
    monkeypatch.setattr(scoring, "build_prompts", lambda batch, *a: prompted.extend(batch) or real(batch, *a))
    served = plain.infer(ctxs)
    np.testing.assert_allclose(served.ctr, one_pass.ctr, atol=1e-6)
    np.testing.assert_array_equal(served.exit_layer, one_pass.exit_layer)
    released = one_pass.exit_layer == 0
    assert 0 < released.sum() < len(inputs)
    assert prompted == [x for x, r in zip(inputs, released, strict=True) if not r]  # the released: no prompt
