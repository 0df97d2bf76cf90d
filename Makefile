# atari-pb: every target is a thin wrapper over the `atari-pb` command line (see README.md).
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATASET ?= demo
PROBE_DATASET ?= probes_demo
DATA_ROOT ?= data
SRC     ?= $(DATA_ROOT)/replay/$(DATASET)
DST     ?= $(DATA_ROOT)/shards/$(DATASET)
DATA    ?= $(DST)
WORKERS ?= 2
OBJ     ?= curl
RUN     ?= runs/pretrain/$(OBJ)
PROTOCOL ?= offline_bc
ENCODER ?= $(RUN)/encoder.safetensors
FT_DATA ?= $(DATA_ROOT)/shards/offline_bc
ARGS    ?=
RESULTS ?= results
SPLIT   ?= id
GAME    ?= boxing

.PHONY: setup test test-fast lint wheel collect download ingest verify data pretrain export finetune far-ood-agents demo \
        bench clean distclean eval leaderboard prend

setup: $(VENV)/.installed

# Re-installs only when the package metadata changes; torch/torchvision come as a matching pair.
$(VENV)/.installed: setup.cfg pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -c "import timm, torch, torchvision, rliable, ale_py, h5py, ray"
	touch $@

test: setup
	$(BIN)/pytest -q

# everything but the tests marked slow
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The wheel, in dist/: every subpackage plus the configuration folders as atari_pb/configs/<folder>/*.yaml
# (setup.py). build/ is removed first so that no module deleted since a previous build slips in.
wheel: setup
	rm -rf build dist/atari_pb-*.whl
	$(BIN)/pip wheel . --no-deps --quiet -w dist
	@ls dist/atari_pb-*.whl

# Data: play games locally (collect) or fetch real DQN-Replay (download), then ingest and verify.
collect: setup
	$(BIN)/atari-pb collect $(SRC) --dataset datasets/$(DATASET).yaml $(ARGS)

download: setup
	$(BIN)/atari-pb download $(SRC) --dataset datasets/$(DATASET).yaml $(ARGS)

ingest: setup
	$(BIN)/atari-pb ingest $(SRC) $(DST) --dataset datasets/$(DATASET).yaml --workers $(WORKERS) $(ARGS)

verify: setup
	$(BIN)/atari-pb verify $(DST)

data: collect ingest verify

# Probe data (AtariARI): frame stacks labelled with the games' annotated RAM bytes, one HDF5 per game, in
# $(DATA_ROOT)/probes/$(PROBE_DATASET) (PROBE_DATASET=probes: the full dataset, datasets/probes.yaml)
.PHONY: probe-data
probe-data: setup
	$(BIN)/atari-pb collect-probes $(DATA_ROOT)/probes/$(PROBE_DATASET) --dataset $(PROBE_DATASET) $(ARGS)

# Pre-training: objectives/$(OBJ).yaml on the shards in $(DATA); ARGS="trainer.steps=... model.preset=tiny"
pretrain: setup
	$(BIN)/atari-pb pretrain --objective $(OBJ) --data $(DATA) --out $(RUN) $(ARGS)

export: setup
	$(BIN)/atari-pb export-encoder $(RUN) --out $(RUN)/encoder.safetensors

# Fine-tuning: ENCODER=path|random|e2e on every game and seed of SPLIT; finished records are kept, a killed
# job continues from its checkpoint. BACKEND=ray runs every job as a Ray task (README: scaling out):
#   make finetune BACKEND=ray ADDRESS=10.0.0.1:6379 GPUS_PER_JOB=0.5 CHECKPOINTS=/shared/checkpoints
BACKEND      ?= local
ADDRESS      ?=
CPUS_PER_JOB ?= 1
GPUS_PER_JOB ?= 0
CHECKPOINTS  ?=
BACKEND_ARGS = $(if $(filter ray,$(BACKEND)),--backend ray $(if $(ADDRESS),--address $(ADDRESS),) \
               --cpus-per-job $(CPUS_PER_JOB) --gpus-per-job $(GPUS_PER_JOB),--workers $(WORKERS)) \
               $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS),)
finetune: setup
	$(if $(filter local ray,$(BACKEND)),,$(error BACKEND=$(BACKEND): valid: local, ray))
	$(BIN)/atari-pb finetune --protocol $(PROTOCOL) --encoder $(ENCODER) --split $(SPLIT) --results $(RESULTS) \
	    $(if $(filter offline_bc,$(PROTOCOL)),--data $(FT_DATA),) $(BACKEND_ARGS) $(ARGS)

# AtariARI linear probes (finetune/probe.yaml): ENCODER=path|random|pixels|e2e on the annotated games of SPLIT,
# scored by the mean of the category means of the test F1; PROBE_DATA: what `make probe-data` wrote for the
# same PROBE_DATASET
PROBE_DATA ?= $(DATA_ROOT)/probes/$(PROBE_DATASET)
# the games of SPLIT that PROBE_DATA holds (none: the protocol names what is missing)
PROBE_GAMES ?= $(shell $(BIN)/python -c 'import sys; from atari_pb.probes.data import held_games; \
               print(*held_games(*sys.argv[1:]))' $(PROBE_DATA) $(SPLIT) 2>/dev/null)
.PHONY: probe
probe: setup
	$(BIN)/atari-pb finetune --protocol probe --encoder $(ENCODER) --split $(SPLIT) --data $(PROBE_DATA) \
	    $(if $(strip $(PROBE_GAMES)),--games $(PROBE_GAMES),) \
	    --results $(RESULTS) --workers $(WORKERS) $(ARGS)

# Far-OOD offline data as the release made it (configs/data_generation.yaml, configs/agent/rainbow_nature.yaml):
# a Nature-CNN Rainbow trained end to end for 2M steps on each Far-OOD game (1 update a step, epsilon 1 -> 0.02
# over 1M steps after 20k random ones, a 1M buffer), its training buffer dumped every 1M steps in the released
# layout into $(FAR_OOD_BUFFERS)/<Game>/{observation,action,reward,terminal}_1_<ckpt>.gz (records and
# scores of the agents in $(FAR_OOD_NATURE_RUNS)); then
#   make ingest SRC=$(FAR_OOD_BUFFERS) DST=$(DATA_ROOT)/shards/far_ood_released DATASET=far_ood_released
# FAR_OOD_WAY=policy instead trains our protocol's ResNet-50 e2e agents and keeps them (--save-agent) for
# `make data DATASET=far_ood`, which plays them (datasets/far_ood.yaml). A GPU's job either way.
FAR_OOD_WAY     ?= released
FAR_OOD_AGENTS  ?= runs/far_ood_agents
FAR_OOD_NATURE_RUNS ?= runs/far_ood_nature
FAR_OOD_BUFFERS ?= $(DATA_ROOT)/replay/far_ood_released
FAR_OOD_NATURE  ?= --preset nature train.env_steps=2000000 train.learning_starts=20000 train.updates_per_step=1 \
                   train.eps_end=0.02 train.eps_decay_steps=1000000 replay.capacity=1000000 \
                   buffer_log.dir=$(FAR_OOD_BUFFERS)
FAR_OOD_POLICY  ?= --save-agent train.env_steps=2000000
far-ood-agents: setup
	$(if $(filter released policy,$(FAR_OOD_WAY)),,$(error FAR_OOD_WAY=$(FAR_OOD_WAY): valid: released, policy))
	$(if $(filter local ray,$(BACKEND)),,$(error BACKEND=$(BACKEND): valid: local, ray))
	$(BIN)/atari-pb finetune --protocol rainbow --encoder e2e --split far_ood --seeds 0 \
	    $(BACKEND_ARGS) $(if $(filter released,$(FAR_OOD_WAY)),--results $(FAR_OOD_NATURE_RUNS) \
	    $(FAR_OOD_NATURE),--results $(FAR_OOD_AGENTS) $(FAR_OOD_POLICY)) $(ARGS)

# The pipeline on the small embedded default (datasets/demo.yaml: three ID games, one Near-OOD, one Far-OOD,
# played locally): data -> tiny encoders pre-trained under two objectives on the ID games -> offline BC and a
# short Rainbow run on every demo game for each encoder and the random baseline -> AtariARI probes
# (datasets/probes_demo.yaml) of each encoder and the random and pixels baselines on the annotated demo games
# -> evaluation tables -> the leaderboard with figures in $(DEMO_DIR)/leaderboard. Every stage skips what is
# already finished.
# The budgets are a demo's, not the protocol's (finetune/*.yaml): scores show the pipeline, not the methods.
DEMO_DIR     ?= runs/demo
DEMO_OBJS    ?= curl siammae
DEMO_STEPS   ?= 100
DEMO_ID      ?= [boxing,breakout,freeway]
DEMO_GAMES   ?= boxing breakout freeway pong surround
DEMO_SPLITS  ?= id near_ood far_ood
DEMO_BC      ?= train.max_steps=100 train.batch_size=64
DEMO_RAINBOW ?= train.env_steps=400 train.learning_starts=200 train.updates_per_step=1 train.batch_size=16 \
                train.eps_decay_steps=100 replay.capacity=5000
DEMO_EVAL    ?= --episodes 2 --eval-envs 2 eval.env.horizon=1000
DEMO_PROBE_GAMES ?= boxing breakout freeway pong
DEMO_PROBE   ?=
DEMO_FINETUNE = $(BIN)/atari-pb finetune --encoder $(DEMO_OBJS:%=$(DEMO_DIR)/%/encoder.safetensors) random \
                --split $(DEMO_SPLITS) --games $(DEMO_GAMES) --seeds 0 --preset tiny --results $(DEMO_DIR)/results \
                --workers $(WORKERS) $(DEMO_EVAL)

demo: setup
	$(MAKE) data DATASET=demo
	$(foreach obj,$(DEMO_OBJS),$(MAKE) $(DEMO_DIR)/$(obj)/encoder.safetensors &&) true
	$(DEMO_FINETUNE) --protocol offline_bc --data $(DATA_ROOT)/shards/demo $(DEMO_BC)
	$(DEMO_FINETUNE) --protocol rainbow $(DEMO_RAINBOW)
	$(MAKE) probe-data PROBE_DATASET=probes_demo ARGS="--games $(DEMO_PROBE_GAMES)"
	$(BIN)/atari-pb finetune --protocol probe --encoder $(DEMO_OBJS:%=$(DEMO_DIR)/%/encoder.safetensors) random \
	    pixels --split id near_ood --games $(DEMO_PROBE_GAMES) --seeds 0 --preset tiny --results $(DEMO_DIR)/results \
	    --workers $(WORKERS) --data $(DATA_ROOT)/probes/probes_demo $(DEMO_PROBE)
	$(foreach split,$(DEMO_SPLITS),$(BIN)/atari-pb eval --results $(DEMO_DIR)/results --split $(split) &&) true
	$(BIN)/atari-pb leaderboard $(DEMO_DIR)/results --out $(DEMO_DIR)/leaderboard
	@echo "demo: encoders in $(DEMO_DIR)/*/encoder.safetensors, records in $(DEMO_DIR)/results," \
	    "leaderboard in $(DEMO_DIR)/leaderboard/index.html"

$(DEMO_DIR)/%/encoder.safetensors: | setup
	$(BIN)/atari-pb pretrain --objective $* --data $(DATA_ROOT)/shards/demo --out $(DEMO_DIR)/$* --preset tiny \
	    --steps $(DEMO_STEPS) --batch-size 64 --save-every 50 optim.lr=1e-3 data.games=$(DEMO_ID) \
	    $(if $(wildcard $(DEMO_DIR)/$*/checkpoint.pt),--resume,)

# Exploration: PPO with a PreND (ENCODER=path) or RND (ENCODER=random) intrinsic reward on GAME
prend: setup
	$(BIN)/atari-pb prend --encoder $(ENCODER) --game $(GAME) $(ARGS)

bench: setup
	$(BIN)/python -m bench.run_all $(ARGS)

# clean: caches and build outputs only; distclean: also the data and every trained run and result
CLEAN_PATHS := .pytest_cache .ruff_cache build dist *.egg-info bench/out
clean:
	@echo "clean: removing $(CLEAN_PATHS) and every __pycache__ (outside $(VENV))"
	rm -rf $(CLEAN_PATHS)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	@echo "distclean: WARNING: deleting data and trained runs: $(DATA_ROOT)/ runs/ results/"
	rm -rf $(DATA_ROOT) runs results

# Evaluation: aggregate the results records (one JSON per fine-tuning run) with rliable.
eval: setup
	$(BIN)/atari-pb eval --results $(RESULTS) --split $(SPLIT)

leaderboard: setup
	$(BIN)/atari-pb leaderboard $(RESULTS) --out $(RESULTS)/leaderboard
