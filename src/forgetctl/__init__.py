"""forgetctl: process deletion requests against a deployed language model."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft and by the int4 check) warns at import that optional
# "kernels-community" CPU kernels are missing; forgetctl only uses its reference kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
