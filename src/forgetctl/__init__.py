"""forgetctl: process deletion requests against a deployed language model."""

import logging
import warnings

__version__ = "0.1.0"

__all__ = ["Forgetctl", "__version__"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # The API loads the model stack (torch): only when asked for, so that `forgetctl
    # request list` and `import forgetctl` start fast.
    if name == "Forgetctl":
        from forgetctl.api import Forgetctl

        return Forgetctl
    raise AttributeError(f"module 'forgetctl' has no attribute {name!r}")


# Third-party noise on every command. bitsandbytes (imported by peft and by the int4
# check) warns at import that optional "kernels-community" CPU kernels are missing;
# forgetctl only uses its reference kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# peft reads transformers' deprecated `is_gradient_checkpointing` on every adapter it wraps.
warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
