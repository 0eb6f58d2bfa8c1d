"""Fixtures for tests against a real ComfyUI (see memo_comfy_live.py for configuration).

The helper module is registered in sys.modules as `memo_comfy_live` so test modules can
`import memo_comfy_live` under pytest's importlib import mode.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("memo_comfy_live", Path(__file__).with_name("memo_comfy_live.py"))
live = importlib.util.module_from_spec(_spec)
sys.modules["memo_comfy_live"] = live
_spec.loader.exec_module(live)


@pytest.fixture(scope="session")
def comfy_instance(tmp_path_factory):
    """The running ComfyServer (started once per session, stopped at the end)."""
    live.skip_module_unless_comfyui()  # skips when COMFYUI_PATH is unset, fails when it is set but broken
    server = live.ComfyServer(tmp_path_factory.mktemp("comfy_base"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy_server(comfy_instance):
    """Base URL of the live server, e.g. http://127.0.0.1:40123."""
    return comfy_instance.url


@pytest.fixture(scope="session")
def comfy(comfy_instance):
    """ComfyClient bound to the live server."""
    return live.ComfyClient(comfy_instance.url, comfy_instance)


@pytest.fixture
def queue_and_wait(comfy):
    """queue_and_wait(prompt_dict, timeout=300) -> history entry; node errors fail the test."""
    return comfy.queue_and_wait


@pytest.fixture
def upload_file(comfy):
    """upload_file(path, kind='input', subfolder='') -> name to use in a node input."""
    return comfy.upload_file
