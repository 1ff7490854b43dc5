"""Empty-thought samples and the next-token term: the rollouts they make, what the loss trains on them, and
the contexts the LM term reads."""

import torch

from nextrl.config import load_config
from nextrl.engine.base import Phase, Rollout, SamplingParams
from nextrl.env.base import Task
from nextrl.trainer.empty_thought import answer_params, closed_prompts, join_empty_thought
from nextrl.trainer.rl import RLTrainer, lm_sequences
from nextrl.trainer.self_selection import loss_token_masks
from tiny_models import tiny_llama

CLOSE = 9


def test_answer_params_keep_only_the_answer_phase():
    params = SamplingParams(
        phases=(Phase(16, (CLOSE,), (CLOSE,)), Phase(1)), n=8, temperature=0.7, top_p=0.9, eos_token_ids=(2,)
    )
    p = answer_params(params, 2)
    assert p.phases == (Phase(1),) and p.n == 2 and p.temperature == 0.7 and p.eos_token_ids == (2,)
    assert closed_prompts([[1, 2], [3]], CLOSE) == [[1, 2, CLOSE], [3, CLOSE]]


def test_join_makes_close_an_action_then_the_answer():
    answers = [[Rollout([1, 2, CLOSE], [7], [-0.5], [1], "length", 3, [0], [1.2])]]
    (group,) = join_empty_thought([[1, 2]], answers, [-4.0], [2.5], CLOSE)
    (r,) = group
    assert r.prompt_ids == [1, 2]  # the prompt as every other sample of the group has it
    assert r.completion_ids == [CLOSE, 7]
    assert r.logprobs == [-4.0, -0.5] and r.action_mask == [1, 1] and r.entropies == [2.5, 1.2]
    assert r.phase_starts == [0, 1] and r.policy_version == 3
    # RLP's thought-only loss trains exactly the decision to close at once; 'all' trains the answer too
    (thought_only,) = loss_token_masks([r], thought_only=True, rho=1.0)
    assert thought_only.action_mask == [1, 0]
    (everything,) = loss_token_masks([r], thought_only=False, rho=1.0)
    assert everything.action_mask == [1, 1]


def _task(ctx, target):
    return Task("t", [*ctx, 5], meta={"context_ids": ctx, "target_ids": [target, 0]})


def test_lm_sequences_keep_each_stripe_once():
    doc = list(range(10, 30))
    # three positions of one stripe (nested contexts) and one of another document
    tasks = [_task(doc[:4], doc[4]), _task(doc[:9], doc[9]), _task(doc[:6], doc[6]), _task([1, 2], 3)]
    got = lm_sequences(tasks)
    assert sorted(got) == sorted([doc[:10], [1, 2, 3]])
    assert lm_sequences([_task([], 4)]) == []  # a lone token predicts nothing


def test_lm_term_gradient_is_the_mean_nll():
    """The trainer's LM term equals lm_coef × the mean next-token NLL over all predicted tokens, whatever the
    micro-batch size (a slow reference: one sequence at a time, summed)."""
    model = tiny_llama(40)
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]

    class Tok:
        pad_token_id = 0

    grads = []
    for size in (1, 2, 8):
        cfg = load_config("micro", ["model.dtype=float32", f"rl.micro_batch_size={size}", "rl.lm_coef=0.5"])
        trainer = RLTrainer.__new__(RLTrainer)
        trainer.rl, trainer.policy, trainer.tokenizer = cfg.rl, model, Tok()
        trainer.device, trainer.autocast, trainer.work = torch.device("cpu"), None, {}
        model.zero_grad()
        trainer.lm_term(seqs)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    total = 0.0
    for s in seqs:
        logits = model(input_ids=torch.tensor([s[:-1]])).logits[0]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum")
    (0.5 * total / sum(len(s) - 1 for s in seqs)).backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for g in grads:
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
