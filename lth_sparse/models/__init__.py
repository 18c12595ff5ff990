"""Model registry: every model is built of plain torch layers, initialised as
OpenLTH does and converted to masked layers.

    from lth_sparse.models import create_model
    model = create_model("lenet300", data.input_shape, data.num_classes)

Registered: ``lenet300``, ``lenet5``, ``conv2``, ``conv4``, ``conv6``, ``vgg11``,
``vgg16``, ``vgg19``, ``resnet20``, ``resnet18``, ``resnet34``, ``resnet50``,
``mlp``. Add one with ``@register_model(name)`` on a
``build(input_shape, num_classes, **options) -> nn.Module``.
"""

from . import convnets, mlp, resnet, vgg  # noqa: F401  (register the builders)
from .registry import (
    INITIALIZERS,
    MODELS,
    ModelOptionError,
    available_models,
    check_model_options,
    create_model,
    image_shape,
    initialize,
    register_model,
)

__all__ = [
    "INITIALIZERS",
    "MODELS",
    "ModelOptionError",
    "available_models",
    "check_model_options",
    "create_model",
    "image_shape",
    "initialize",
    "register_model",
]
