"""Rainbow fine-tuning throughput on CPU with the tiny preset: agent steps/s and updates/s of the real loop
(`train_rainbow`), against its parts measured alone in the same run.

Rows, all on Breakout with finetune/rainbow.yaml's env (no sticky actions, fire reset) and agent (C51, double
Q, 10-step returns, augmentation of obs and next_obs, EMA target), one env (the reference), batch 32:
  raw env           make_vector_env stepping with random actions: no policy, no replay, no learning;
  acting loop       train_rainbow with train.updates_per_step=0 and epsilon 0.01 throughout: the greedy
                    action comes from the agent's network on almost every step, frames go to the replay;
  Rainbow loop      train_rainbow with the reference replay ratio (2 updates per agent step), measured after
                    learning starts, epsilon 0.01 (its value once the decay is over), frozen backbone; and
                    the e2e baseline (train_backbone=True, the backbone trained too);
  agent.update      the isolated update rate: RainbowAgent.update on batches sampled from a replay filled
                    by the acting loop (sampling and priority updates timed apart), measured just before
                    and just after each Rainbow loop so that loop / isolated compares like with like.
Inside the loops, env.step, agent.act, replay.add, replay.sample, agent.update and replay.update_priorities
are timed by the loop's own timing hook (atari_pb.core.timing.Sections), so the rest of each loop's time is
its own Python. Rates count the iterations between two env.step calls, so making the env and the agent,
and the first few updates (warm-up), are excluded. The encoder has random weights: the cost does not
depend on them.
"""

from __future__ import annotations

import atari_pb  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)

# isort: split
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import Opt, Spec, Table, log, med, repeat, run_child, timed

GAME = "breakout"
NUM_ENVS = 1  # the reference
BATCH = 32
UPDATES_PER_STEP = 2
EPSILON = 0.01  # eps_end of the reference: the agent's network picks 99% of the actions
WARM = 3  # loop iterations after the first update (or the first step) left out of the timing
PARTS = ("env.step", "agent.act", "replay.add", "replay.sample", "agent.update", "replay.update_priorities")
VARIANTS = {"frozen": False, "e2e": True}  # train_backbone


def rainbow_cfg(extra: list[str] = ()):
    from atari_pb.finetune.rainbow import load_rainbow_config

    keys = ["train.device=cpu", f"train.num_envs={NUM_ENVS}", f"train.batch_size={BATCH}"]
    return load_rainbow_config(
        [*keys, "train.log_every=1000000", f"train.eps_start={EPSILON}", f"train.eps_end={EPSILON}", *extra]
    )


def window(calls: dict, first: int) -> dict:
    """Rates and per-part time over the loop iterations from env.step call `first` to the last one."""
    steps = calls["env.step"]
    if len(steps) - 1 - first < 2:
        raise RuntimeError(f"too few loop iterations after the warm-up ({len(steps)} in all)")
    t_a, t_b = steps[first][0], steps[-1][0]
    seconds, agent_steps = t_b - t_a, NUM_ENVS * (len(steps) - 1 - first)
    inside = {k: [d for t, d in calls.get(k, []) if t_a <= t < t_b] for k in PARTS}
    part_s = {k: sum(x) for k, x in inside.items()}
    return {
        "steps_per_s": agent_steps / seconds,
        "updates_per_s": len(inside["agent.update"]) / seconds,
        "agent_steps": agent_steps,
        "updates": len(inside["agent.update"]),
        "seconds": seconds,
        "ms_per_step": {k: s / agent_steps * 1e3 for k, s in part_s.items()},
        "rest_ms_per_step": (seconds - sum(part_s.values())) / agent_steps * 1e3,
        "ms_per_call": {k: sum(x) / len(x) * 1e3 for k, x in inside.items() if x},
        "calls": {k: len(x) for k, x in inside.items()},
    }


def run_loop(encoder, cfg, train_backbone: bool = False) -> tuple[dict, object]:
    """train_rainbow with its sections timed; the window starts WARM iterations after the first update (or
    step). Returns the window and the loop's replay."""
    from atari_pb.core.timing import Sections
    from atari_pb.finetune.rainbow import train_rainbow
    from atari_pb.games import get_game

    sections, game = Sections(), get_game(GAME)
    t0 = time.perf_counter()
    result = train_rainbow(
        game, encoder, cfg, 0, progress=False, train_backbone=train_backbone, sections=sections
    )
    wall = time.perf_counter() - t0
    steps, first = sections.calls["env.step"], 0
    if sections.calls["agent.update"]:
        t_update = sections.calls["agent.update"][0][0]
        first = next(k for k, (t, _) in enumerate(steps) if t > t_update)
    w = window(sections.calls, first + WARM)
    w.update(wall_s=wall, loop_s=result.seconds, total_steps=result.env_steps, total_updates=result.updates)
    return w, sections.kept["replay"]


def raw_env(steps: int, env_cfg) -> float:
    """Agent steps/s of the same vector env stepped with random actions, nothing else."""
    from atari_pb.envs.atari import make_vector_env
    from atari_pb.games import get_game

    env, _ = make_vector_env(get_game(GAME), NUM_ENVS, env_cfg, 0)
    actions = np.random.default_rng(0).integers(int(env.single_action_space.n), size=(steps, NUM_ENVS))
    try:
        for a in actions[:WARM]:
            env.step(a)
        t0 = time.perf_counter()
        for a in actions[WARM:]:
            env.step(a)
        return NUM_ENVS * (steps - WARM) / (time.perf_counter() - t0)
    finally:
        env.close()


def make_agent(encoder, num_actions: int, train_backbone: bool = False):
    from atari_pb.finetune.rainbow import RainbowAgent

    torch.manual_seed(0)
    return RainbowAgent(encoder, num_actions, rainbow_cfg().agent, 0, "cpu", train_backbone=train_backbone)


def isolated_updates(encoder, replay, num_actions: int, updates: int, train_backbone: bool) -> dict:
    """agent.update alone on batches sampled from `replay`, the loop's sample -> update -> priorities
    sequence with each call timed apart; a fresh agent, its first WARM updates left out."""
    from atari_pb.core.timing import Sections

    agent, s = make_agent(encoder, num_actions, train_backbone), Sections()
    for _ in range(WARM + updates):
        with s("replay.sample"):
            batch = replay.sample(BATCH, 0.4)
        with s("agent.update"):
            loss, _ = agent.update(batch, batch.weights)
        with s("replay.update_priorities"):
            replay.update_priorities(batch.indices, loss.clamp_min(1e-5).cpu().numpy())
    times = {k: [d for _, d in x[WARM:]] for k, x in s.calls.items()}
    ms = {k: sum(x) / len(x) * 1e3 for k, x in times.items()}
    return {"updates_per_s": updates / sum(times["agent.update"]), "ms_per_call": ms, "updates": updates}


def act_ms(agent, obs: torch.Tensor, reps: int) -> float:
    """ms of agent.act on one stack (the loop's call with one env), median of `reps` after one untimed."""
    return med(repeat(lambda: agent.act(obs).cpu().numpy(), reps, warmup=1)) * 1e3


def act_alone(encoder, replay, num_actions: int, reps: int) -> float:
    return act_ms(make_agent(encoder, num_actions), torch.from_numpy(replay.sample(1, 0.4).obs), reps)


def child(payload: dict) -> dict:
    """act_spinning's child: {threads: ms} of agent.act on one (random) stack, at 1 and 2 threads."""
    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game
    from atari_pb.models.encoder import Encoder, ModelConfig

    torch.manual_seed(0)
    agent = make_agent(Encoder(ModelConfig(preset="tiny")), num_actions(get_game(GAME)))
    obs = torch.randint(0, 256, (1, 4, 84, 84), dtype=torch.uint8)
    ms = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ms[str(threads)] = act_ms(agent, obs, payload["reps"])
    return ms


def inside_update(encoder, replay, num_actions: int, reps: int) -> dict:
    """ms (fastest of `reps`, interleaved) of a whole frozen update and of its pieces on one batch: the
    augmentation of obs and next_obs (2 x 32 stacks), the frozen backbone's forward on them, and a backbone
    forward + backward on 32 (the extra work of the e2e variant's online pass)."""
    from atari_pb.augment import BatchRandom, augment

    agent = make_agent(encoder, num_actions)
    batch = replay.sample(BATCH, 0.4)
    pair = torch.cat([torch.from_numpy(batch.obs), torch.from_numpy(batch.next_obs)])
    aug = augment(pair, BatchRandom.for_batch(0, 0, 2 * BATCH))
    train_copy = make_agent(encoder, num_actions, train_backbone=True).backbone

    def fwd_bwd():
        train_copy.zero_grad(set_to_none=True)
        train_copy(aug[:BATCH]).sum().backward()

    def fwd():
        with torch.no_grad():
            agent.backbone(aug)

    pieces = {
        "update": lambda: agent.update(batch, batch.weights),
        "augment_2x32": lambda: augment(pair, BatchRandom.for_batch(0, 1, 2 * BATCH)),
        "backbone_forward_2x32": fwd,
        "backbone_forward_backward_32": fwd_bwd,
    }
    for fn in pieces.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(reps):
        for name, fn in pieces.items():
            times[name].append(timed(fn)[0])
    return {name: min(t) * 1e3 for name, t in times.items()}  # the fastest: the least disturbed


def by_thread_count(encoder, replay, num_actions: int, updates: dict, act_reps: int) -> dict:
    """agent.update (frozen and e2e) and agent.act alone on 1 and 2 torch threads, in 2 rounds that
    alternate the thread counts, so that both see the same state of the machine."""
    spent = {t: {v: [0, 0.0] for v in VARIANTS} for t in (1, 2)}
    act = {t: [] for t in (1, 2)}
    for _ in range(2):
        for t in (1, 2):
            torch.set_num_threads(t)
            for v, train_backbone in VARIANTS.items():
                n = max(1, updates[v] // 2)
                r = isolated_updates(encoder, replay, num_actions, n, train_backbone)
                spent[t][v][0] += n
                spent[t][v][1] += n / r["updates_per_s"]
            act[t].append(act_alone(encoder, replay, num_actions, act_reps // 2))
    return {str(t): {**{v: n / s for v, (n, s) in spent[t].items()}, "act_ms": med(act[t])} for t in (1, 2)}


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy, CPU seconds this process and its finished children
    have used), to tell how much of the machine other work took during the run."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def measure(o) -> dict:
    from atari_pb.envs.atari import num_actions
    from atari_pb.games import get_game
    from atari_pb.models.encoder import Encoder, ModelConfig

    q = o.quick
    loop_steps = {"frozen": o.steps, "e2e": o.e2e_steps}
    iso_updates = {"frozen": 6 if q else 50, "e2e": 3 if q else 25}
    raw_steps, act_steps = (1000, 300) if q else (3000, 2000)
    learning_starts = 40 if q else 200
    torch.set_num_threads(o.torch_threads)
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(preset="tiny"))
    na, base = num_actions(get_game(GAME)), rainbow_cfg()
    load_start, cpu_start, t_start = os.getloadavg(), cpu_seconds(), time.perf_counter()

    log(f"raw env: {raw_steps:,} random steps")
    raw = [raw_env(raw_steps, base.env)]
    log(f"acting loop: {act_steps:,} steps, no updates")
    keys = ["train.updates_per_step=0", "train.learning_starts=0", f"train.env_steps={act_steps}"]
    acting, replay = run_loop(encoder, rainbow_cfg(keys))
    raw.append(raw_env(raw_steps, base.env))
    log(
        f"acting loop: {acting['steps_per_s']:,.0f} agent steps/s; raw env {raw[0]:,.0f}, {raw[1]:,.0f} steps/s"
    )

    loops, iso = {}, {}
    for variant, train_backbone in VARIANTS.items():
        n_iso = iso_updates[variant]
        log(f"{variant}: agent.update alone x {n_iso}")
        before = isolated_updates(encoder, replay, na, n_iso, train_backbone)
        env_steps = learning_starts + NUM_ENVS * (WARM + 1) + loop_steps[variant]
        log(
            f"{variant}: Rainbow loop, {learning_starts} steps then {env_steps - learning_starts} with updates"
        )
        keys = [f"train.updates_per_step={UPDATES_PER_STEP}", f"train.learning_starts={learning_starts}"]
        keys.append(f"train.env_steps={env_steps}")
        loops[variant], _ = run_loop(encoder, rainbow_cfg(keys), train_backbone)
        log(f"{variant}: agent.update alone x {n_iso} again")
        after = isolated_updates(encoder, replay, na, n_iso, train_backbone)
        iso[variant] = {"before": before, "after": after}
        lp, x = loops[variant], iso[variant]
        log(
            f"{variant}: loop {lp['steps_per_s']:.2f} agent steps/s, {lp['updates_per_s']:.2f} updates/s; "
            f"alone {x['before']['updates_per_s']:.2f} and {x['after']['updates_per_s']:.2f} updates/s"
        )

    log("inside an update")
    pieces = inside_update(encoder, replay, na, 3 if q else 9)
    act_reps = 20 if q else 100
    iso_ups = {v: med([x["before"]["updates_per_s"], x["after"]["updates_per_s"]]) for v, x in iso.items()}
    if not q and len(os.sched_getaffinity(0)) >= 2:
        log("agent.update and agent.act alone on 1 and 2 torch threads, alternating")
        by_threads = by_thread_count(encoder, replay, na, iso_updates, act_reps)
        torch.set_num_threads(o.torch_threads)
        log("agent.act alone with OMP_WAIT_POLICY=ACTIVE (a child process)")
        spinning = run_child("rainbow", {"reps": act_reps}, env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})
        if spinning.get("failed"):
            raise RuntimeError(f"the OMP_WAIT_POLICY=ACTIVE child failed: {spinning['stderr']}")
        for t in ("1", "2"):
            by_threads[t]["act_ms_active"] = spinning[t]
    else:  # the bracketing measurements, and agent.act on this run's thread count
        by_threads = {str(o.torch_threads): {**iso_ups, "act_ms": act_alone(encoder, replay, na, act_reps)}}
    load_end, cpu_end = os.getloadavg(), cpu_seconds()
    wall = time.perf_counter() - t_start
    others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])) / (wall * os.cpu_count())

    raw_sps, fr, e2e = med(raw), loops["frozen"], loops["e2e"]
    return {
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
        "raw_steps": raw_steps,
        "isolated_updates_per_s": iso_ups,
        "isolated_updates_per_s_by_threads": by_threads,
        "inside_update_ms": pieces,
        "inside_reps": 3 if q else 9,
        "loops": {"acting": acting, **loops},
        "isolated": iso,
        "iso_updates": iso_updates,
        "n_step": base.agent.n_step,
        "num_atoms": base.agent.num_atoms,
        "replay_capacity": base.replay.capacity,
        "learning_starts": learning_starts,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "other_processes_cpu_share": others,
        "cpus": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def setup(v: dict, o) -> list[str]:
    fr, e2e, others = v["loops"]["frozen"], v["loops"]["e2e"], v["other_processes_cpu_share"]
    shared = (
        ": the machine was shared, so absolute rates can move by tens of percent between runs; the ratios "
    )
    shared += "compare rows measured a minute or two apart."
    return [
        f"Game: {GAME}, finetune/rainbow.yaml's env (frame skip 4, 4-frame stacks, no sticky actions, fire "
        f"reset) and agent (C51 with {v['num_atoms']} atoms, double Q, {v['n_step']}-step returns, random shift + "
        "intensity on obs and next_obs, EMA target that also acts), tiny-preset encoder (random weights), replay "
        f"capacity {v['replay_capacity']:,}; {NUM_ENVS} env, batch {BATCH}, {UPDATES_PER_STEP} updates per agent step "
        f"(the reference). CPU only, torch on {o.torch_threads} intra-op thread(s), OMP_WAIT_POLICY={v['omp_wait_policy']}.",
        f"Loops run train_rainbow with epsilon {EPSILON} throughout (the reference's after its decay), so "
        f"the agent's network acts on 99% of the steps; the Rainbow loops learn from step {v['learning_starts']} "
        f"and are timed from {WARM} iterations after their first update ({fr['agent_steps']} agent steps "
        f"frozen, {e2e['agent_steps']} e2e); the acting loop (no updates) from its step {WARM}. The loop's parts are "
        "timed by its own hook (`sections=`).",
        "agent.update alone runs on batches from the acting loop's replay (real Breakout frames), "
        "just before and just after each Rainbow loop; loop / alone divides by the median of the two. "
        f"Other processes kept {others:.0%} of the machine's {v['cpus']} CPUs busy during the run "
        f"(/proc/stat less this process; load average {v['load_average_start'][0]:.1f} before it)"
        + (shared if others > 0.05 else "."),
    ]


def tables(v: dict, o) -> list[Table]:
    raw, loops, iso, pieces = v["raw_env_steps_per_s"], v["loops"], v["isolated"], v["inside_update_ms"]
    ups = v["isolated_updates_per_s"]
    acting, update_ms = loops["acting"], pieces["update"]

    def row(label: str, sps, ups, measured: str) -> list:
        return [label, sps, ups, sps / raw if sps is not None else "-", measured]

    runs = f"{len(v['raw_env_steps_per_s_runs'])} x {v['raw_steps'] - WARM:,} steps"
    throughput = [
        row("raw env (random actions)", raw, None, runs),
        row(
            f"acting loop (epsilon {EPSILON}, no updates)",
            acting["steps_per_s"],
            None,
            f"{acting['agent_steps']:,} steps",
        ),
    ]
    for k, x in ((k, loops[k]) for k in VARIANTS):
        throughput.append(
            row(f"Rainbow loop, {k}", x["steps_per_s"], x["updates_per_s"], f"{x['updates']:,} updates")
        )
    for k in VARIANTS:
        b, a = iso[k]["before"]["updates_per_s"], iso[k]["after"]["updates_per_s"]
        measured = f"2 x {v['iso_updates'][k]} updates (median of {b:.2f} and {a:.2f})"
        throughput.append(row(f"agent.update alone, {k}", None, ups[k], measured))
    split = []
    for label, x in zip(("acting loop", "Rainbow loop, frozen", "Rainbow loop, e2e"), loops.values()):
        ms = [x["ms_per_step"][k] for k in PARTS]
        split.append([label, *ms, x["rest_ms_per_step"], 1e3 / x["steps_per_s"]])
    ratios = [
        ["Rainbow loop updates/s / agent.update alone, frozen", v["loop_over_isolated_updates_frozen"]],
        ["Rainbow loop updates/s / agent.update alone, e2e", v["loop_over_isolated_updates_e2e"]],
        ["acting loop steps/s / raw env steps/s", v["acting_over_raw_env"]],
        ["Rainbow loop steps/s (frozen) / raw env steps/s", v["loop_steps_over_raw_env_frozen"]],
        ["e2e / frozen updates/s, in the loop", v["e2e_over_frozen_loop_updates"]],
        ["e2e / frozen updates/s, agent.update alone", v["e2e_over_frozen_isolated_updates"]],
        ["agent.update's share of the frozen loop's time", v["update_share_of_loop_frozen"]],
    ]
    labels = {
        "augment_2x32": "augment obs + next_obs (2 x 32 stacks)",
        "backbone_forward_2x32": "frozen backbone forward (2 x 32 stacks, no grad)",
        "backbone_forward_backward_32": "backbone forward + backward (32 stacks; e2e only)",
    }
    iso_ms = iso["frozen"]["before"]["ms_per_call"]
    inside = (
        f"Inside a frozen update (agent.update alone on one batch: {update_ms:.0f} ms, fastest of {v['inside_reps']}; "
        f"for comparison sampling a batch takes {iso_ms['replay.sample']:.2f} ms, updating its priorities "
        f"{iso_ms['replay.update_priorities']:.2f} ms)"
    )
    out = [
        Table("Ratios (same run)", "ratio | value", ratios),
        Table(
            f"Throughput ({o.torch_threads} torch thread(s), {NUM_ENVS} env, batch {BATCH}, {UPDATES_PER_STEP} updates per agent step)",
            "row | agent steps/s | updates/s | / raw env | measured",
            throughput,
        ),
        Table(
            "Where a loop's time goes: ms per agent step, timed inside the loop",
            ["loop", *PARTS, "rest of loop", "total"],
            split,
        ),
        Table(
            inside,
            "piece | ms | / frozen update",
            [[label, pieces[k], pieces[k] / update_ms] for k, label in labels.items()],
        ),
    ]
    threads = v["isolated_updates_per_s_by_threads"]
    if len(threads) > 1:
        rows = [
            [int(t), x["frozen"], x["e2e"], x["act_ms"], x.get("act_ms_active")]
            for t, x in sorted(threads.items())
        ]
        heads = "threads | frozen updates/s | e2e updates/s | agent.act ms (1 stack) | agent.act ms, OMP_WAIT_POLICY=ACTIVE"
        out.append(
            Table(
                "agent.update and agent.act alone by torch intra-op threads (2 rounds alternating 1 and 2)",
                heads,
                rows,
            )
        )
    return out


def interpret(v: dict, o, m: dict) -> list[str]:
    fr, act, inside = v["loops"]["frozen"], v["loops"]["acting"], v["inside_update_ms"]
    update_ms, fwd = inside["update"], inside["backbone_forward_2x32"]
    fwd_share = (
        f"is {fwd / update_ms:.0%}"
        if fwd < 0.97 * update_ms
        else f"takes about all of it ({fwd:.0f} ms alone)"
    )
    loop_ratio = v["loop_over_isolated_updates_frozen"]
    lines = [
        ("The loop adds little to its parts: w" if loop_ratio >= 0.9 else "W")
        + f"ith the reference replay ratio the loop makes {loop_ratio:.2f} of the updates/s of `agent.update` alone "
        f"(frozen backbone; {v['loop_over_isolated_updates_e2e']:.2f} e2e), and `agent.update` takes "
        f"{v['update_share_of_loop_frozen']:.0%} of the frozen loop's time. Env, action, replay and the loop's own "
        f"Python come to {1e3 / fr['steps_per_s'] - fr['ms_per_step']['agent.update']:.1f} ms of its "
        f"{1e3 / fr['steps_per_s']:.0f} ms per agent step.",
        f"Inside a frozen update ({update_ms:.0f} ms alone), the backbone's forward over the augmented obs and next_obs "
        f"(2 x {BATCH} stacks) {fwd_share} and the augmentation {inside['augment_2x32'] / update_ms:.0%}; neck, C51 head, "
        f"projection, Adam and EMA share the rest. At {UPDATES_PER_STEP} updates per agent step the backbone sees "
        f"{2 * BATCH * UPDATES_PER_STEP} stacks per agent step, against 1 to act.",
        f"e2e makes {v['e2e_over_frozen_loop_updates']:.2f}x the frozen loop's updates/s "
        f"({v['e2e_over_frozen_isolated_updates']:.2f}x alone); a backbone forward + backward on {BATCH} stacks, the "
        f"extra work of its online pass, takes {inside['backbone_forward_backward_32']:.0f} ms.",
        f"Acting alone (no updates) runs at {v['acting_over_raw_env']:.2f} of bare env stepping: `agent.act` on "
        f"one stack takes {act['ms_per_call']['agent.act']:.1f} ms against {act['ms_per_call']['env.step']:.2f} ms for `env.step`.",
    ]
    spread = {
        k: abs(x["before"]["updates_per_s"] / x["after"]["updates_per_s"] - 1)
        for k, x in v["isolated"].items()
    }
    if max(spread.values()) > 0.1:
        lines.append(
            f"The two bracketing runs of `agent.update` alone differ by {max(spread.values()):.0%} "
            f"({max(spread, key=spread.get)}): the machine changed during the loop, and its loop / alone ratio is off by as much."
        )
    threads = v["isolated_updates_per_s_by_threads"]
    if {"1", "2"} <= threads.keys():
        one, two = threads["1"], threads["2"]
        line = (
            f"Torch threads: 2 give {two['frozen'] / one['frozen']:.2f}x the updates/s of 1 (frozen; "
            f"{two['e2e'] / one['e2e']:.2f}x e2e), and `agent.act` on one stack takes {two['act_ms']:.1f} ms on 2 "
            f"against {one['act_ms']:.1f} ms on 1"
        )
        if two["act_ms"] > one["act_ms"]:
            line += (
                f": with OMP_WAIT_POLICY={v['omp_wait_policy']} each parallel op of a one-stack forward wakes a sleeping "
                "thread, which can cost more than the op"
            )
        if "act_ms_active" in two and "act_ms_active" in one:
            spin = f"{two['act_ms_active']:.1f} ms on 2 threads and {one['act_ms_active']:.1f} ms on 1"
            helped = two["act_ms_active"] < two["act_ms"]
            line += (
                f". With spinning threads (OMP_WAIT_POLICY=ACTIVE, in a child process) it takes {spin}"
                + ("." if helped else ": spinning did not help in this run.")
            )
        else:
            line += "."
        lines.append(line)
    return lines


SPEC = Spec(
    name="rainbow",
    title="Rainbow fine-tuning throughput (tiny preset, CPU)",
    doc=__doc__,
    measures="agent steps/s and updates/s of `train_rainbow` (tiny preset, 1 env, batch 32, 2 updates per agent step), "
    "frozen backbone, with the loop's parts timed through its `sections` hook; and what happens inside an update.",
    baseline="the same run's raw env stepping, the acting loop without updates, `agent.update` alone on batches of the "
    "loop's replay (before and after each loop), and the e2e variant (`train_backbone=True`).",
    measure=measure,
    setup=setup,
    tables=tables,
    interpret=interpret,
    child=child,
    options={
        "steps": Opt(300, 12, "agent steps timed in the frozen Rainbow loop"),
        "e2e_steps": Opt(120, 6, "agent steps timed in the e2e loop"),
        "torch_threads": Opt(
            2,
            None,
            "torch intra-op threads of every row; the full run also times agent.update and agent.act alone on 1 and 2 threads",
        ),
    },
)

if __name__ == "__main__":
    SPEC.main()
