import torch

from latentlm.sequence import Latent, Text, collate


def test_collate_left_pads_and_marks_slots():
    z = torch.randn(3, 2)
    seqs = [[Text([2, 7, 8, 5]), Latent("image", z), Text([6, 3])], [Text([2, 5]), Latent("image", z), Text([6])]]
    b = collate(seqs, latent_dim=2, pad_id=0)
    assert b.ids.shape == (2, 9) and b.latents.shape == (2, 9, 2)
    assert b.valid[0].all() and b.valid[1].tolist() == [False] * 3 + [True] * 6
    assert b.is_latent[0].tolist() == [False] * 4 + [True] * 3 + [False] * 2
    assert torch.equal(b.latents[0, 4:7], z) and torch.equal(b.latents[1, 5:8], z)
    # the position before each latent holds that latent's index in its span
    assert b.slot[0].tolist() == [-1, -1, -1, 0, 1, 2, -1, -1, -1]
    assert b.slot[1].tolist() == [-1, -1, -1, -1, 0, 1, 2, -1, -1]


def test_open_span_sets_only_the_first_slot():
    b = collate([[Text([2, 5]), Latent("image", torch.zeros(0, 4))]], latent_dim=4, pad_id=0)
    assert b.ids.tolist() == [[2, 5]] and b.slot.tolist() == [[-1, 0]]
