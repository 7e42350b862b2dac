"""Models: one factory over kdistill's students, torchvision and timm."""

from kdistill.models.reference.deploy_form import deploy_form
from kdistill.models.registry import available_models, build_model, find_head

__all__ = ["available_models", "build_model", "deploy_form", "find_head"]
