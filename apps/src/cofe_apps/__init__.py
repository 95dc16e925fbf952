"""CoFE applications: the `cofe` command and its jobs."""

import logging

__version__ = "0.5.0"

# diffusers imports torchao (our int8 / fp8 quantiser) whenever it loads a model, and at the versions locked here the
# two complain about each other at import: diffusers 0.42 looks for tensor classes torchao 0.18 no longer has (its
# torchao checkpoint loading, which CoFE does not use), and torchao registers enums torch 2.15 already handles.
# Neither notice is something a user of `cofe` can act on; these two loggers only ever carry them.
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
