"""Character language models trained by lstmkit and shipped inside the package.

One model so far: ``"neko"``, a small LSTM trained on Natsume Soseki's 吾輩は猫である (public
domain), so that the study note's sentence can be completed, and its forget gate looked at, right
after ``pip install``::

    from lstmkit.pretrained import load_pretrained
    from lstmkit.sampling import sample

    model, vocab, meta = load_pretrained()          # the "neko" model, in eval mode
    print(sample(model, vocab, 20, prime="とてもお腹が空いたから何か", temperature=0, seed=0))

The command line uses it when no checkpoint is given (``lstmkit sample --prime ...``,
``lstmkit gates --text ...``, ``lstmkit explore --text ...``). Each model is an ordinary lstmkit
checkpoint directory (``checkpoint.json`` + ``model.safetensors``, the weights stored as float16
to keep the package small and read back as float32) with its model card, ``MODEL_CARD.md``: the
data, the settings, the command that trained it and its held-out loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lstmkit.models import CharLM
from lstmkit.text import Vocabulary
from lstmkit.train import load_charlm

__all__ = ["PRETRAINED", "load_pretrained", "model_card", "pretrained_path"]

#: The bundled models: name -> one-line description.
PRETRAINED: dict[str, str] = {
    "neko": "1-layer LSTM character model of 吾輩は猫である (Natsume Soseki), Japanese",
}

_ROOT = Path(__file__).resolve().parent / "data" / "pretrained"


def pretrained_path(name: str = "neko") -> Path:
    """The checkpoint directory of a bundled model (``checkpoint.json``, ``MODEL_CARD.md``, ...).

    Raises:
        ValueError: no bundled model has that name.
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"there is no bundled model named {name!r}; the bundled models are "
            f"{', '.join(repr(n) for n in PRETRAINED)}"
        )
    return _ROOT / name


def load_pretrained(name: str = "neko") -> tuple[CharLM, Vocabulary, dict[str, Any]]:
    """Load a bundled model: ``(model, vocabulary, meta)``, as :func:`lstmkit.train.load_charlm`.

    The model is float32 and in eval mode; ``meta`` holds the training settings and history.
    Its LSTM runs on the readable reference recurrence (``fast=False``): reading one text at a
    time it needs no fused kernel, so nothing is compiled on first use and a fresh install
    answers in seconds.
    """
    trained, vocab, meta = load_charlm(pretrained_path(name))
    model = CharLM(**trained.config(), fast=False)
    model.load_state_dict(trained.params)
    model.eval()
    return model, vocab, meta


def model_card(name: str = "neko") -> str:
    """The model card of a bundled model (markdown): data, settings, held-out loss."""
    return (pretrained_path(name) / "MODEL_CARD.md").read_text(encoding="utf-8")
