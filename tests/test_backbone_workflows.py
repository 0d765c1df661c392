"""A model trained with any backbone works with every workflow: `--backbone` on train and generate,
the Session, seeded determinism, and save/load (issue 3)."""
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import write_tiny_lm_config
from latentlm.cli.main import cli
from test_cli import assert_user_error, run_cli
from latentlm.errors import CheckpointError
from latentlm.model import LatentLM
from latentlm.workflows.session import Session

KINDS = ["retnet", "yoco", "longnet", "bitnet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir):
    """One tiny 4-step model per kind, each trained through `latentlm train --backbone KIND`."""
    root = tmp_path_factory.mktemp("kinds")
    config = write_tiny_lm_config(root / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=4)
    runner = CliRunner()
    out = {}
    for kind in KINDS:
        result = runner.invoke(cli, ["train", str(config), "-o", str(root / kind), "--backbone", kind])
        assert result.exit_code == 0, result.output
        out[kind] = root / kind / "final"
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_train_backbone_flag_sets_the_kind(trained, kind):
    assert LatentLM.from_pretrained(trained[kind]).config.backbone.kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_backbone(trained, kind, tmp_path):
    out = tmp_path / f"{kind}.png"
    result = CliRunner().invoke(cli, ["generate", "--prompt", "a red circle above a blue square", "--steps", "2",
                                      "--model", str(trained[kind]), "--backbone", kind, "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_session_is_seeded_with_every_backbone(trained, kind):
    session = Session(str(trained[kind]), steps=2)
    a = session.run("draw a blue square", seed=3)
    b = session.run("draw a blue square", seed=3)
    assert a.plan.workflow == "text-to-image" and a.image.size == (64, 64)
    assert a.image.tobytes() == b.image.tobytes()


def test_generate_rejects_a_backbone_the_model_was_not_trained_with(trained, tmp_path):
    proc = run_cli("generate", "--prompt", "a red circle", "--model", str(trained["retnet"]), "--backbone", "yoco",
                   "-o", str(tmp_path / "x.png"))
    assert_user_error(proc, "trained with the retnet backbone, not yoco")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(CheckpointError, match="--backbone yoco"):
        LatentLM.from_pretrained(trained["retnet"], backbone="yoco")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_identity_with_every_backbone(trained, kind, tmp_path):
    model = LatentLM.from_pretrained(trained[kind])
    model.save_pretrained(tmp_path / "copy")
    again = LatentLM.from_pretrained(tmp_path / "copy")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_train_backbone_flag_revalidates_the_config(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    """A GQA YOCO config switched to RetNet (which has no KV heads) is a user error, not a silent drop."""
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=1,
                                  backbone_extra=", kind: yoco, n_kv_heads: 2")
    result = run_cli("train", str(config), "-o", str(tmp_path / "run"), "--backbone", "retnet")
    assert_user_error(result, "n_kv_heads")
    assert not (tmp_path / "run" / "final").exists()


def test_yoco_with_an_fp16_global_kv_trains_saves_and_generates(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    """`backbone: {kind: yoco, kv_dtype: float16}` in a config: training (straight-through rounding),
    save/load keeping the field, and seeded generation through the Session with an fp16 cache."""
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=4,
                                  backbone_extra=", kind: yoco, kv_dtype: float16")
    result = CliRunner().invoke(cli, ["train", str(config), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    model = LatentLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.backbone.kind == "yoco" and model.config.backbone.kv_dtype == "float16"
    session = Session(str(tmp_path / "run" / "final"), steps=2)
    a = session.run("draw a blue square", seed=3)
    b = session.run("draw a blue square", seed=3)
    assert a.image.size == (64, 64) and a.image.tobytes() == b.image.tobytes()
