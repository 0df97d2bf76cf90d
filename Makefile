# atari-pb: every target is a thin wrapper over the `atari-pb` command line (see README.md).
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATASET ?= demo
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

.PHONY: setup test lint collect download ingest verify data pretrain export finetune demo bench clean eval leaderboard prend

setup: $(VENV)/.installed

# Re-installs only when the package metadata changes; torch/torchvision come as a matching pair.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import timm, torch, torchvision, rliable, ale_py, h5py"
	touch $@

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

# Pre-training: objectives/$(OBJ).yaml on the shards in $(DATA); ARGS="trainer.steps=... model.preset=tiny"
pretrain: setup
	$(BIN)/atari-pb pretrain --objective $(OBJ) --data $(DATA) --out $(RUN) $(ARGS)

export: setup
	$(BIN)/atari-pb export-encoder $(RUN) --out $(RUN)/encoder.safetensors

# Fine-tuning: ENCODER=path|random|e2e on every game and seed of SPLIT; finished records are kept
finetune: setup
	$(BIN)/atari-pb finetune --protocol $(PROTOCOL) --encoder $(ENCODER) --split $(SPLIT) --results $(RESULTS) \
	    $(if $(filter offline_bc,$(PROTOCOL)),--data $(FT_DATA),) --workers $(WORKERS) $(ARGS)

# The pipeline on the small embedded default (datasets/demo.yaml). Today: data (collect, ingest, verify)
# and pre-training of the tiny preset under two objectives on the demo's ID games; fine-tuning, evaluation
# and the leaderboard join as they land. Every stage skips what is already finished.
DEMO_OBJS  ?= curl siammae
DEMO_STEPS ?= 150
DEMO_ID    ?= [boxing,breakout,freeway]

demo: setup
	$(MAKE) data DATASET=demo
	$(foreach obj,$(DEMO_OBJS),$(MAKE) runs/demo/$(obj)/encoder.safetensors &&) true
	@echo "demo: encoders in runs/demo/*/encoder.safetensors (load with atari_pb.load_encoder)"

runs/demo/%/encoder.safetensors: | setup
	$(BIN)/atari-pb pretrain --objective $* --data $(DATA_ROOT)/shards/demo --out runs/demo/$* --preset tiny \
	    --steps $(DEMO_STEPS) --batch-size 64 --save-every 50 optim.lr=1e-3 data.games=$(DEMO_ID) \
	    $(if $(wildcard runs/demo/$*/checkpoint.pt),--resume,)

# Exploration: PPO with a PreND (ENCODER=path) or RND (ENCODER=random) intrinsic reward on GAME
prend: setup
	$(BIN)/atari-pb prend --encoder $(ENCODER) --game $(GAME) $(ARGS)

bench: setup
	$(BIN)/python -m bench.run_all $(ARGS)

clean:
	rm -rf $(DATA_ROOT) runs bench/out .pytest_cache

# Evaluation: aggregate the results records (one JSON per fine-tuning run) with rliable.
eval: setup
	$(BIN)/atari-pb eval --results $(RESULTS) --split $(SPLIT)

leaderboard: setup
	$(BIN)/atari-pb leaderboard $(RESULTS) --out $(RESULTS)/leaderboard
