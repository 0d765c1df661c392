"""Every backbone kind trains the shapes text-to-image model as well as the Transformer (issue 3)."""
import json

import pytest

from conftest import write_tiny_lm_config
from latentlm.training.lm import train_lm

pytestmark = pytest.mark.slow

STEPS = 300
EXTRA = {
    "transformer": "",
    "retnet": ", kind: retnet, chunk_size: 16",
    "yoco": ", kind: yoco, chunk_size: 16",
    "longnet": ", kind: longnet, segment_lengths: [32, 64, 128], dilation_rates: [1, 2, 4]",
    "bitnet": ", kind: bitnet",
}


@pytest.fixture(scope="module")
def final_losses(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir):
    out = {}
    for kind, extra in EXTRA.items():
        d = tmp_path_factory.mktemp(kind)
        config = write_tiny_lm_config(d / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, STEPS, extra)
        train_lm(config, d / "run", progress=False)
        losses = [json.loads(line)["loss"] for line in (d / "run" / "metrics.jsonl").read_text().splitlines()]
        out[kind] = sum(losses[-25:]) / 25  # the loss at step 300, smoothed over the last 25 steps
    return out


@pytest.mark.parametrize("kind", ["retnet", "yoco", "longnet", "bitnet"])
def test_loss_at_step_300_is_within_15_percent_of_the_transformer(final_losses, kind):
    assert final_losses[kind] <= 1.15 * final_losses["transformer"], final_losses


def test_the_models_learned(final_losses):
    """300 steps of every kind end well below the loss of an untrained model (about 1.5 here)."""
    assert all(v < 1.2 for v in final_losses.values()), final_losses
