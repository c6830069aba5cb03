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
from scorer.scoring import INFERENCE_SHARE, RequestContext, Scorer, ScorerOptions, now_ms

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


def test_the_recent_delivery_lag_comes_off_the_time_an_slo_leaves_for_inference(scorer):
    slo = scorer(100.0)
    slo.batch_ms = 20.0
    due = now_ms() + 60.0  # 60 ms left: three batch-times, the calibrated rule
    assert slo.slo_rule(due)[0] == slo.rule and not slo.slo_rule(due)[2]
    for lag in (30.0, 30.0, 30.0):  # outputs have been leaving ~30 ms after their inference ended
        slo.observe_delivery(lag)
    assert slo.delivery_ms == pytest.approx(30.0)
    rule, deadline, relaxed = slo.slo_rule(due)  # 30 ms left before the outputs must leave: relaxed
    assert relaxed and rule.threshold < slo.rule.threshold
    assert deadline == pytest.approx(time.monotonic() + 0.030, abs=0.005)
    unhurried = scorer(None)
    unhurried.observe_delivery(30.0)  # SLO mode off: nothing is learned, nothing relaxed
    assert unhurried.delivery_ms == 0.0 and unhurried.slo_rule(np.inf)[0] == unhurried.rule


def test_a_micro_batch_of_fresh_requests_infers_within_its_share_of_the_slo(scorer, monkeypatch):
    """The requests queued behind a batch wait for its inference: with a whole SLO left, a batch is still answered
    from the deepest head reached once INFERENCE_SHARE of the SLO has passed (its cut rows flagged)."""
    slo, calm = scorer(1_000.0), scorer(None)
    ctxs = contexts(24, age_ms=0)
    full = calm.infer(ctxs)
    started, deadlines = time.monotonic(), []
    predict = slo.model.predict

    def recording(*args, **kwargs):
        deadlines.append(args[4] if len(args) > 4 else kwargs.get("deadline"))
        return predict(*args, **kwargs)

    monkeypatch.setattr(slo.model, "predict", recording)
    capped = slo.infer(ctxs)
    share_s = INFERENCE_SHARE * 1.0  # of a 1,000 ms SLO, in seconds
    prompted = [d for d in deadlines if d is not None]  # the rows released at layer 0 are answered without one
    assert prompted and all(started < d <= started + share_s + 0.05 for d in prompted)
    np.testing.assert_allclose(capped.ctr, full.ctr)  # the tiny model ends well within 250 ms: nothing cut
    assert not capped.pressed.any()


def test_a_backlog_answers_every_row_at_the_first_head_and_the_batch_time_estimate_then_fades(scorer):
    slo, calm = scorer(100.0), scorer(None)
    baseline = calm.infer(contexts(24, age_ms=0))
    calibrated_at_0 = baseline.exit_layer == 0
    behind = contexts(24, age_ms=0)
    behind[5].queue_ms = 30.0  # one request waited past INFERENCE_SHARE of its SLO before it was taken
    slo.batch_ms = 8.0
    answered = slo.infer(behind)
    assert (answered.exit_layer == 0).all() and (answered.pressed == ~calibrated_at_0).all()
    np.testing.assert_array_equal(answered.ctr[calibrated_at_0], baseline.ctr[calibrated_at_0])
    assert slo.batch_ms == pytest.approx(6.4)  # no model batch ran: the estimate fades instead of freezing
    fresh = slo.infer(contexts(24, age_ms=0))  # no backlog, time to spare: the calibrated rule again
    np.testing.assert_allclose(fresh.ctr, baseline.ctr)
    assert not fresh.pressed.any()


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


def test_a_checkpoint_that_pins_new_users_answers_their_rows_at_layer_0_and_leaves_the_rest_alone(
        tiny_scorer_checkpoint, tmp_path, monkeypatch):
    """New users' rows (no reaction known) answer from their features at the layer-0 head, with no prompt built;
    returning users' rows score exactly as without the pin."""
    import dataclasses

    from scorer import scoring

    model, tokenizer, card, _ = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    rule = MaxProbRule(0.95)  # a strict bar: the rule alone sends rows through the blocks
    options = ScorerOptions(model_batch_size=8)
    plain = Scorer(model, tokenizer, card, rule, GcnRetriever(None), {}, options)
    pinned = Scorer(model, tokenizer, dataclasses.replace(card, new_users_at_layer0=True), rule, GcnRetriever(None),
                    {}, options)
    ctxs = contexts(16, age_ms=0)
    for ctx in ctxs[::2]:  # every other request comes from a new user: no reaction known
        ctx.inputs = [dataclasses.replace(ctx.inputs[0], history=(), rate=None, surprise=None)]
    new = np.array([x.new_user for c in ctxs for x in c.inputs])
    assert new.sum() == 8
    before = plain.infer(ctxs)
    assert (before.exit_layer[new] > 0).any()  # the rule alone sends some of them through the blocks
    prompted = []
    real = scoring.build_prompts
    monkeypatch.setattr(scoring, "build_prompts", lambda batch, *a: prompted.extend(batch) or real(batch, *a))
    after = pinned.infer(ctxs)
    assert (after.exit_layer[new] == 0).all()
    np.testing.assert_array_equal(after.ctr[new], after.probs[new, 0])
    np.testing.assert_allclose(after.ctr[~new], before.ctr[~new], atol=1e-6)
    np.testing.assert_array_equal(after.exit_layer[~new], before.exit_layer[~new])
    assert not any(x.new_user for x in prompted)


def test_pinning_new_users_needs_a_layer_0_head(tiny_scorer_checkpoint, tmp_path):
    import dataclasses

    from scorer.model import EarlyExitModel

    model, tokenizer, card, rule = checkpoint.load(tiny_scorer_checkpoint, tmp_path)
    blocks_only = EarlyExitModel(model.backbone, [1, 2], n_features=model.n_features)
    with pytest.raises(ValueError, match="layer-0 head"):
        Scorer(blocks_only, tokenizer, dataclasses.replace(card, head_layers=[1, 2], new_users_at_layer0=True), rule,
               GcnRetriever(None), {}, ScorerOptions())
