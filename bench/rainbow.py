"""Rainbow fine-tuning throughput on CPU with the tiny preset: agent steps/s and updates/s of the real loop
(`train_rainbow`), against its parts measured alone in the same run.

    .venv/bin/python -m bench.rainbow [--quick] [--torch-threads N] [--steps N] [--e2e-steps N]

Rows, all on Breakout with finetune/rainbow.yaml's env (no sticky actions, fire reset) and agent (C51, double
Q, 10-step returns, augmentation of obs and next_obs, EMA target), one env (the reference), batch 32:
  raw env           make_vector_env stepping with random actions: no policy, no replay, no learning;
  acting loop       train_rainbow with train.updates_per_step=0 and epsilon 0.01 throughout: the greedy
                    action comes from the agent's network on almost every step, frames go to the replay;
  Rainbow loop      train_rainbow with the reference replay ratio (2 updates per agent step), measured after
                    learning starts, epsilon 0.01 (its value once the decay is over), frozen backbone; and
                    the e2e baseline (agent.freeze_backbone=false, the backbone trained too);
  agent.update      the isolated update rate: RainbowAgent.update on batches sampled from a replay filled
                    by the acting loop (sampling and priority updates timed apart), measured just before
                    and just after each Rainbow loop so that loop / isolated compares like with like.
Inside the loops, the calls to env.step, agent.act, replay.add, replay.sample, agent.update and
replay.update_priorities are timed by thin wrappers (patched in for the run, about a microsecond a call), so
the rest of each loop's time is its own Python. Rates count the iterations between two env.step calls, so
making the env and the agent, and the first few updates (warm-up), are excluded. The encoder has random
weights: the cost does not depend on them. Results: bench/out/rainbow.json.
"""

from __future__ import annotations

import atari_pb  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)

# isort: split
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import finish, log, machine_info, med, table

GAME = "breakout"
NUM_ENVS = 1  # the reference
BATCH = 32
UPDATES_PER_STEP = 2
EPSILON = 0.01  # eps_end of the reference: the agent's network picks 99% of the actions
WARM = 3  # loop iterations after the first update (or the first step) left out of the timing
PARTS = ("env.step", "agent.act", "replay.add", "replay.sample", "agent.update", "replay.update_priorities")


# ------------------------------------------------------------------------------------ timing the loop
class Probe:
    """(start, seconds) of every call the Rainbow loop makes to its parts, recorded by thin wrappers."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = {k: [] for k in PARTS}
        self.replay = None  # the loop's PrioritizedReplay, kept to feed the isolated updates

    def wrap(self, name: str, fn: Callable) -> Callable:
        calls, clock = self.calls[name], time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            out = fn(*args, **kwargs)
            calls.append((t0, clock() - t0))
            return out

        return timed

    def window(self, first: int) -> dict:
        """Rates and per-part time over the loop iterations from env.step call `first` to the last one."""
        steps = self.calls["env.step"]
        if len(steps) - 1 - first < 2:
            raise RuntimeError(f"too few loop iterations after the warm-up ({len(steps)} in all)")
        t_a, t_b = steps[first][0], steps[-1][0]
        seconds, agent_steps = t_b - t_a, NUM_ENVS * (len(steps) - 1 - first)
        inside = {k: [d for t, d in v if t_a <= t < t_b] for k, v in self.calls.items()}
        part_s = {k: sum(v) for k, v in inside.items()}
        return {
            "steps_per_s": agent_steps / seconds,
            "updates_per_s": len(inside["agent.update"]) / seconds,
            "agent_steps": agent_steps,
            "updates": len(inside["agent.update"]),
            "seconds": seconds,
            "ms_per_step": {k: v / agent_steps * 1e3 for k, v in part_s.items()},
            "rest_ms_per_step": (seconds - sum(part_s.values())) / agent_steps * 1e3,
            "ms_per_call": {k: sum(v) / len(v) * 1e3 for k, v in inside.items() if v},
            "calls": {k: len(v) for k, v in inside.items()},
        }


@contextlib.contextmanager
def probed() -> Iterator[Probe]:
    """Patch timing wrappers into RainbowAgent, PrioritizedReplay and the env train_rainbow makes."""
    import atari_pb.finetune.rainbow as rb
    from atari_pb.finetune.replay import PrioritizedReplay

    probe = Probe()
    make_env = rb.make_vector_env
    patched = [
        (rb.RainbowAgent, "act", "agent.act"),
        (rb.RainbowAgent, "update", "agent.update"),
        (PrioritizedReplay, "add", "replay.add"),
        (PrioritizedReplay, "sample", "replay.sample"),
        (PrioritizedReplay, "update_priorities", "replay.update_priorities"),
    ]
    saved = [(cls, attr, cls.__dict__[attr]) for cls, attr, _ in patched]

    def make_vector_env(*args, **kwargs):
        env, obs = make_env(*args, **kwargs)
        env.step = probe.wrap("env.step", env.step)  # this instance only
        return env, obs

    add = probe.wrap("replay.add", PrioritizedReplay.add)

    def add_keeping(self, *args, **kwargs):
        probe.replay = self
        return add(self, *args, **kwargs)

    try:
        for cls, attr, name in patched:
            setattr(cls, attr, add_keeping if name == "replay.add" else probe.wrap(name, getattr(cls, attr)))
        rb.make_vector_env = make_vector_env
        yield probe
    finally:
        rb.make_vector_env = make_env
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


def rainbow_cfg(extra: list[str]):
    from atari_pb.finetune.rainbow import load_rainbow_config

    return load_rainbow_config(
        [
            "train.device=cpu",
            f"train.num_envs={NUM_ENVS}",
            f"train.batch_size={BATCH}",
            f"train.eps_start={EPSILON}",
            f"train.eps_end={EPSILON}",
            "train.log_every=1000000",
            *extra,
        ]
    )


def run_loop(encoder, cfg) -> tuple[dict, Probe]:
    """train_rainbow under the probe; the window starts WARM iterations after the first update (or step)."""
    from atari_pb.finetune.rainbow import train_rainbow
    from atari_pb.games import get_game

    with probed() as probe:
        t0 = time.perf_counter()
        result = train_rainbow(get_game(GAME), encoder, cfg, seed=0, progress=False)
        wall = time.perf_counter() - t0
    steps = probe.calls["env.step"]
    first = 0
    if probe.calls["agent.update"]:
        t_update = probe.calls["agent.update"][0][0]
        first = next(k for k, (t, _) in enumerate(steps) if t > t_update)
    w = probe.window(first + WARM)
    w.update(wall_s=wall, loop_s=result.seconds, total_steps=result.env_steps, total_updates=result.updates)
    return w, probe


# ----------------------------------------------------------------------------------------- baselines
def raw_env(steps: int, env_cfg) -> float:
    """Agent steps/s of the same vector env stepped with random actions, nothing else."""
    from atari_pb.envs.atari import make_vector_env
    from atari_pb.games import get_game

    env, _ = make_vector_env(get_game(GAME), NUM_ENVS, env_cfg, 0)
    rng = np.random.default_rng(0)
    actions = rng.integers(int(env.single_action_space.n), size=(steps, NUM_ENVS))
    try:
        for a in actions[:WARM]:
            env.step(a)
        t0 = time.perf_counter()
        for a in actions[WARM:]:
            env.step(a)
        return NUM_ENVS * (steps - WARM) / (time.perf_counter() - t0)
    finally:
        env.close()


def make_agent(encoder, agent_cfg, num_actions: int):
    from atari_pb.finetune.rainbow import RainbowAgent

    torch.manual_seed(0)
    return RainbowAgent(encoder, num_actions, agent_cfg, seed=0, device="cpu")


def isolated_updates(encoder, agent_cfg, replay, num_actions: int, updates: int) -> dict:
    """agent.update alone on batches sampled from `replay`, the loop's sample -> update -> priorities
    sequence with each call timed apart; a fresh agent, its first WARM updates left out."""
    agent = make_agent(encoder, agent_cfg, num_actions)
    times: dict[str, list[float]] = {"replay.sample": [], "agent.update": [], "replay.update_priorities": []}
    clock = time.perf_counter
    for k in range(WARM + updates):
        t0 = clock()
        batch = replay.sample(BATCH, 0.4)
        t1 = clock()
        loss, _ = agent.update(batch, batch.weights)
        t2 = clock()
        replay.update_priorities(batch.indices, loss.clamp_min(1e-5).cpu().numpy())
        t3 = clock()
        if k >= WARM:
            for name, d in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[name].append(d)
    return {
        "updates_per_s": updates / sum(times["agent.update"]),
        "ms_per_call": {k: sum(v) / len(v) * 1e3 for k, v in times.items()},
        "updates": updates,
    }


def act_alone(encoder, agent_cfg, replay, num_actions: int, reps: int) -> float:
    """ms of agent.act on one stack (the loop's call with one env), median of `reps`."""
    agent = make_agent(encoder, agent_cfg, num_actions)
    obs = torch.from_numpy(replay.sample(1, 0.4).obs)
    agent.act(obs)
    return med([_timed(lambda: agent.act(obs).cpu().numpy()) for _ in range(reps)]) * 1e3


def act_spinning(reps: int) -> dict[str, float]:
    """agent.act ms on one stack at 1 and 2 torch threads, in a child process with OMP_WAIT_POLICY=ACTIVE
    (OpenMP reads it once, when torch loads), against this process's PASSIVE."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.rainbow", "--act-only", str(reps)],
        env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def act_only(reps: int) -> None:
    """The child of act_spinning: print {threads: ms} for agent.act on one (random) stack."""
    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game
    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    agent = make_agent(
        Encoder(ModelConfig(preset="tiny")), rainbow_cfg([]).agent, num_actions(get_game(GAME))
    )
    obs = torch.randint(0, 256, (1, 4, 84, 84), dtype=torch.uint8)
    ms = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        agent.act(obs)
        ms[str(threads)] = med([_timed(lambda: agent.act(obs).cpu().numpy()) for _ in range(reps)]) * 1e3
    print(json.dumps(ms))


def inside_update(encoder, agent_cfg, replay, num_actions: int, reps: int) -> dict:
    """ms (fastest of `reps`, interleaved) of a whole frozen update and of its pieces on one batch: the
    augmentation of obs and next_obs (2 x 32 stacks), the frozen backbone's forward on them, and a backbone
    forward + backward on 32 (the extra work of the e2e variant's online pass)."""
    from atari_pb.augment import BatchRandom, augment

    agent = make_agent(encoder, agent_cfg, num_actions)
    batch = replay.sample(BATCH, 0.4)
    pair = torch.cat([torch.from_numpy(batch.obs), torch.from_numpy(batch.next_obs)])
    aug = augment(pair, BatchRandom.for_batch(0, 0, 2 * BATCH))
    backbone = agent.backbone
    train_copy = make_agent(encoder, rainbow_cfg(["agent.freeze_backbone=false"]).agent, num_actions).backbone

    def fwd_bwd():
        train_copy.zero_grad(set_to_none=True)
        train_copy(aug[:BATCH]).sum().backward()

    def fwd():
        with torch.no_grad():
            backbone(aug)

    pieces = {
        "update": lambda: agent.update(batch, batch.weights),
        "augment_2x32": lambda: augment(pair, BatchRandom.for_batch(0, 1, 2 * BATCH)),
        "backbone_forward_2x32": fwd,
        "backbone_forward_backward_32": fwd_bwd,
    }
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for fn in pieces.values():
        fn()
    for _ in range(reps):
        for name, fn in pieces.items():
            times[name].append(_timed(fn))
    return {name: min(t) * 1e3 for name, t in times.items()}  # the fastest: the least disturbed


def by_thread_count(
    encoder, agent_cfgs: dict, replay, num_actions: int, updates: dict, act_reps: int
) -> dict:
    """agent.update (frozen and e2e) and agent.act alone on 1 and 2 torch threads, in 2 rounds that
    alternate the thread counts, so that both see the same state of the machine."""
    spent = {t: {v: [0, 0.0] for v in agent_cfgs} for t in (1, 2)}
    act = {t: [] for t in (1, 2)}
    for _ in range(2):
        for t in (1, 2):
            torch.set_num_threads(t)
            for v, cfg in agent_cfgs.items():
                n = max(1, updates[v] // 2)
                r = isolated_updates(encoder, cfg, replay, num_actions, n)
                spent[t][v][0] += n
                spent[t][v][1] += n / r["updates_per_s"]
            act[t].append(act_alone(encoder, agent_cfgs["frozen"], replay, num_actions, act_reps // 2))
    return {str(t): {**{v: n / s for v, (n, s) in spent[t].items()}, "act_ms": med(act[t])} for t in (1, 2)}


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy, CPU seconds this process and its finished children
    have used), to tell how much of the machine other work took during the run."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few dozen steps per row")
    p.add_argument(
        "--steps", type=int, help="agent steps timed in the frozen Rainbow loop (default 300; --quick 12)"
    )
    p.add_argument("--e2e-steps", type=int, help="agent steps timed in the e2e loop (default 120; --quick 6)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=2,
        help="torch intra-op threads of every row (default 2); the full run also times agent.update and "
        "agent.act alone on 1 and 2 threads",
    )
    p.add_argument("--act-only", type=int, metavar="REPS", help=argparse.SUPPRESS)  # act_spinning's child
    args = p.parse_args(argv)
    if args.act_only:
        act_only(args.act_only)
        return {}
    q = args.quick
    loop_steps = {"frozen": args.steps or (12 if q else 300), "e2e": args.e2e_steps or (6 if q else 120)}
    iso_updates = {"frozen": 6 if q else 50, "e2e": 3 if q else 25}
    raw_steps, act_steps = (1000, 300) if q else (3000, 2000)
    learning_starts = 40 if q else 200
    threads = args.torch_threads
    torch.set_num_threads(threads)

    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game
    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    na = num_actions(get_game(GAME))
    base = rainbow_cfg([])
    agent_cfgs = {
        "frozen": base.agent,
        "e2e": rainbow_cfg(["agent.freeze_backbone=false"]).agent,
    }

    load_start, cpu_start = os.getloadavg(), cpu_seconds()
    t_start = time.perf_counter()
    log(f"raw env: {raw_steps:,} random steps")
    raw = [raw_env(raw_steps, base.env)]
    log(f"acting loop: {act_steps:,} steps, no updates")
    acting, probe = run_loop(
        encoder,
        rainbow_cfg(["train.updates_per_step=0", "train.learning_starts=0", f"train.env_steps={act_steps}"]),
    )
    replay = probe.replay
    raw.append(raw_env(raw_steps, base.env))
    log(
        f"acting loop: {acting['steps_per_s']:,.0f} agent steps/s; raw env {raw[0]:,.0f} and {raw[1]:,.0f} steps/s"
    )

    loops, iso = {}, {}
    for variant in ("frozen", "e2e"):
        n_iso = iso_updates[variant]
        log(f"{variant}: agent.update alone x {n_iso}")
        before = isolated_updates(encoder, agent_cfgs[variant], replay, na, n_iso)
        env_steps = learning_starts + NUM_ENVS * (WARM + 1) + loop_steps[variant]
        log(
            f"{variant}: Rainbow loop, {learning_starts} steps then {env_steps - learning_starts} with updates"
        )
        loops[variant], _ = run_loop(
            encoder,
            rainbow_cfg(
                [
                    f"train.updates_per_step={UPDATES_PER_STEP}",
                    f"train.learning_starts={learning_starts}",
                    f"train.env_steps={env_steps}",
                    f"agent.freeze_backbone={str(variant == 'frozen').lower()}",
                ]
            ),
        )
        log(f"{variant}: agent.update alone x {n_iso} again")
        after = isolated_updates(encoder, agent_cfgs[variant], replay, na, n_iso)
        iso[variant] = {"before": before, "after": after}
        lp = loops[variant]
        log(
            f"{variant}: loop {lp['steps_per_s']:.2f} agent steps/s, {lp['updates_per_s']:.2f} updates/s; "
            f"alone {before['updates_per_s']:.2f} and {after['updates_per_s']:.2f} updates/s"
        )

    log("inside an update")
    inside_reps = 3 if q else 9
    pieces = inside_update(encoder, agent_cfgs["frozen"], replay, na, inside_reps)
    act_reps = 20 if q else 100
    if not q and len(os.sched_getaffinity(0)) >= 2:
        log("agent.update and agent.act alone on 1 and 2 torch threads, alternating")
        by_threads = by_thread_count(encoder, agent_cfgs, replay, na, iso_updates, act_reps)
        torch.set_num_threads(threads)
        log("agent.act alone with OMP_WAIT_POLICY=ACTIVE (a child process)")
        for t, ms in act_spinning(act_reps).items():
            by_threads[t]["act_ms_active"] = ms
    else:  # the bracketing measurements, and agent.act on this run's thread count
        by_threads = {
            str(threads): {
                **{
                    v: med([x["before"]["updates_per_s"], x["after"]["updates_per_s"]])
                    for v, x in iso.items()
                },
                "act_ms": act_alone(encoder, agent_cfgs["frozen"], replay, na, act_reps),
            }
        }
    load_end, cpu_end = os.getloadavg(), cpu_seconds()
    wall = time.perf_counter() - t_start
    others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])) / (wall * os.cpu_count())

    # ------------------------------------------------------------------------------------ results
    raw_sps = med(raw)
    iso_ups = {v: med([x["before"]["updates_per_s"], x["after"]["updates_per_s"]]) for v, x in iso.items()}
    fr, e2e = loops["frozen"], loops["e2e"]
    values = {
        "acting_over_raw_env": acting["steps_per_s"] / raw_sps,
        "loop_over_isolated_updates_frozen": fr["updates_per_s"] / iso_ups["frozen"],
        "loop_over_isolated_updates_e2e": e2e["updates_per_s"] / iso_ups["e2e"],
        "e2e_over_frozen_loop_updates": e2e["updates_per_s"] / fr["updates_per_s"],
        "e2e_over_frozen_isolated_updates": iso_ups["e2e"] / iso_ups["frozen"],
        "loop_steps_over_raw_env_frozen": fr["steps_per_s"] / raw_sps,
        "update_share_of_loop_frozen": fr["ms_per_step"]["agent.update"] / (1e3 / fr["steps_per_s"]),
        "update_share_of_loop_e2e": e2e["ms_per_step"]["agent.update"] / (1e3 / e2e["steps_per_s"]),
        "raw_env_steps_per_s": raw_sps,
        "raw_env_steps_per_s_runs": raw,
        "acting_steps_per_s": acting["steps_per_s"],
        "loop_steps_per_s": {v: x["steps_per_s"] for v, x in loops.items()},
        "loop_updates_per_s": {v: x["updates_per_s"] for v, x in loops.items()},
        "isolated_updates_per_s": iso_ups,
        "isolated_updates_per_s_by_threads": by_threads,
        "inside_update_ms": pieces,
        "loops": {"acting": acting, **loops},
        "isolated": iso,
        "torch_threads": threads,
        "num_envs": NUM_ENVS,
        "batch_size": BATCH,
        "updates_per_step": UPDATES_PER_STEP,
        "n_step": base.agent.n_step,
        "learning_starts": learning_starts,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "other_processes_cpu_share": others,
    }

    def row(label: str, sps, ups, measured: str) -> list:
        return [label, sps, ups, sps / raw_sps if sps is not None else "-", measured]

    throughput = [
        row("raw env (random actions)", raw_sps, None, f"{len(raw)} x {raw_steps - WARM:,} steps"),
        row(
            f"acting loop (epsilon {EPSILON}, no updates)",
            acting["steps_per_s"],
            None,
            f"{acting['agent_steps']:,} steps",
        ),
    ]
    for v, x in loops.items():
        throughput.append(
            row(f"Rainbow loop, {v}", x["steps_per_s"], x["updates_per_s"], f"{x['updates']:,} updates")
        )
    for v in iso:
        throughput.append(
            row(
                f"agent.update alone, {v}",
                None,
                iso_ups[v],
                f"2 x {iso_updates[v]} updates (median of {iso[v]['before']['updates_per_s']:.2f} and "
                f"{iso[v]['after']['updates_per_s']:.2f})",
            )
        )
    split_rows = []
    for label, x in (("acting loop", acting), ("Rainbow loop, frozen", fr), ("Rainbow loop, e2e", e2e)):
        ms = x["ms_per_step"]
        split_rows.append([label, *(ms[k] for k in PARTS), x["rest_ms_per_step"], 1e3 / x["steps_per_s"]])
    iso_ms = iso["frozen"]["before"]["ms_per_call"]
    update_ms = pieces["update"]
    ratio_rows = [
        ["Rainbow loop updates/s / agent.update alone, frozen", values["loop_over_isolated_updates_frozen"]],
        ["Rainbow loop updates/s / agent.update alone, e2e", values["loop_over_isolated_updates_e2e"]],
        ["acting loop steps/s / raw env steps/s", values["acting_over_raw_env"]],
        ["Rainbow loop steps/s (frozen) / raw env steps/s", values["loop_steps_over_raw_env_frozen"]],
        ["e2e / frozen updates/s, in the loop", values["e2e_over_frozen_loop_updates"]],
        ["e2e / frozen updates/s, agent.update alone", values["e2e_over_frozen_isolated_updates"]],
        ["agent.update's share of the frozen loop's time", values["update_share_of_loop_frozen"]],
    ]
    tables = [
        table("Ratios (same run)", ["ratio", "value"], ratio_rows),
        table(
            f"Throughput ({threads} torch thread(s), {NUM_ENVS} env, batch {BATCH}, "
            f"{UPDATES_PER_STEP} updates per agent step)",
            ["row", "agent steps/s", "updates/s", "/ raw env", "measured"],
            throughput,
        ),
        table(
            "Where a loop's time goes: ms per agent step, timed inside the loop",
            ["loop", *PARTS, "rest of loop", "total"],
            split_rows,
        ),
        table(
            f"Inside a frozen update (agent.update alone on one batch: {update_ms:.0f} ms, fastest of {inside_reps}; "
            f"for comparison sampling a batch takes {iso_ms['replay.sample']:.2f} ms, updating its priorities "
            f"{iso_ms['replay.update_priorities']:.2f} ms)",
            ["piece", "ms", "/ frozen update"],
            [
                [
                    "augment obs + next_obs (2 x 32 stacks)",
                    pieces["augment_2x32"],
                    pieces["augment_2x32"] / update_ms,
                ],
                [
                    "frozen backbone forward (2 x 32 stacks, no grad)",
                    pieces["backbone_forward_2x32"],
                    pieces["backbone_forward_2x32"] / update_ms,
                ],
                [
                    "backbone forward + backward (32 stacks; e2e only)",
                    pieces["backbone_forward_backward_32"],
                    pieces["backbone_forward_backward_32"] / update_ms,
                ],
            ],
        ),
    ]
    if len(by_threads) > 1:
        tables.append(
            table(
                "agent.update and agent.act alone by torch intra-op threads (2 rounds alternating 1 and 2)",
                [
                    "threads",
                    "frozen updates/s",
                    "e2e updates/s",
                    "agent.act ms (1 stack)",
                    "agent.act ms, OMP_WAIT_POLICY=ACTIVE",
                ],
                [
                    [int(t), x["frozen"], x["e2e"], x["act_ms"], x.get("act_ms_active")]
                    for t, x in sorted(by_threads.items())
                ],
            )
        )
    result = {
        "name": "rainbow",
        "quick": q,
        "machine": machine_info(),
        "setup": [
            f"Game: {GAME}, finetune/rainbow.yaml's env (frame skip 4, 4-frame stacks, no sticky actions, fire "
            f"reset) and agent (C51 with {base.agent.num_atoms} atoms, double Q, {base.agent.n_step}-step "
            "returns, random shift + intensity on obs and next_obs, EMA target that also acts), tiny-preset "
            f"encoder (random weights), replay capacity {base.replay.capacity:,}; {NUM_ENVS} env, batch {BATCH}, "
            f"{UPDATES_PER_STEP} updates per agent step (the reference). CPU only, torch on {threads} intra-op "
            f"thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}.",
            f"Loops run train_rainbow with epsilon {EPSILON} throughout (the reference's after its decay), so "
            f"the agent's network acts on 99% of the steps; the Rainbow loops learn from step {learning_starts} "
            f"and are timed from {WARM} iterations after their first update ({fr['agent_steps']} agent steps "
            f"frozen, {e2e['agent_steps']} e2e); the acting loop (no updates) from its step {WARM}.",
            "agent.update alone runs on batches from the acting loop's replay (real Breakout frames), "
            "just before and just after each Rainbow loop; loop / alone divides by the median of the two. "
            f"Other processes kept {others:.0%} of the machine's {os.cpu_count()} CPUs busy during the run "
            f"(/proc/stat less this process; load average {load_start[0]:.1f} before it)"
            + (
                ": the machine was shared, so absolute rates can move by tens of percent between runs; the "
                "ratios compare rows measured a minute or two apart."
                if others > 0.05
                else "."
            ),
        ],
        "tables": tables,
        "goals": [],
        "values": values,
        "notes": [],
        "seconds": time.perf_counter() - t_start,
    }
    return finish("rainbow", result)


if __name__ == "__main__":
    main()
