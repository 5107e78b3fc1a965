"""Image modality of MAP: patch tokeniser, pretraining models, classifier, ImageNet reader,
official-checkpoint conversion, reconstruction pictures. Importing the package registers its models,
datasets and the modality (``modality.py``: what the tools need)."""
from . import classifier, convert, data, modality, models, tokenizer  # noqa: F401  (registration)
from .classifier import MAPClassifier, get_cls_idx, map_classifier
from .convert import from_official, to_official
from .models import MAPImagePretrainer, map_pretrain
from .tokenizer import ImagePatchTokenizer, patchify, unpatchify

__all__ = [
    "ImagePatchTokenizer", "MAPClassifier", "MAPImagePretrainer", "from_official", "get_cls_idx",
    "map_classifier", "map_pretrain", "patchify", "to_official", "unpatchify",
]
