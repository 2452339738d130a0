"""Post-training quantization methods, chosen by name (``--method``).

A method takes a float model, a :class:`~eaq.plan.Plan` and calibration batches, and returns
the model quantized and calibrated, in place. Every method honours the plan, so methods compose
with mixed-precision plans. ``eaq methods`` lists them.
"""

import eaq.methods.adaround  # noqa: F401  (registers adaround)
import eaq.methods.bias_correction  # noqa: F401  (registers biascorr)
import eaq.methods.equalization  # noqa: F401  (registers cle)
import eaq.methods.folding  # noqa: F401  (registers bnfold)
import eaq.methods.gptq  # noqa: F401  (registers gptq)
import eaq.methods.ranking  # noqa: F401  (registers ranking)
import eaq.methods.reconstruction  # noqa: F401  (registers brecq, qdrop)
import eaq.methods.smoothquant  # noqa: F401  (registers smoothquant, repq)
from eaq.methods.registry import (
    Method,
    check_method_applies,
    check_method_model,
    check_method_options,
    check_method_plan,
    check_shared_observers,
    get_method,
    list_methods,
    method_chain,
    method_names,
    plain_ptq_,
    quantize_model_,
    register_method,
)

__all__ = [
    "Method",
    "check_method_applies",
    "check_method_model",
    "check_method_options",
    "check_method_plan",
    "check_shared_observers",
    "method_chain",
    "get_method",
    "list_methods",
    "method_names",
    "plain_ptq_",
    "quantize_model_",
    "register_method",
]
