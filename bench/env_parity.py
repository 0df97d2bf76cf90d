"""The released-parity env (atari_pb/envs/atari.py defaults) against ale-py's vector env: speed, and the
effect of each env difference on the evaluation scores of fixed policies.

    .venv/bin/python bench/env_parity.py speed [--seconds 5] [--repeats 3] [--games breakout pong]
    .venv/bin/python bench/env_parity.py scores [--episodes 30] [--horizon 1000] [--games ...] [--json F]

speed: agent steps per second (wall) and CPU microseconds per agent step (all threads) of 8 envs stepped
with uniform random actions, no policy: "previous" is this project's env before the parity change
(ale-py's C++ AtariVectorEnv, EnvConfig(**ALE_VECTOR_SETTINGS)), "released" the default env (one
ALEInterface per env, frame by frame, the released rules), "previous+linear" ale-py's env handing over
full screens that are resized with INTER_LINEAR here, "released, 2 procs" the released engine split over
2 worker processes (num_threads=2; CPU time counts this process only there). Configurations alternate
within each repeat, the median repeat is reported: the machine may be shared.

scores: `evaluate` (atari_pb/eval/rollout.py) of fixed policies on the released env and on the released
env with one option switched back to ale-py's (or all of them: "previous"), mean +- standard error over
`episodes` episodes (from `--num-envs` envs seeded 0, 1, ..., the same for every variant), each cut at
`horizon` agent steps. Policies: random (epsilon 1); always one action (by name: FIRE, or UP in
Freeway), epsilon 0.001; obs-hash (the sum of the stack's pixels modulo the number of actions, epsilon
0.001), which reads every pixel, so it is the only one the resize and the cleared stacks can change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atari_pb.envs.atari import (  # noqa: E402
    ALE_VECTOR_SETTINGS,
    RELEASED_NOOP_LESS_GAMES,
    EnvConfig,
    action_set,
    make_vector_env,
)
from atari_pb.eval.rollout import evaluate  # noqa: E402
from atari_pb.games import get_game  # noqa: E402

SPEED_CONFIGS = {  # name: (env, num_threads)
    "previous": (EnvConfig(**ALE_VECTOR_SETTINGS), 0),
    "released": (EnvConfig(), 0),
    "released, 2 procs": (EnvConfig(), 2),
    "previous+linear": (EnvConfig(**{**ALE_VECTOR_SETTINGS, "resize": "linear"}), 0),
}
ALWAYS = {"freeway": "UP"}  # the action a constant policy plays; FIRE elsewhere


def speed(games: list[str], seconds: float, repeats: int, num_envs: int = 8) -> dict:
    out: dict = {}
    for game in games:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in SPEED_CONFIGS}
        for _ in range(repeats):
            for name, (cfg, threads) in SPEED_CONFIGS.items():
                env, _ = make_vector_env(get_game(game), num_envs, cfg, seed=0, num_threads=threads)
                rng = np.random.default_rng(0)
                n = int(env.single_action_space.n)
                steps, wall, cpu = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - wall < seconds:
                    env.step(rng.integers(0, n, num_envs))
                    steps += num_envs
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                env.close()
                runs[name].append((steps / wall, 1e6 * cpu / steps))
        out[game] = {
            name: {
                "steps_per_s": statistics.median(r[0] for r in rs),
                "cpu_us_per_step": statistics.median(r[1] for r in rs),
                "repeats": rs,
            }
            for name, rs in runs.items()
        }
        for name, r in out[game].items():
            print(
                f"{game:10s} {name:18s} {r['steps_per_s']:7.0f} steps/s  {r['cpu_us_per_step']:5.0f} CPU us/step"
            )
    return out


def variants(game: str, horizon: int) -> dict[str, EnvConfig]:
    base = {"horizon": horizon}
    v = {
        "released": EnvConfig(**base),
        "fire_reset=true": EnvConfig(**base, fire_reset=True),
        "noop=ale": EnvConfig(**base, noop="ale"),
        "life_loss=none": EnvConfig(**base, life_loss="none"),
        "resize=area": EnvConfig(**base, resize="area"),
    }
    if game in RELEASED_NOOP_LESS_GAMES:
        v["action_set=minimal"] = EnvConfig(**base, action_set="minimal")
    v["previous"] = EnvConfig(**{**ALE_VECTOR_SETTINGS, **base})
    return v


def constant_policy(game: str, cfg: EnvConfig):
    from ale_py import Action

    ale_id = Action[ALWAYS.get(game, "FIRE")].value
    k = int(np.flatnonzero(action_set(game, cfg.action_set) == ale_id)[0])
    return lambda obs: torch.full((len(obs),), k, dtype=torch.int64)


def hash_policy(game: str, cfg: EnvConfig):
    n = len(action_set(game, cfg.action_set))
    return lambda obs: torch.from_numpy(obs.numpy().reshape(len(obs), -1).sum(1, dtype=np.int64) % n)


POLICIES = {
    "random": (hash_policy, 1.0),  # epsilon 1: the policy is never called
    "always": (constant_policy, 0.001),
    "obs-hash": (hash_policy, 0.001),
}


def scores(games: list[str], episodes: int, horizon: int, num_envs: int) -> dict:
    out: dict = {}
    for game in games:
        for pname, (make, eps) in POLICIES.items():
            for vname, cfg in variants(game, horizon).items():
                if vname == "resize=area" and pname != "obs-hash":
                    continue  # a policy that ignores the frames plays the same game whatever the resize
                t0 = time.perf_counter()
                r = evaluate(
                    make(game, cfg), game, episodes=episodes, num_envs=num_envs, epsilon=eps, env=cfg
                )
                mean, se = float(r.scores.mean()), float(r.scores.std(ddof=1) / np.sqrt(len(r.scores)))
                row = {"mean": mean, "se": se, "mean_length": float(r.lengths.mean()), "seconds": r.seconds}
                out.setdefault(game, {}).setdefault(pname, {})[vname] = row
                print(
                    f"{game:10s} {pname:8s} {vname:18s} {mean:8.2f} +- {se:6.2f}  "
                    f"(length {row['mean_length']:6.0f}, {time.perf_counter() - t0:5.0f} s)",
                    flush=True,
                )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "scores", "all"])
    p.add_argument("--games", nargs="+", default=None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--horizon", type=int, default=1000)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    o = p.parse_args()
    torch.set_num_threads(1)
    result: dict = {}
    if o.what in ("speed", "all"):
        result["speed"] = speed(o.games or ["breakout", "pong"], o.seconds, o.repeats)
    if o.what in ("scores", "all"):
        games = o.games or ["breakout", "pong", "boxing", "freeway", "basic_math"]
        result["scores"] = scores(games, o.episodes, o.horizon, o.num_envs)
    if o.json:
        o.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
