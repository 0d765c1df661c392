"""Backbone configs are a discriminated union on `kind`: each kind's config holds only its own fields."""
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import latentlm
from latentlm.backbones import (
    BACKBONE_CONFIGS, BackboneConfig, BitNetConfig, LongNetConfig, RetNetConfig, TransformerConfig, YOCOConfig,
    drop_legacy_fields, with_kind,
)
from latentlm.checkpoint import read_config
from latentlm.model_config import ModelConfig

SHARED = {"kind", "d_model", "n_layers", "n_heads", "ffn_mult", "ffn_act", "rope_theta", "norm_eps", "ternary"}
OWN = {
    "transformer": {"n_kv_heads", "kv_dtype"},
    "bitnet": {"n_kv_heads", "kv_dtype"},
    "retnet": {"chunk_size"},
    "yoco": {"n_kv_heads", "kv_dtype", "chunk_size", "self_decoder", "window"},
    "longnet": {"segment_lengths", "dilation_rates"},
}
MODELS = {"transformer": TransformerConfig, "bitnet": BitNetConfig, "retnet": RetNetConfig, "yoco": YOCOConfig,
          "longnet": LongNetConfig}
# A value other than the default for each kind's own fields (the round trip must keep them).
SET = {
    "transformer": dict(n_kv_heads=2, kv_dtype="float16"),
    "bitnet": dict(n_kv_heads=1, kv_dtype="bfloat16", ternary=True, ffn_act="relu2"),
    "retnet": dict(chunk_size=16),
    "yoco": dict(n_kv_heads=2, kv_dtype="float16", chunk_size=8, self_decoder="sliding_window", window=32),
    "longnet": dict(segment_lengths=[32, 64], dilation_rates=[1, 2]),
}
SHIPPED = Path(latentlm.__file__).parent / "pretrained" / "shapes-tiny"


@pytest.mark.parametrize("kind", list(OWN))
def test_the_dump_of_each_kind_holds_only_its_fields(kind):
    config = BackboneConfig(kind=kind, d_model=64)
    assert type(config) is MODELS[kind] and isinstance(config, BackboneConfig)
    assert set(config.model_dump()) == SHARED | OWN[kind]
    assert set(ModelConfig(vocab_size=100, backbone=config).model_dump(mode="json")["backbone"]) == SHARED | OWN[kind]
    assert BACKBONE_CONFIGS[kind] is MODELS[kind]


def test_the_transformer_config_has_no_other_kinds_fields():
    saved = ModelConfig(vocab_size=100).model_dump(mode="json")["backbone"]
    for field in ("dilation_rates", "segment_lengths", "self_decoder", "window", "chunk_size"):
        assert field not in saved


@pytest.mark.parametrize("kind,field,value,owners", [
    ("transformer", "window", 16, "yoco"),
    ("transformer", "segment_lengths", [4, 8], "longnet"),
    ("transformer", "chunk_size", 16, "retnet and yoco"),
    ("retnet", "n_kv_heads", 2, "transformer, bitnet and yoco"),
    ("longnet", "kv_dtype", "float16", "transformer, bitnet and yoco"),
    ("yoco", "dilation_rates", [1, 2], "longnet"),
    ("bitnet", "self_decoder", "sliding_window", "yoco"),
])
def test_a_field_of_another_kind_is_an_error_naming_it(kind, field, value, owners):
    message = f"{field} applies to {owners}; kind '{kind}' has no {field}"
    with pytest.raises(ValidationError, match=message):
        BackboneConfig(kind=kind, **{field: value})
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate({"vocab_size": 100, "backbone": {"kind": kind, field: value}})


def test_an_unknown_field_or_kind_is_an_error():
    with pytest.raises(ValidationError, match="n_head\n.*Extra inputs are not permitted"):
        BackboneConfig(n_head=4)
    with pytest.raises(ValidationError, match="kind must be one of 'transformer', 'retnet', 'yoco', 'longnet' or"):
        ModelConfig.model_validate({"vocab_size": 100, "backbone": {"kind": "mamba"}})
    with pytest.raises(ValidationError, match="kind"):
        BackboneConfig(kind="mamba")


def test_every_check_is_kept():
    with pytest.raises(ValidationError, match="divisible"):
        BackboneConfig(kind="retnet", d_model=63, n_heads=4)
    with pytest.raises(ValidationError, match="must be even for rotary embeddings"):
        BackboneConfig(kind="longnet", d_model=36, n_heads=4)
    with pytest.raises(ValidationError, match="n_heads=6 must be a multiple of n_kv_heads=4"):
        BackboneConfig(kind="yoco", d_model=48, n_heads=6, n_kv_heads=4)
    with pytest.raises(ValidationError, match="one entry per pattern"):
        BackboneConfig(kind="longnet", segment_lengths=[8, 16], dilation_rates=[1])
    assert BackboneConfig(kind="yoco", n_heads=4, n_kv_heads=2).kv_heads == 2
    assert BackboneConfig(kind="retnet", n_heads=4).kv_heads == 4
    assert BackboneConfig(kind="longnet", d_model=64, n_heads=4).head_dim == 16
    assert BackboneConfig(d_model=48, ffn_mult=2.0).ffn_dim == 96


def test_the_default_kind_is_transformer():
    assert type(BackboneConfig()) is TransformerConfig and BackboneConfig().kind == "transformer"
    assert type(BackboneConfig(d_model=64)) is TransformerConfig
    assert type(ModelConfig(vocab_size=100).backbone) is TransformerConfig
    config = ModelConfig.model_validate({"vocab_size": 100, "backbone": {"d_model": 64, "n_kv_heads": 2}})
    assert type(config.backbone) is TransformerConfig and config.backbone.kv_heads == 2
    assert type(BackboneConfig.model_validate({"d_model": 64})) is TransformerConfig


def test_a_yaml_backbone_without_kind_is_a_transformer(tmp_path):
    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LMTrainConfig

    path = tmp_path / "lm.yaml"
    path.write_text("tokenizer: t.model\ncodec: vae\nbackbone:\n  d_model: 64\n  n_heads: 4\n")
    assert type(load_yaml_config(path, LMTrainConfig).backbone) is TransformerConfig


@pytest.mark.parametrize("kind", list(OWN))
def test_the_union_round_trips_through_json(kind):
    config = ModelConfig(vocab_size=100, backbone=BackboneConfig(kind=kind, d_model=64, n_heads=4, **SET[kind]))
    again = ModelConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert type(again.backbone) is MODELS[kind] and again == config
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config
    assert BackboneConfig.model_validate_json(config.backbone.model_dump_json()) == config.backbone


# The backbone section of a config.json saved when one model held every kind's field (at its default):
# shapes-tiny's own until stage 5n was shipped.
LEGACY_TRANSFORMER = {"chunk_size": 64, "d_model": 256, "dilation_rates": [1, 2, 4, 8], "ffn_act": "swiglu",
                      "ffn_mult": 8 / 3, "kind": "transformer", "n_heads": 4, "n_layers": 4, "norm_eps": 1e-06,
                      "rope_theta": 10000.0, "segment_lengths": [2048, 4096, 8192, 16384],
                      "self_decoder": "gated_retention", "ternary": False, "window": 1024}


def test_a_legacy_config_loads(tmp_path):
    raw = read_config(SHIPPED) | {"backbone": LEGACY_TRANSFORMER}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = ModelConfig.model_validate(read_config(tmp_path))
    assert type(config.backbone) is TransformerConfig
    assert set(config.model_dump()["backbone"]) == SHARED | OWN["transformer"]


def test_the_shipped_model_loads():
    from latentlm.model import LatentLM

    model = LatentLM.from_pretrained("shapes-tiny")
    assert model.config.backbone.kind == "transformer" and "window" not in model.config.model_dump()["backbone"]


def test_legacy_configs_drop_only_the_old_defaults():
    legacy = {"kind": "retnet", "d_model": 64, "n_heads": 4, "n_kv_heads": None, "kv_dtype": "float32",
              "chunk_size": 16, "self_decoder": "gated_retention", "window": 1024,
              "segment_lengths": [2048, 4096, 8192, 16384], "dilation_rates": [1, 2, 4, 8]}
    config = BackboneConfig.model_validate(legacy)
    assert type(config) is RetNetConfig and config.chunk_size == 16
    assert set(drop_legacy_fields(legacy)) == SHARED & set(legacy) | {"chunk_size"}
    # An other-kind field that differs from the old default meant something: an error naming it.
    with pytest.raises(ValidationError, match="window applies to yoco; kind 'retnet' has no window"):
        BackboneConfig.model_validate(legacy | {"window": 16})
    # Only a dict with every field old configs always saved counts as legacy.
    with pytest.raises(ValidationError, match="window applies to yoco"):
        BackboneConfig.model_validate({"kind": "retnet", "window": 1024})


def test_with_kind_keeps_the_shared_fields_and_what_the_new_kind_accepts():
    base = BackboneConfig(d_model=64, n_layers=2, n_heads=4, rope_theta=500.0)
    retnet = with_kind(base, "retnet")
    assert type(retnet) is RetNetConfig
    assert retnet.model_dump() == {**base.model_dump(exclude={"n_kv_heads", "kv_dtype"}), "kind": "retnet",
                                   "chunk_size": 64}
    assert with_kind(BackboneConfig(kind="yoco", chunk_size=8, kv_dtype="float32"), "retnet").chunk_size == 8
    assert with_kind(BackboneConfig(kind="yoco", n_kv_heads=2), "bitnet").n_kv_heads == 2
    # A field set to something the new kind cannot hold is not silently dropped.
    with pytest.raises(ValidationError, match="n_kv_heads applies to transformer, bitnet and yoco"):
        with_kind(BackboneConfig(kind="yoco", n_kv_heads=2), "retnet")
    with pytest.raises(ValidationError, match="kind"):
        with_kind(base, "mamba")
