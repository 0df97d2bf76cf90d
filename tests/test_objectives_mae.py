"""mae and siammae: masks, patch targets, token placement, the loss's value, cross-attention, DDP slicing.

Small hand-made inputs with the tiny preset; the registry-wide tests in test_objectives.py cover learning
and checkpoints on real frames.
"""

from __future__ import annotations

import math

import pytest
import torch

from atari_pb.augment import BatchRandom
from atari_pb.errors import UsageError
from atari_pb.models.encoder import Encoder
from atari_pb.objectives import objective_class
from atari_pb.objectives._vit import (
    CrossBlock,
    PatchDecoder,
    masked_means,
    neck_tokens,
    num_kept,
    patchify,
    pos_embed_2d,
    random_masking,
)
from atari_pb.pretrain.config import load_pretrain_config

GRID = (6, 6)


def build(name: str, *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_pretrain_config(name, ["model.preset=tiny", *overrides])
    return objective_class(name)(cfg.objective, Encoder(cfg.model), cfg.model.num_actions)


def random_batch(b: int = 8, t: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (b, t, 4, 84, 84), generator=g, dtype=torch.uint8)  # noqa: E731
    return {
        "obs": frames(),
        "next_obs": frames(),
        "game_id": torch.randint(0, 60, (b, 1), generator=g).expand(b, t),
    }


# ---------------------------------------------------------------------------------------------- masks
def test_num_kept_follows_atari_pb():
    # Atari-PB keeps int(L * (1 - ratio)) tokens
    assert num_kept(36, 0.9) == 3
    assert num_kept(36, 0.95) == 1
    assert num_kept(36, 0.75) == 9  # 36 * 0.25 is 9.0 exactly, not 8.999...
    assert num_kept(36, 0.0) == 36


def test_random_masking_keeps_exactly_k_and_differs_per_sample():
    noise = BatchRandom.for_batch(0, 0, 32).uniform(36)
    keep_idx, restore = random_masking(noise, 3)
    masked = restore >= 3
    assert keep_idx.shape == (32, 3)
    assert (masked.sum(1) == 33).all()
    assert not masked.gather(1, keep_idx).any()  # the kept tokens are the visible ones
    assert (restore.gather(1, keep_idx) == torch.arange(3)).all()  # and come first in the shuffle
    assert all(len(set(row.tolist())) == 3 for row in keep_idx)
    assert len({tuple(sorted(row.tolist())) for row in keep_idx}) >= 30  # C(36, 3) = 7140 masks
    # the smallest noise is kept (an independent statement of the rule)
    assert torch.equal(keep_idx.sort(1).values, noise.topk(3, dim=1, largest=False).indices.sort(1).values)


@pytest.mark.parametrize("name,visible", [("mae", 3), ("siammae", 1)])
def test_objective_masks_per_sample(name, visible, monkeypatch):
    module = __import__(f"atari_pb.objectives.{name}", fromlist=["random_masking"])
    seen = []

    def spy(noise, keep):
        out = random_masking(noise, keep)
        seen.append(out)
        return out

    monkeypatch.setattr(module, "random_masking", spy)
    objective = build(name)
    sizes = []
    objective.vit.register_forward_hook(lambda m, args, out: sizes.append(out.shape[1]))
    with torch.no_grad():
        objective(random_batch(8), BatchRandom.for_batch(0, 0, 8))
    ((keep_idx, restore),) = seen
    assert ((restore >= visible).sum(1) == 36 - visible).all()
    assert len({tuple(sorted(r.tolist())) for r in keep_idx}) > 1
    # the ViT sees CLS + the visible tokens; SiamMAE's current stack goes in whole
    assert sizes == ([1 + visible] if name == "mae" else [1 + visible, 1 + 36])


# -------------------------------------------------------------------------------------------- targets
def test_patchify_cuts_14x14_patches_of_every_frame():
    # frame f's patch (i, j) is filled with 100 f + 6 i + j
    f_, i_, j_ = torch.meshgrid(torch.arange(4), torch.arange(6), torch.arange(6), indexing="ij")
    value = (100 * f_ + 6 * i_ + j_).float()
    image = value.repeat_interleave(14, 1).repeat_interleave(14, 2)[None]  # (1, 4, 84, 84)
    patches = patchify(image, GRID)
    assert patches.shape == (1, 36, 4 * 14 * 14)
    expected = (100 * torch.arange(4)[None, :, None] + torch.arange(36)[:, None, None]).float()
    assert torch.equal(patches[0].view(36, 4, 196), expected.expand(36, 4, 196))
    # pixel order inside a patch: (frame, row, column)
    frames = torch.arange(2 * 4 * 84 * 84, dtype=torch.float32).view(2, 4, 84, 84)
    patches = patchify(frames, GRID)
    for i in range(6):
        for j in range(6):
            cut = frames[:, :, 14 * i : 14 * i + 14, 14 * j : 14 * j + 14].reshape(2, -1)
            assert torch.equal(patches[:, 6 * i + j], cut)


def test_masked_means_split_the_error():
    err = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = masked_means(err, torch.tensor([[True, False], [False, True]]))
    assert m["mse_masked"].item() == 2.5 and m["mse_visible"].item() == 2.5
    m = masked_means(err, torch.ones(2, 2, dtype=torch.bool))
    assert m["mse_masked"].item() == 2.5 and m["mse_visible"].item() == 0.0


def test_mae_loss_is_pixel_mse_over_every_token_of_the_unaugmented_stack(monkeypatch):
    objective = build("mae")
    batch = random_batch(4)
    target = patchify(batch["obs"].flatten(0, 1).float() / 255, GRID)
    restores = []

    def perfect(latent, restore, game_id, context=None):
        restores.append(restore)
        return target.clone()

    monkeypatch.setattr(objective.decoder, "forward", perfect)
    loss, metrics = objective(batch, BatchRandom.for_batch(0, 0, 4))
    assert loss.item() == 0.0 and metrics["mse_masked"].item() == 0.0

    # a wrong visible token costs its share of the pixels: Atari-PB's loss covers visible tokens too
    visible = restores[0] < objective.keep

    def off_on_visible(latent, restore, game_id, context=None):
        return target + 0.5 * visible[..., None]

    monkeypatch.setattr(objective.decoder, "forward", off_on_visible)
    loss, metrics = objective(batch, BatchRandom.for_batch(0, 0, 4))
    assert loss.item() == pytest.approx(0.25 * 3 / 36, rel=1e-6)
    assert metrics["mse_visible"].item() == pytest.approx(0.25) and metrics["mse_masked"].item() == 0.0


def test_siammae_reconstructs_the_future_through_a_sigmoid(monkeypatch):
    objective = build("siammae")
    batch = random_batch(4)
    future = patchify(batch["next_obs"].flatten(0, 1).float() / 255, GRID)
    present = patchify(batch["obs"].flatten(0, 1).float() / 255, GRID)
    monkeypatch.setattr(objective.decoder, "forward", lambda *a, **k: torch.logit(future))
    loss, _ = objective(batch, BatchRandom.for_batch(0, 0, 4))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    monkeypatch.setattr(objective.decoder, "forward", lambda *a, **k: torch.logit(present))
    loss, _ = objective(batch, BatchRandom.for_batch(0, 0, 4))
    assert loss.item() == pytest.approx((present - future).pow(2).mean().item(), rel=1e-4)


def test_siammae_samples_a_random_future():
    spec = build("siammae").sample_spec()
    assert (spec.n_step, spec.random_future, spec.frames) == (3, True, 4)


# ------------------------------------------------------------------------------------- model pieces
def test_pos_embed_2d_encodes_column_then_row():
    dim = 16
    pos = pos_embed_2d(6, 6, dim)

    def sincos(p: int, d: int) -> list[float]:  # the 1-D formula, written out
        out = []
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            out += [math.sin(angle), math.cos(angle)]
        return out

    for r in range(6):
        for c in range(6):
            expected = torch.tensor(sincos(c, dim // 2) + sincos(r, dim // 2))
            assert torch.allclose(pos[6 * r + c], expected, atol=1e-6)
    assert len({tuple(p.tolist()) for p in pos}) == 36


def test_neck_tokens_apply_the_neck_to_every_cell():
    encoder = Encoder(load_pretrain_config("mae", ["model.preset=tiny"]).model)
    neck = encoder.neck
    c, h, w = neck.in_shape
    features, game = torch.randn(3, c, h, w), torch.tensor([0, 5, 59])
    tokens = neck_tokens(neck, features, game)
    assert tokens.shape == (3, h * w, encoder.out_dim)
    for n in range(3):
        spatial = neck.spatial_embed.weight[game[n]].view(c, h, w)
        for r, col in [(0, 0), (2, 5), (5, 3)]:
            cell = neck.mlp(neck.norm(features[n, :, r, col] * spatial[:, r, col]))
            assert torch.allclose(tokens[n, r * w + col], cell, atol=1e-5)


def test_decoder_puts_tokens_back_and_fills_mask_tokens():
    torch.manual_seed(0)
    dim = 8
    decoder = PatchDecoder(GRID, dim, 4, depth=1, heads=2, mlp_ratio=2.0)
    torch.nn.init.normal_(decoder.mask_token)
    noise = torch.rand(2, 36)
    keep_idx, restore = random_masking(noise, 5)
    latent = torch.randn(2, 1 + 5, dim)
    tokens = decoder.tokens(latent, restore)
    embedded = decoder.embed(latent)
    assert tokens.shape == (2, 37, dim)
    assert torch.allclose(tokens[:, 0], embedded[:, 0])  # CLS, no position
    for n in range(2):
        for k, j in enumerate(keep_idx[n].tolist()):
            assert torch.allclose(tokens[n, 1 + j], embedded[n, 1 + k] + decoder.pos[j])
        for j in (restore[n] >= 5).nonzero().flatten().tolist():
            assert torch.allclose(tokens[n, 1 + j], decoder.mask_token[0, 0] + decoder.pos[j])


def test_cross_attention_matches_a_hand_computation():
    torch.manual_seed(0)
    dim, heads = 8, 2
    block = CrossBlock(dim, heads, 16)
    x, ctx = torch.randn(2, 5, dim), torch.randn(2, 7, dim)
    q = block.norm(x) @ block.q.weight.T  # queries normalised, context as given
    k, v = ctx @ block.k.weight.T, ctx @ block.v.weight.T
    outs = []
    for hd in range(heads):
        s = slice(hd * dim // heads, (hd + 1) * dim // heads)
        att = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(dim // heads), dim=-1)
        outs.append(att @ v[..., s])
    expected = torch.cat(outs, -1) @ block.proj.weight.T + block.proj.bias
    assert torch.allclose(block.cross(x, ctx), expected, atol=1e-5)
    assert torch.allclose(block(x, ctx), block.block(x + expected), atol=1e-5)


def test_heads_must_divide_the_token_width():
    with pytest.raises(UsageError, match="divisible"):
        build("mae", "objective.enc_heads=3")


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("name", ["mae", "siammae"])
def test_two_ranks_average_to_the_single_process_loss(name):
    """No cross-sample terms: with the global draw sliced per rank (masks and augmentation), the mean
    of two half-batch losses is the whole batch's loss, so DDP's gradient average is exact."""
    objective = build(name)
    batch = random_batch(8, t=2)
    with torch.no_grad():
        whole, _ = objective(batch, BatchRandom(7, 3, slice(None), 8))
        halves = []
        for rows in (slice(0, 4), slice(4, 8)):
            part = {k: v[rows] for k, v in batch.items()}
            halves.append(objective(part, BatchRandom(7, 3, rows, 8))[0])
    assert torch.allclose(whole, torch.stack(halves).mean(), rtol=1e-5)
