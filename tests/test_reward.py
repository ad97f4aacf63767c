"""The RLSR reward: cosine of the response's and the reference's embeddings, references embedded once."""
import torch
import torch.nn.functional as F

from conftest import make_tiny_bert_dir
from rlsr.encoder import Encoder
from rlsr.reward import SimilarityReward


def test_reward_is_cosine_of_embeddings_and_history_free(tmp_path):
    enc = Encoder.from_pretrained(make_tiny_bert_dir(tmp_path / "enc"))
    responses = ["Hello there", "Tell me a joke about the road, why did the chicken cross", ""]
    refs = ["Hello! How can I help?", "Why did the chicken cross the road?", "Hello! How can I help?"]
    reward = SimilarityReward(enc)
    r, stats = reward(responses, refs)
    e = F.normalize(enc.encode(responses), dim=-1)
    ref = torch.stack([F.normalize(enc.encode([t]), dim=-1)[0] for t in refs])
    assert torch.allclose(r, (e * ref).sum(-1), atol=1e-6) and r.shape == (3,)
    assert abs(stats["reward/truncated_responses"] - 1 / 3) < 1e-6  # the tiny encoder keeps 16 word pieces
    assert len(reward._refs) == 2                            # each distinct reference embedded once
    # a reference's embedding does not depend on what else was embedded before it
    other = SimilarityReward(enc)
    other.add_references(["You are terse. " * 3, refs[1], "x"])
    assert torch.equal(other._refs[refs[1]], reward._refs[refs[1]])
