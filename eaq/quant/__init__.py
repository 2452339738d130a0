"""Pure quantization numerics: granularity, primitives, observers and the fake quantizer."""

from eaq.quant import clipping  # noqa: F401  (registers the kl and aciq observers)
from eaq.quant.granularity import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    block_size,
    block_view,
    blocks_2d,
    format_granularity,
    parse_granularity,
    reduce_blocks,
    scale_shape,
)
from eaq.quant.observers import (
    EMAObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    create_observer,
    observer_names,
    register_observer,
)
from eaq.quant.primitives import (
    MAX_BITS,
    MIN_BITS,
    choose_qparams,
    dequantize,
    fake_quantize,
    quant_range,
    quantize,
)
from eaq.quant.quantizer import Quantizer, QuantSpec, calibration

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "EMAObserver",
    "Granularity",
    "MinMaxObserver",
    "MSEObserver",
    "Observer",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PercentileObserver",
    "QuantSpec",
    "Quantizer",
    "block_size",
    "block_view",
    "blocks_2d",
    "calibration",
    "choose_qparams",
    "create_observer",
    "dequantize",
    "fake_quantize",
    "format_granularity",
    "observer_names",
    "parse_granularity",
    "quant_range",
    "quantize",
    "reduce_blocks",
    "register_observer",
    "scale_shape",
]
