import sys

from .models_cli import set_aside_invalid_endpoint

set_aside_invalid_endpoint()  # before anything imports huggingface_hub, which parses HF_ENDPOINT on import

from .cli import main  # noqa: E402

sys.exit(main())
