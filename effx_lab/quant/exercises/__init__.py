"""Checkers for chapter 2's exercises, one module per notebook: fundamentals (02.1), outliers (02.2), llm_int8
(02.3), fine_grained (02.4), second_order (02.5), smoothquant (02.6), qat (02.7)."""
from __future__ import annotations

from .fine_grained import (  # fine_grained
    check_head_quantize,
    check_peg_order,
    check_tokenwise_quantize,
)
from .fundamentals import (  # fundamentals
    check_affine_qparams,
    check_quantize_per_group,
    check_quantize_symmetric,
)
from .llm_int8 import (  # llm_int8
    check_llm_int8_matmul,
    check_vectorwise_matmul,
    check_vectorwise_quantize,
)
from .outliers import (  # outliers
    check_gobo_split,
    check_lloyd_step,
    check_outlier_ratio,
)
from .qat import (  # qat
    check_distillation_loss,
    check_ste_grad,
)
from .second_order import (  # second_order
    check_allocate_bits,
    check_gptq_quantize_simple,
    check_hutchinson_trace,
)
from .smoothquant import (  # smoothquant
    check_fold_smoothing,
    check_smooth_scales,
)

__all__ = [
    "check_affine_qparams",
    "check_allocate_bits",
    "check_distillation_loss",
    "check_fold_smoothing",
    "check_gobo_split",
    "check_gptq_quantize_simple",
    "check_head_quantize",
    "check_hutchinson_trace",
    "check_llm_int8_matmul",
    "check_lloyd_step",
    "check_outlier_ratio",
    "check_peg_order",
    "check_quantize_per_group",
    "check_quantize_symmetric",
    "check_smooth_scales",
    "check_ste_grad",
    "check_tokenwise_quantize",
    "check_vectorwise_matmul",
    "check_vectorwise_quantize",
]
