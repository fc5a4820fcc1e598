"""Models: the image encoder, task heads and checkpoint loading (torch is imported here).

Usage: ``from renalclip_lib.models import ImageEncoder, load_image_encoder``
"""
from .checkpoints import LoadedCheckpoint, load_checkpoint, load_image_encoder, load_task_model, save_image_model
from .heads import AttributeHead, ClassifierHead, CoxHead
from .image_encoder import EMBED_DIM, FEATURE_DIM, ImageEncoder
from .image_model import ImageTaskModel

__all__ = ["AttributeHead", "ClassifierHead", "CoxHead", "EMBED_DIM", "FEATURE_DIM", "ImageEncoder", "ImageTaskModel",
           "LoadedCheckpoint", "load_checkpoint", "load_image_encoder", "load_task_model",
           "save_image_model"]
