"""Networks: the timm backbone (backbone.py), necks and heads (layers.py), the encoder every objective trains
and its file format (encoder.py), the agent network every fine-tuning protocol builds on a frozen backbone
and its file format (agent.py), C51 helpers (distributional.py) and EMA targets (ema.py)."""

from atari_pb.models.encoder import Encoder, ModelConfig, export_encoder, load_encoder

__all__ = ["Encoder", "ModelConfig", "export_encoder", "load_encoder"]
