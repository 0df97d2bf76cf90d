"""The measured effect of the released offline-BC optimisation on a CPU-sized task (docs/parity.md, 2d/4b).

Breakout frames logged by a rule that reads the screen (keep the paddle near the middle, 10% random), two
runs of 3,000 transitions in DQN-Replay format, ingested; BC on run 1 with the tiny preset's frozen random
backbone, held-out accuracy on run 2 and the raw score of the cloned policy (eval/id.yaml's env and epsilon,
8 episodes of at most 2,000 steps). Augmentation is off: the rule turns on 1-2 pixels, which the +-4 pixel
shift hides. Four settings x 3 seeds:

    released        warm-up cosine 1e-4 -> 1e-3 -> 1e-4, clip 0.5, N(0, 1) head   (our default)
    torch head      the same with nn.Linear's default head
    constant lr     N(0, 1) head, constant 1e-3, no clipping
    before          nn.Linear head, constant 1e-3, no clipping                  (our earlier default)

    .venv/bin/python -m bench.bc_parity [--steps 600] [--seeds 0 1 2] [--out bench/out/bc_parity.json]
"""

from __future__ import annotations

import atari_pb  # noqa: F401  (first: OMP_WAIT_POLICY before torch loads)

# isort: split
import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atari_pb.data.collect import invalid_range
from atari_pb.data.ingest import ingest
from atari_pb.data.replay_format import replay_file, write_gz_npy
from atari_pb.envs.atari import EnvConfig, make_vector_env
from atari_pb.eval.protocol import load_eval_config
from atari_pb.eval.rollout import evaluate
from atari_pb.finetune.offline_bc import load_offline_bc_config, train_offline_bc
from atari_pb.games import get_game
from atari_pb.models.encoder import Encoder, ModelConfig

GAME = get_game("breakout")
SETTINGS = {
    "released": {},
    "torch head": {"head_init": "torch"},
    "constant lr": {"warmup": 0.0, "min_lr_scale": 1.0, "grad_clip": 0.0},
    "before": {"head_init": "torch", "warmup": 0.0, "min_lr_scale": 1.0, "grad_clip": 0.0},
}


def screen_rule(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    row = obs[:, -1, 76, 4:80] > 60
    centre = np.where(row.any(1), (row * np.arange(4, 80)).sum(1) / np.maximum(row.sum(1), 1), 42)
    action = np.where(centre < 42, 2, 3)
    return np.where(rng.random(len(action)) < 0.1, rng.integers(0, 4, len(action)), action).astype(np.int32)


def logged_shards(root: Path, steps: int) -> Path:
    rng = np.random.default_rng(0)
    for run in (1, 2):
        env, obs = make_vector_env(GAME, 1, EnvConfig(), seed=run)
        frames, actions, rewards, terminals = [], [], [], []
        for _ in range(steps):
            a = screen_rule(obs, rng)
            frames.append(obs[0, -1])
            obs, r, term, trunc, _ = env.step(a)
            actions.append(a[0]), rewards.append(np.sign(r[0])), terminals.append(term[0] | trunc[0])
        env.close()
        arrays = {
            "observation": np.stack(frames),
            "action": np.array(actions, np.int32),
            "reward": np.array(rewards, np.float32),
            "terminal": np.array(terminals, np.uint8),
            "invalid_range": invalid_range(0, steps),
            "add_count": np.array(steps, np.int64),
        }
        replay_file(root, GAME.replay_name, run, "observation", 50).parent.mkdir(parents=True)
        for field, array in arrays.items():
            write_gz_npy(replay_file(root, GAME.replay_name, run, field, 50), array)
    shards = root / "shards"
    assert not ingest(root, shards, [GAME], [1, 2], [50], steps).errors
    return shards


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="gradient steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--transitions", type=int, default=3000)
    p.add_argument("--out", type=Path, default=Path("bench/out/bc_parity.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ev = load_eval_config("id", ["games=[breakout]"])
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        shards = logged_shards(Path(tmp), args.transitions)
        base = load_offline_bc_config().train
        for seed in args.seeds:
            for name, change in SETTINGS.items():
                cfg = dataclasses.replace(
                    base,
                    max_steps=args.steps,
                    batch_size=64,
                    augment=False,
                    holdout_runs=[2],
                    loader_threads=0,
                    **change,
                )
                torch.manual_seed(seed)
                encoder = Encoder(ModelConfig(preset="tiny"))
                t0 = time.perf_counter()
                r = train_offline_bc(GAME, encoder, shards, 4, cfg, seed, progress=False)
                env = dataclasses.replace(ev.env, horizon=2000)
                score = evaluate(
                    r.agent.act, GAME, episodes=8, num_envs=8, epsilon=ev.epsilon, seed=10_000 + seed, env=env
                )
                results[name].append(
                    {
                        "seed": seed,
                        "holdout_accuracy": r.holdout_accuracy,
                        "score": score.mean,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name:12s} seed {seed}: held-out accuracy {r.holdout_accuracy:.3f}, score {score.mean:.2f}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "results": results}, indent=1))
    print("\n| setting | held-out accuracy (mean ± s.e.) | score (mean ± s.e.) |\n|---|---|---|")
    for name, rows in results.items():
        acc, score = (np.array([row[k] for row in rows]) for k in ("holdout_accuracy", "score"))
        se = lambda x: x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0  # noqa: E731
        print(f"| {name} | {acc.mean():.3f} ± {se(acc):.3f} | {score.mean():.2f} ± {se(score):.2f} |")
    return results


if __name__ == "__main__":
    main()
