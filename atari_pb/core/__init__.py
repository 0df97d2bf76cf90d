"""Run machinery shared by data collection, pre-training, fine-tuning and exploration, once each:

device.py       the device rule (`auto` | cpu | cuda | cuda:N)
writer.py       a run directory's config.yaml, metrics.jsonl and TensorBoard events
checkpoint.py   atomic checkpoint files with a `kind`, and the "same run?" check of `--resume`
episodes.py     per-env episode returns and lengths of a vector env
policies.py     uniform-random and epsilon-greedy action choice with per-env generators
timing.py       named sections of a loop timed through a hook (benchmarks), a no-op otherwise

Nothing here imports data/, pretrain/, finetune/, prend/ or eval/: they import it.
"""
