"""Backend preprocessing on copies of the partitions that share the weights instead of duplicating them.

Before a backend preprocesses, ExecuTorch deep-copies every partition's program, all partitions at once and
weights included, in case the backend rewrites the graph. The backend then serializes its own copy of the
weights, so a 1B fp32 export held three: the model's, ExecuTorch's copies and XNNPACK's (15.3 GiB peak). Here
the graphs are still copied but the weight tensors are shared: XNNPACK only reads them. The programs come out
byte for byte the same (tests/test_mobile_8da4w.py).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch


def copy_sharing_weights(cls, program, compile_specs):
    """`BackendDetails.copy_exported_program_for_preprocess`, with the program's tensors passed through."""
    tensors = [*program.state_dict.values(), *program.constants.values()]
    memo = {id(t): t for t in tensors if isinstance(t, torch.Tensor)}  # deepcopy returns memo hits as they are
    return copy.deepcopy(program, memo)


@contextlib.contextmanager
def weights_shared_with(backend_cls: type) -> Iterator[None]:
    """While active, `backend_cls.preprocess` receives partitions whose weights are the caller's own tensors."""
    own = backend_cls.__dict__.get("copy_exported_program_for_preprocess")  # None: inherited from BackendDetails
    backend_cls.copy_exported_program_for_preprocess = classmethod(copy_sharing_weights)
    try:
        yield
    finally:
        if own is None:
            del backend_cls.copy_exported_program_for_preprocess
        else:
            backend_cls.copy_exported_program_for_preprocess = own
