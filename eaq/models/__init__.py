"""Registered models: ``create_model(name, weights=...)`` and their :class:`ModelInfo`.

Importing this package registers ``resnet20_cifar``, ``resnet18``, ``resnet18_cifar``,
``deit_tiny``, ``deit_tiny_cifar`` and ``mobilenetv2_cifar``.
"""

from eaq.models import (  # noqa: F401  (registers models)
    mobilenet,
    resnet_cifar,
    torchvision_models,
    vit,
)
from eaq.models.registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    model_names,
    register_model,
    weights_file,
)
from eaq.models.resnet_cifar import RESIDUAL_BLOCKS, BasicBlockA, PadShortcut, ResNetCifar
from eaq.models.vit import unfuse_attention_
from eaq.models.weights import load_state_dict_file, load_weights_

__all__ = [
    "weights_file",
    "RESIDUAL_BLOCKS",
    "BasicBlockA",
    "ModelInfo",
    "PadShortcut",
    "ResNetCifar",
    "create_model",
    "get_model_info",
    "list_models",
    "load_state_dict_file",
    "load_weights_",
    "model_names",
    "register_model",
    "unfuse_attention_",
]
