"""eaq: energy-aware post-training quantization and mixed precision for PyTorch vision models.

The public API. Functions that change a model in place end in ``_``.

Quantize any model, here torchvision's ResNet-18 (not in eaq's registry), on your own data:

>>> import torch, torchvision, eaq
>>> model = torchvision.models.resnet18(num_classes=10).eval()
>>> images = torch.randn(16, 3, 32, 32)
>>> batches = [(images, torch.zeros(16, dtype=torch.long))]  # (images, labels), your loader
>>> plan = eaq.Plan.uniform(w_bits=4, a_bits=8)                # first/last layer stay 8-bit
>>> summary = eaq.quantize_model_(model, plan, batches, method="ptq")
>>> summary.n_quantized, summary.width_counts()
(21, {'W8A8': 2, 'W4A8': 19})
>>> eaq.evaluate(model, batches, progress=False).n_images
16

Its modelled energy relative to FP32, from one forward pass's counts:

>>> stats = eaq.collect_stats(torchvision.models.resnet18(num_classes=10), 32)
>>> round(eaq.plan_energy(stats, plan, "horowitz45nm").relative_energy, 3)
0.124

Save it, reload it bit for bit, export it to ONNX:

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> spec = eaq.ModelSpec("resnet18-tv", 10, 32, (0.5,) * 3, (0.5,) * 3)
>>> build = lambda: torchvision.models.resnet18(num_classes=10)  # the float architecture
>>> _ = eaq.save_quantized(model, folder / "q", spec=spec, plan=plan, fresh=build())
>>> loaded, meta = eaq.load_quantized(folder / "q", model=build())
>>> bool(torch.equal(loaded(images), model(images)))
True
>>> eaq.export_onnx(loaded, folder / "q.onnx", input_shape=(3, 32, 32)).opset
21
"""

__version__ = "0.1.0"

from eaq.data import calibration_batches, eval_batches, load_dataset
from eaq.deploy import (
    ModelSpec,
    OnnxModel,
    export_onnx,
    load_quantized,
    save_quantized,
)
from eaq.energy import (
    CostProfile,
    collect_stats,
    get_profile,
    plan_energy,
    profile_names,
    register_profile,
)
from eaq.errors import EaqError
from eaq.evaluate import EvalResult, evaluate
from eaq.methods import list_methods, method_names, quantize_model_, register_method
from eaq.mixed import (
    Sensitivity,
    StrategyContext,
    layer_sensitivity,
    make_plans,
    pareto_front,
    strategy_names,
)
from eaq.models import ModelInfo, create_model, list_models, register_model
from eaq.nn import calibrate_, quantizable_layers, quantize_
from eaq.pipeline import PipelineResult, quantize_and_evaluate
from eaq.plan import LayerConfig, Plan
from eaq.quant import Quantizer, QuantSpec, calibration

__all__ = [
    "CostProfile",
    "EaqError",
    "EvalResult",
    "LayerConfig",
    "ModelInfo",
    "ModelSpec",
    "OnnxModel",
    "PipelineResult",
    "Plan",
    "QuantSpec",
    "Quantizer",
    "Sensitivity",
    "StrategyContext",
    "__version__",
    "calibrate_",
    "calibration",
    "calibration_batches",
    "collect_stats",
    "create_model",
    "eval_batches",
    "evaluate",
    "export_onnx",
    "get_profile",
    "layer_sensitivity",
    "list_methods",
    "list_models",
    "load_dataset",
    "load_quantized",
    "make_plans",
    "method_names",
    "pareto_front",
    "plan_energy",
    "profile_names",
    "quantizable_layers",
    "quantize_",
    "quantize_and_evaluate",
    "quantize_model_",
    "register_method",
    "register_model",
    "register_profile",
    "save_quantized",
    "strategy_names",
]
