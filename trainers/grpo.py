"""Reference GRPO trainer (DeepSeekMath; TRL semantics).

Each generation batch: for every prompt, ``num_generations`` completions are
sampled **in inference mode** (the mode users generate in, which takes fused
kernels) with a KV cache; rewards are scored and turned into group
advantages; then ``num_iterations`` optimizer steps are taken on that batch,
each **in training mode**.  The round trip between the two modes, every step,
is the point of this trainer as a fixture.
"""

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from .batching import pad_sequences, token_logps
from .core import TrainConfig, Trainer, TrainerSpec
from .grpo_loss import LOSS_TYPES, SCALE_REWARDS, group_advantages, grpo_loss


@dataclass
class GRPOConfig(TrainConfig):
    batch_size: int = field(default=2, metadata={"help": "Prompts per micro-batch."})
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt (G)."})
    max_completion_length: int = field(default=16, metadata={"help": "Tokens generated at most."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 is greedy."})
    beta: float = field(default=0.0, metadata={"help": "k3 KL weight to the reference (TRL: 0.0)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range eps_low."})
    epsilon_high: float = field(default=None, metadata={"help": "Upper clip range; None: epsilon."})
    loss_type: str = field(default="grpo", metadata={"help": "grpo, bnpo, dr_grpo or dapo.", "choices": LOSS_TYPES})
    scale_rewards: str = field(default="group", metadata={"help": "group, batch or none.", "choices": SCALE_REWARDS})
    num_iterations: int = field(default=1, metadata={"help": "Optimizer steps per generation batch (mu)."})
    rollout_rng: str = field(default="stream", metadata={"help": (
        "stream: one RNG stream over the generation batch; per-prompt: each prompt's group drawn from its "
        "own key (seed, generation batch, the prompt's place in the step), so completions do not depend on "
        "which rank or micro-batch generates them. Data parallelism needs per-prompt."),
        "choices": ("stream", "per-prompt")})


def generate_groups(model, prompts, config, eos_id: int, keys=None):
    """Sample ``num_generations`` completions of each prompt with mlx-lm's KV cache.

    Prompts of the same length are generated in one batch (their groups side
    by side, no padding); returns one list of token-id lists per prompt, each
    ending at (and including) eos when eos was sampled.  The caller sets the
    model's mode.  ``keys``: one PRNG key per prompt, its group drawn from it
    (else one draw over the batch from the global random state).
    """
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out = [None] * len(prompts)
    for members in by_length.values():
        member_keys = None if keys is None or keys[0] is None else [keys[i] for i in members]
        groups = _generate_batch(model, [prompts[i] for i in members], config, eos_id, member_keys)
        for i, group in zip(members, groups):
            out[i] = group
    return out


def _sample(logits, config, keys):
    if config.temperature == 0:
        return mx.argmax(logits, axis=-1), keys
    scaled = logits.astype(mx.float32) / config.temperature
    if keys is None:
        return mx.random.categorical(scaled), None
    G, draws, next_keys = config.num_generations, [], []
    for j, key in enumerate(keys):  # each prompt's group from its own key chain
        key, sub = mx.random.split(key)
        draws.append(mx.random.categorical(scaled[j * G : (j + 1) * G], key=sub))
        next_keys.append(key)
    return mx.concatenate(draws), next_keys


def _generate_batch(model, prompts, config, eos_id, keys):
    # Imported here: importing mlx-lm costs a process about a second (four on a GPU host, through
    # transformers), and the harness command imports the trainers without ever generating.
    from mlx_lm.models.cache import make_prompt_cache

    G = config.num_generations
    cache = make_prompt_cache(model)
    logits = model(mx.array([p for p in prompts for _ in range(G)]), cache=cache)[:, -1, :]
    tokens, done = [], mx.zeros((len(prompts) * G,), dtype=mx.bool_)
    for _ in range(config.max_completion_length):
        nxt, keys = _sample(logits, config, keys)
        tokens.append(nxt)
        done = done | (nxt == eos_id)
        mx.eval(nxt, done)
        if bool(done.all()):
            break
        logits = model(nxt[:, None], cache=cache)[:, -1, :]
    seqs = mx.stack(tokens, axis=1).tolist()
    seqs = [s[: s.index(eos_id) + 1] if eos_id in s else s for s in seqs]
    return [seqs[j * G : (j + 1) * G] for j in range(len(prompts))]


class GRPOTrainer(Trainer):
    def __init__(self, spec, model, config, tokenizer, reference_model=None, reward_funcs=None, group=None):
        if not reward_funcs:
            raise ValueError("grpo: at least one reward function is needed, as (callable, weight) pairs")
        if config.rollout_rng not in ("stream", "per-prompt"):
            raise ValueError(f"grpo: unknown rollout_rng {config.rollout_rng!r}; expected 'stream' or 'per-prompt'")
        if group is not None and group.size() > 1 and config.rollout_rng != "per-prompt":
            raise ValueError("grpo: data-parallel rollouts need rollout_rng='per-prompt' (one RNG stream "
                             "cannot be split over ranks)")
        self.reward_funcs = list(reward_funcs)
        self.tokenizer = tokenizer
        spec = spec if config.beta > 0 else TrainerSpec(**{**spec.__dict__, "needs_reference": False})
        super().__init__(spec, model, config, tokenizer, reference_model, group=group)
        self._rows, self._batches, self._rollout_metrics = None, None, None
        self._generation = 0  # generation batches so far (keys of per-prompt rollouts)

    @property
    def steps_per_batch(self):
        return self.config.num_iterations

    def _prompt_keys(self, first: int):
        """PRNG keys of consecutive prompts of this generation batch from global index ``first``
        (None for ``rollout_rng='stream'``, which draws from the global random state)."""
        index = first
        while True:
            if self.config.rollout_rng == "stream":
                yield None
            else:
                seed = np.random.SeedSequence([self.config.seed, self._generation, index]).generate_state(1)[0]
                yield mx.random.key(int(seed))
            index += 1

    def rollout(self, micro_rows):
        """Generate, score and prepare every micro-batch of one generation batch.

        ``micro_rows`` is the whole generation batch.  Under data parallelism
        this rank generates the groups of its shard of the prompts (whole
        groups), and the rewards are gathered, so advantages and metrics are
        those of the whole batch.
        """
        cfg, model, tok, dp = self.config, self.model, self.tokenizer, self.dp
        self._generation += 1
        first = dp.rank * (sum(len(rows) for rows in micro_rows) // dp.size)  # global index of our first prompt
        micro_rows = dp.shard(micro_rows)
        keys = self._prompt_keys(first)
        was_training = model.training
        model.eval()  # generate in inference mode, as users do
        eos = tok.eos_token_id
        prompts = [r["prompt_ids"] for rows in micro_rows for r in rows]
        flat = iter(generate_groups(model, prompts, cfg, eos, [next(keys) for _ in prompts]))
        groups = [[next(flat) for _ in rows] for rows in micro_rows]
        model.train(was_training)

        all_rows = [r for rows in micro_rows for r in rows]
        all_completions = [c for g in groups for group in g for c in group]
        texts = [tok.decode([t for t in c if t != eos]) for c in all_completions]
        per_func = []
        for fn, weight in self.reward_funcs:
            per_func.append(
                [fn(row["prompt"], text, row) for row, text in zip(_repeat(all_rows, cfg.num_generations), texts)]
            )
        lengths = [len(c) for c in all_completions]
        if dp.active:  # the whole batch's values, in rank order (the single-process order)
            per_func = [dp.all_gather(mx.array(v, dtype=mx.float32)).tolist() for v in per_func]
            lengths = dp.all_gather(mx.array(lengths)).tolist()
        rewards = sum(w * mx.array(v, dtype=mx.float32) for (_, w), v in zip(self.reward_funcs, per_func))
        advantages, zero_std = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        if dp.active:
            n = len(all_completions)
            advantages = advantages[dp.rank * n : (dp.rank + 1) * n]

        # The whole batch's completions, in rank order, as the metrics are the whole batch's.
        self.last_completions = _gathered(dp, all_completions, lengths) if dp.active else all_completions
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": mx.std(rewards.reshape(-1, cfg.num_generations), axis=1, ddof=1).mean().item(),
            "frac_reward_zero_std": zero_std.astype(mx.float32).mean().item(),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/min_length": float(min(lengths)),
            "completions/max_length": float(max(lengths)),
        }
        for (fn, _), values in zip(self.reward_funcs, per_func):
            metrics[f"rewards/{getattr(fn, '__name__', 'reward')}/mean"] = sum(values) / len(values)

        batches, offset = [], 0
        for rows, group in zip(micro_rows, groups):
            completions = [c for g in group for c in g]
            prompts = [p for p in _repeat([r["prompt_ids"] for r in rows], cfg.num_generations)]
            batch = pad_sequences(prompts, completions, tok.pad_token_id, buckets=cfg.compile)
            batch["advantages"] = advantages[offset : offset + len(completions)]
            offset += len(completions)
            batches.append(batch)
        # Old-policy log-probs: the same (training-mode) numerical path as the
        # gradient pass, so the first iteration's ratio is exactly 1.
        if cfg.num_iterations > 1:
            model.train()
            for b in batches:
                b["old_logps"] = mx.stop_gradient(token_logps(model, b["inputs"], b["targets"]))
            model.train(was_training)
        if self.reference is not None:
            with self.reference.active() as ref_model:
                for b in batches:
                    b["ref_logps"] = mx.stop_gradient(token_logps(ref_model, b["inputs"], b["targets"]))
        mx.eval([{k: v for k, v in b.items() if isinstance(v, mx.array)} for b in batches])
        return batches, metrics

    def step(self, micro_rows):
        if micro_rows is not self._rows:
            self._rows = micro_rows
            self._batches, self._rollout_metrics = self.rollout(micro_rows)
        batches, dp = self._batches, self.dp
        stats = {
            "num_sequences": dp.count(sum(b["inputs"].shape[0] for b in batches)),
            "num_tokens": dp.all_sum(sum(b["mask"].sum() for b in batches)),
        }
        if dp.active:
            mx.eval(stats["num_tokens"])
        record = self.optimize(batches, [None] * len(batches), stats)
        record.update(self._rollout_metrics)
        return record


def _gathered(dp, sequences, lengths):
    """Every rank's ``sequences`` (token lists), in rank order; ``lengths`` are already every rank's."""
    width = max(lengths)
    padded = np.zeros((len(sequences), width), dtype=np.int32)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = seq
    rows = dp.all_gather(mx.array(padded)).tolist()
    return [row[:n] for row, n in zip(rows, lengths)]


def _repeat(items, n):
    return [x for x in items for _ in range(n)]


def objective(model, batch, ref, stats, config):
    logps = token_logps(model, batch["inputs"], batch["targets"])
    old = batch["old_logps"] if "old_logps" in batch else mx.stop_gradient(logps)
    return grpo_loss(
        logps,
        old,
        batch["advantages"],
        batch["mask"],
        ref_logps=batch.get("ref_logps"),
        beta=config.beta,
        epsilon_low=config.epsilon,
        epsilon_high=config.epsilon if config.epsilon_high is None else config.epsilon_high,
        loss_type=config.loss_type,
        max_completion_length=config.max_completion_length,
        num_sequences=stats["num_sequences"],
        num_tokens=stats["num_tokens"],
    )


SPEC = TrainerSpec(
    name="grpo",
    config_class=GRPOConfig,
    collate=None,
    objective=objective,
    needs_reference=True,
    trainer_class=GRPOTrainer,
)
