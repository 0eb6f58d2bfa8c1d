"""The checks the ComfyUI web frontend runs on a workflow before loading it, in Python.

Written by hand from the zod schema of the frontend that ComfyUI 0.8.0 pins
(`comfyui-frontend-package==1.35.9`, bundled in static/assets/index-*.js: `validateComfyWorkflow`,
`zComfyWorkflow` and the schemas it is built from; zod's own `uuid` regex and `url` check are in
static/assets/vendor-other-*.js). When validation fails the frontend shows
"Invalid workflow against zod schema: ..." as an alert, so a shipped workflow must pass all of it.

`validate_workflow(data)` returns the list of problems (empty when the frontend would accept the
file), each as "path: message". Only the format the frontend itself writes, `version` 0.4 (LiteGraph
VERSION), is covered; a version-1 graph or one with subgraph definitions is reported as not
covered rather than passed. zod semantics kept: `optional` allows a missing key but not null,
unknown keys pass, numbers are JSON numbers (not booleans).
"""
from __future__ import annotations

import math
import re

FRONTEND_VERSION = "1.35.9"
LITEGRAPH_VERSION = 0.4

# zod 3's uuid check, as bundled.
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{12}$",
                     re.IGNORECASE)
# `new URL(x)` needs an absolute URL: a scheme, then something.
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
REPO_LIKE_ID_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?$")
GITHUB_USER_RE = re.compile(r"^(?!-)(?!.*--)[a-zA-Z0-9-]+(?<!-)$")
GIT_HASH_RE = re.compile(r"^[0-9a-f]{4,40}$", re.IGNORECASE)
SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([\da-z-]+(?:\.[\da-z-]+)*))?"
                       r"(?:\+([\da-z-]+(?:\.[\da-z-]+)*))?$")
RENDERER_TYPES = ("LG", "Vue")

_MISSING = object()


class _Checker:
    def __init__(self):
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> bool:
        self.problems.append(f"{path or '<root>'}: {message}")
        return False

    # ---- primitives
    @staticmethod
    def _is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))

    def number(self, v, path, integer=False) -> bool:
        if not self._is_number(v):
            return self.fail(path, f"expected number, got {v!r}")
        if integer and not float(v).is_integer():
            return self.fail(path, f"expected integer, got {v!r}")
        return True

    def string(self, v, path) -> bool:
        return True if isinstance(v, str) else self.fail(path, f"expected string, got {v!r}")

    def boolean(self, v, path) -> bool:
        return True if isinstance(v, bool) else self.fail(path, f"expected boolean, got {v!r}")

    def obj(self, v, path) -> bool:
        return True if isinstance(v, dict) else self.fail(path, f"expected object, got {type(v).__name__}")

    def array(self, v, path, item=None) -> bool:
        if not isinstance(v, list):
            return self.fail(path, f"expected array, got {type(v).__name__}")
        ok = True
        if item is not None:
            for i, x in enumerate(v):
                ok = item(x, f"{path}[{i}]") and ok
        return ok

    def field(self, data: dict, key: str, path: str, check, optional=False, nullable=False) -> bool:
        value = data.get(key, _MISSING)
        where = f"{path}.{key}" if path else key
        if value is _MISSING:
            return True if optional else self.fail(where, "required")
        if value is None:
            return True if nullable else self.fail(where, "expected a value, got null")
        return check(value, where)

    # ---- shared schemas
    def node_id(self, v, path) -> bool:  # zNodeId: int | string
        if isinstance(v, str) or (self._is_number(v) and float(v).is_integer()):
            return True
        return self.fail(path, f"expected integer or string node id, got {v!r}")

    def slot_index(self, v, path) -> bool:  # int, or a string parseInt can read
        if self._is_number(v) and float(v).is_integer():
            return True
        if isinstance(v, str) and re.match(r"^\s*[+-]?\d", v):
            return True
        return self.fail(path, f"invalid slot index {v!r}")

    def data_type(self, v, path) -> bool:  # string | string[] | number
        if isinstance(v, str) or self._is_number(v):
            return True
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return True
        return self.fail(path, f"invalid data type {v!r}")

    def vector2(self, v, path) -> bool:
        if isinstance(v, list):
            if len(v) != 2:
                return self.fail(path, f"expected 2 numbers, got {len(v)}")
            return all([self.number(v[0], f"{path}[0]"), self.number(v[1], f"{path}[1]")])
        if isinstance(v, dict):
            return all([self.field(v, "0", path, self.number), self.field(v, "1", path, self.number)])
        return self.fail(path, f"expected [x, y], got {v!r}")

    def uuid(self, v, path) -> bool:
        if not self.string(v, path):
            return False
        return True if UUID_RE.match(v) else self.fail(path, f"Invalid uuid {v!r}")

    def model_file(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        ok = self.field(v, "name", path, self.string)
        ok = self.field(v, "url", path, self.url) and ok
        ok = self.field(v, "hash", path, self.string, optional=True) and ok
        ok = self.field(v, "hash_type", path, self.string, optional=True) and ok
        return self.field(v, "directory", path, self.string) and ok

    def url(self, v, path) -> bool:
        if not self.string(v, path):
            return False
        return True if URL_RE.match(v) else self.fail(path, f"Invalid url {v!r}")

    def link(self, v, path) -> bool:  # [id, origin, origin_slot, target, target_slot, type]
        if not isinstance(v, list) or len(v) != 6:
            return self.fail(path, f"expected a 6-item link, got {v!r}")
        return all([self.number(v[0], f"{path}[0]"), self.node_id(v[1], f"{path}[1]"),
                    self.slot_index(v[2], f"{path}[2]"), self.node_id(v[3], f"{path}[3]"),
                    self.slot_index(v[4], f"{path}[4]"), self.data_type(v[5], f"{path}[5]")])

    def link_object(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, "id", path, self.number), self.field(v, "origin_id", path, self.node_id),
                    self.field(v, "origin_slot", path, self.slot_index), self.field(v, "target_id", path, self.node_id),
                    self.field(v, "target_slot", path, self.slot_index), self.field(v, "type", path, self.data_type),
                    self.field(v, "parentId", path, self.number, optional=True)])

    def reroute(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        ok = self.field(v, "id", path, self.number)
        ok = self.field(v, "parentId", path, self.number, optional=True) and ok
        ok = self.field(v, "pos", path, self.vector2) and ok
        ok = self.field(v, "linkIds", path, lambda x, p: self.array(x, p, self.number), optional=True,
                        nullable=True) and ok
        return self.field(v, "floating", path, self._floating, optional=True) and ok

    def _floating(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return self.field(v, "slotType", path, lambda x, p: x in ("input", "output") or self.fail(p, f"{x!r}"))

    # ---- nodes
    def node_input(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, "name", path, self.string), self.field(v, "type", path, self.data_type),
                    self.field(v, "link", path, self.number, optional=True, nullable=True),
                    self.field(v, "slot_index", path, self.slot_index, optional=True)])

    def node_output(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, "name", path, self.string), self.field(v, "type", path, self.data_type),
                    self.field(v, "links", path, lambda x, p: self.array(x, p, self.number), optional=True,
                               nullable=True),
                    self.field(v, "slot_index", path, self.slot_index, optional=True)])

    def flags(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, key, path, self.boolean, optional=True)
                    for key in ("collapsed", "pinned", "allow_interaction", "horizontal", "skip_repeated_outputs")])

    def repo_like_id(self, v, path) -> bool:
        if not self.string(v, path):
            return False
        if not 1 <= len(v) <= 100 or not REPO_LIKE_ID_RE.match(v) or v[0] in "_-." or v[-1] in "_-.":
            return self.fail(path, f"invalid id {v!r}")
        return True

    def aux_id(self, v, path) -> bool:
        parts = v.split("/") if isinstance(v, str) else []
        if len(parts) != 2 or not all(parts):
            return self.fail(path, f"Invalid format {v!r}: must be 'github-user/repo-name'")
        user, repo = parts
        if not (1 <= len(user) <= 39 and GITHUB_USER_RE.match(user)):
            return self.fail(path, f"invalid GitHub user in {v!r}")
        return self.repo_like_id(repo, path)

    def pack_version(self, v, path) -> bool:
        if v == "unknown":
            return True
        if not self.string(v, path):
            return False
        bare = v[1:] if v.startswith("v") else v
        if SEMVER_RE.match(bare) or GIT_HASH_RE.match(bare):
            return True
        return self.fail(path, f"invalid node pack version {v!r}")

    def properties(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, "Node name for S&R", path, self.string, optional=True),
                    self.field(v, "cnr_id", path, self.repo_like_id, optional=True),
                    self.field(v, "aux_id", path, self.aux_id, optional=True),
                    self.field(v, "ver", path, self.pack_version, optional=True),
                    self.field(v, "models", path, lambda x, p: self.array(x, p, self.model_file), optional=True)])

    def widget_values(self, v, path) -> bool:
        if isinstance(v, (list, dict)):
            return True
        return self.fail(path, f"expected array or object, got {type(v).__name__}")

    def node(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        checks = [
            self.field(v, "id", path, self.node_id), self.field(v, "type", path, self.string),
            self.field(v, "pos", path, self.vector2), self.field(v, "size", path, self.vector2),
            self.field(v, "flags", path, self.flags), self.field(v, "order", path, self.number),
            self.field(v, "mode", path, self.number),
            self.field(v, "inputs", path, lambda x, p: self.array(x, p, self.node_input), optional=True),
            self.field(v, "outputs", path, lambda x, p: self.array(x, p, self.node_output), optional=True),
            self.field(v, "properties", path, self.properties),
            self.field(v, "widgets_values", path, self.widget_values, optional=True),
            self.field(v, "color", path, self.string, optional=True),
            self.field(v, "bgcolor", path, self.string, optional=True),
        ]
        return all(checks)

    def group(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        def bounding(x, p):
            if not isinstance(x, list) or len(x) != 4:
                return self.fail(p, f"expected 4 numbers, got {x!r}")
            return all(self.number(n, f"{p}[{i}]") for i, n in enumerate(x))
        return all([self.field(v, "id", path, self.number, optional=True), self.field(v, "title", path, self.string),
                    self.field(v, "bounding", path, bounding), self.field(v, "color", path, self.string, optional=True),
                    self.field(v, "font_size", path, self.number, optional=True),
                    self.field(v, "locked", path, self.boolean, optional=True)])

    def config(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        return all([self.field(v, "links_ontop", path, self.boolean, optional=True),
                    self.field(v, "align_to_grid", path, self.boolean, optional=True)])

    def extra(self, v, path) -> bool:
        if not self.obj(v, path):
            return False
        def ds(x, p):
            return self.obj(x, p) and all([self.field(x, "scale", p, self.number), self.field(x, "offset", p, self.vector2)])
        def link_extension(x, p):
            return self.obj(x, p) and all([self.field(x, "id", p, self.number), self.field(x, "parentId", p, self.number)])
        def renderer(x, p):
            return x in RENDERER_TYPES or self.fail(p, f"expected one of {RENDERER_TYPES}, got {x!r}")
        return all([self.field(v, "ds", path, ds, optional=True),
                    self.field(v, "frontendVersion", path, self.string, optional=True),
                    self.field(v, "linkExtensions", path, lambda x, p: self.array(x, p, link_extension), optional=True),
                    self.field(v, "reroutes", path, lambda x, p: self.array(x, p, self.reroute), optional=True),
                    self.field(v, "workflowRendererVersion", path, renderer, optional=True)])

    # ---- the workflow
    def workflow(self, data) -> None:
        if not self.obj(data, ""):
            return
        version = data.get("version", _MISSING)
        if version is _MISSING or not self._is_number(version):
            self.fail("version", "Workflow does not contain a valid version")
            return
        if version == 1:
            self.fail("version", "version-1 graphs are not covered by this checker")
            return
        if "definitions" in data or "subgraphs" in data:
            self.fail("definitions", "subgraphs are not covered by this checker")
        self.field(data, "id", "", self.uuid, optional=True)
        self.field(data, "revision", "", self.number, optional=True)
        self.field(data, "last_node_id", "", self.node_id)
        self.field(data, "last_link_id", "", self.number)
        self.field(data, "nodes", "", lambda x, p: self.array(x, p, self.node))
        self.field(data, "links", "", lambda x, p: self.array(x, p, self.link))
        self.field(data, "floatingLinks", "", lambda x, p: self.array(x, p, self.link_object), optional=True)
        self.field(data, "groups", "", lambda x, p: self.array(x, p, self.group), optional=True)
        self.field(data, "config", "", self.config, optional=True, nullable=True)
        self.field(data, "extra", "", self.extra, optional=True, nullable=True)
        self.field(data, "models", "", lambda x, p: self.array(x, p, self.model_file), optional=True)


def validate_workflow(data) -> list[str]:
    """Problems the ComfyUI frontend's workflow schema finds in `data` (empty list: it loads cleanly)."""
    checker = _Checker()
    checker.workflow(data)
    return checker.problems
