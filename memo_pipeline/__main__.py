import signal
import sys

from .models_cli import set_aside_invalid_endpoint

set_aside_invalid_endpoint()  # before anything imports huggingface_hub, which parses HF_ENDPOINT on import

from .cli import main  # noqa: E402
from .streaming import STOP_SIGNALS  # noqa: E402

try:
    code = main()
finally:
    # the run is over and its files are closed: a late second Ctrl-C or SIGTERM must not turn the
    # interpreter's shutdown into a traceback
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
sys.exit(code)
