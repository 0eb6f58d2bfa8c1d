#!/usr/bin/env bash
# Set up a real ComfyUI that runs on a CPU-only machine, for comfyui-memo's live tests
# and for trying the pack by hand.
#
# Usage:
#   scripts/setup_comfyui.sh COMFY_DIR [--source SRC] [--ref REF] [--venv DIR]
#                            [--python PY] [--no-pack-deps]
#
#   COMFY_DIR       where the ComfyUI work tree goes (created if missing; an existing
#                   ComfyUI tree there is kept as it is).
#   --source SRC    a git repository (bare or not) or a plain ComfyUI folder to copy.
#                   Default: $COMFYUI_SOURCE; one of the two is required (the script
#                   downloads nothing).
#   --ref REF       commit/tag/branch to check out from a git source (default HEAD).
#   --venv DIR      the virtual environment for ComfyUI (default COMFY_DIR/venv, which
#                   ComfyUI's own .gitignore already ignores).
#   --python PY     interpreter used to create the venv (default python3).
#   --no-pack-deps  skip installing this pack's requirements.txt into the venv.
#   TORCH_SPEC env  the torch to install first (default torch==2.13.0, the CPU build).
#
# Why each step exists:
#   * torch is installed first and every later install is constrained to it, so
#     ComfyUI's unpinned "torch" requirement never pulls a CUDA build.
#   * the registry's torchvision/torchaudio are CUDA builds: their extension modules
#     list libc10_cuda.so, libtorch_cuda.so and libcudart.so.N as needed libraries,
#     which a CPU torch does not ship. We generate a C file that defines exactly the
#     symbols they import from those libraries (found with nm/readelf), compile it
#     into small shared libraries carrying those sonames, and load them globally at
#     interpreter start through a .pth hook in the venv. Their CPU ops then work; the
#     CUDA entry points are never reached on CPU and only log if they are.
#   * requests is imported by ComfyUI but missing from its requirements.
#
# Start the server afterwards with:
#   VENV/bin/comfyui-cpu --listen 127.0.0.1 --port 8188
# (a launcher that runs COMFY_DIR/main.py --cpu with the venv's python).
# Running it again is safe: finished steps are detected and skipped or redone cheaply.
set -euo pipefail

die() { echo "setup_comfyui: error: $*" >&2; exit 1; }
say() { echo "setup_comfyui: $*"; }

COMFY_DIR=""
SOURCE="${COMFYUI_SOURCE:-}"
REF="HEAD"
VENV=""
PY="python3"
PACK_DEPS=1
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --ref) REF="${2:?--ref needs a value}"; shift 2 ;;
    --venv) VENV="${2:?--venv needs a value}"; shift 2 ;;
    --python) PY="${2:?--python needs a value}"; shift 2 ;;
    --no-pack-deps) PACK_DEPS=0; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$COMFY_DIR" ] || die "only one COMFY_DIR may be given"; COMFY_DIR="$1"; shift ;;
  esac
done
[ -n "$COMFY_DIR" ] || die "missing COMFY_DIR (see --help)"
mkdir -p "$COMFY_DIR"
COMFY_DIR="$(cd "$COMFY_DIR" && pwd)"
VENV="${VENV:-$COMFY_DIR/venv}"

for tool in git gcc nm readelf; do
  command -v "$tool" >/dev/null || die "'$tool' is required (apt-get install git gcc binutils)"
done

# ---------------------------------------------------------------- 1. ComfyUI tree
is_comfy_tree() { [ -f "$1/main.py" ] && [ -f "$1/folder_paths.py" ] && [ -d "$1/comfy" ]; }

if is_comfy_tree "$COMFY_DIR"; then
  say "ComfyUI already present in $COMFY_DIR; leaving it as it is"
elif [ -n "$(ls -A "$COMFY_DIR" 2>/dev/null | grep -v '^venv$' || true)" ]; then
  die "$COMFY_DIR is not empty and holds no ComfyUI; choose an empty or new folder"
elif [ -z "$SOURCE" ]; then
  die "no ComfyUI source: pass --source (a ComfyUI git repository or folder) or set COMFYUI_SOURCE"
elif git -C "$SOURCE" rev-parse --git-dir >/dev/null 2>&1; then
  commit="$(git -C "$SOURCE" rev-parse --verify "$REF^{commit}")" || die "no commit '$REF' in $SOURCE"
  say "checking out ComfyUI $commit from $SOURCE"
  # Stored snapshots may lack a few large blobs; list them so they can be left out
  # of the checkout instead of failing it.
  missing="$(git -C "$SOURCE" ls-tree -r "$commit" | awk '$2=="blob"{print $3}' \
    | git -C "$SOURCE" cat-file --batch-check | awk '$2=="missing"{print $1}')"
  tmpclone="$COMFY_DIR/.setup-clone"
  rm -rf "$tmpclone"
  git clone -q --no-checkout "$SOURCE" "$tmpclone"
  mv "$tmpclone/.git" "$COMFY_DIR/.git" && rmdir "$tmpclone"
  if [ -n "$missing" ]; then
    patterns=('/*')
    while read -r sha path; do
      if grep -qx "$sha" <<<"$missing"; then
        say "warning: blob for '$path' is absent from the source; leaving that file out"
        patterns+=("!/$path")
      fi
    done < <(git -C "$SOURCE" ls-tree -r "$commit" | awk '$2=="blob"{print $3" "$4}')
    git -C "$COMFY_DIR" sparse-checkout set --no-cone "${patterns[@]}"
  fi
  # git names the absent blobs while writing the index even though they are excluded;
  # the tree check below is what decides success.
  git -C "$COMFY_DIR" checkout -q -B memo-setup "$commit" 2>/dev/null || true
  is_comfy_tree "$COMFY_DIR" || die "checkout of $commit into $COMFY_DIR failed"
elif is_comfy_tree "$SOURCE"; then
  say "copying ComfyUI from folder $SOURCE (without its venv and outputs)"
  tar -C "$SOURCE" --exclude=./venv --exclude=./.venv --exclude=./output --exclude=./temp \
      --exclude=./user -cf - . | tar -C "$COMFY_DIR" -xf -
else
  die "source '$SOURCE' is neither a git repository nor a ComfyUI folder (set --source)"
fi
say "ComfyUI version: $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY_DIR/comfyui_version.py" 2>/dev/null || echo unknown)"

# ---------------------------------------------------------------- 2. venv + packages
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

say "installing $TORCH_SPEC"
"${PIP[@]}" "$TORCH_SPEC"
CONSTRAINT="$VENV/torch-constraint.txt"
"$VPY" -m pip freeze --disable-pip-version-check | grep -i '^torch==' > "$CONSTRAINT" \
  || die "torch did not install into $VENV"
say "pinning $(cat "$CONSTRAINT") for every later install"

reqs=(-r "$COMFY_DIR/requirements.txt" requests)
if [ "$PACK_DEPS" = 1 ] && [ -f "$PACK_ROOT/requirements.txt" ]; then
  reqs+=(-r "$PACK_ROOT/requirements.txt")
fi
say "installing ComfyUI requirements (plus the pack's when asked) - about a minute"
"${PIP[@]}" -c "$CONSTRAINT" "${reqs[@]}"

# ---------------------------------------------------------------- 3. CUDA-symbol stubs
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
STUB_DIR="$VENV/lib/cpu-cuda-stub"
mkdir -p "$STUB_DIR"
say "generating CUDA-symbol stubs in $STUB_DIR"
"$VPY" - "$SITE" "$STUB_DIR" <<'PYEOF'
"""Write stub.c defining the CUDA-library symbols that the installed
torchvision/torchaudio extension modules import but a CPU torch cannot provide."""
import glob, os, re, subprocess, sys

site, out = sys.argv[1], sys.argv[2]
CUDA_SONAME = re.compile(r"^(libc10_cuda\.so|libtorch_cuda\.so|libcudart\.so\.\d+)$")

def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

def needed(lib):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", lib))

def defined(lib):
    names = set()
    for line in run("nm", "-D", "--defined-only", lib).splitlines():
        parts = line.split()
        if len(parts) == 3:
            names.add(parts[2].split("@")[0])
    return names

exts = [p for pkg in ("torchvision", "torchaudio")
        for p in glob.glob(os.path.join(site, pkg, "**", "*.so"), recursive=True)
        if any(CUDA_SONAME.match(n) for n in needed(p))]
sonames = sorted({n for p in exts for n in needed(p) if CUDA_SONAME.match(n)})

providers = glob.glob(os.path.join(site, "torch", "lib", "*.so*"))
providers.append(os.path.realpath(sys.executable))
for p in exts + [os.path.realpath(sys.executable)]:
    for line in run("ldd", p).splitlines():
        m = re.search(r"=>\s+(/\S+)", line)
        if m:
            providers.append(m.group(1))
have = set()
for p in set(providers):
    try:
        have |= defined(p)
    except subprocess.CalledProcessError:
        pass

funcs, data = set(), set()
for p in exts:
    relocs = run("readelf", "-rW", p)
    for line in run("nm", "-D", "--undefined-only", p).splitlines():
        kind, sym = line.split()[-2:]
        if kind != "U":
            continue
        name, _, ver = sym.partition("@")
        if ver.startswith("libcudart") or (not ver and name not in have):
            # Referenced only through the GOT and not a demangled function: data object.
            is_data = (f" {sym} " in relocs or f" {name} " in relocs) and \
                re.search(rf"JUMP_SLOT\s+\S+\s+{re.escape(name)}\b", relocs) is None
            (data if is_data else funcs).add(name)

quiet = re.compile(r"^__cuda(Register|Unregister|InitModule|PushCallConfiguration|PopCallConfiguration)")
lines = [
    "/* Generated by comfyui-memo scripts/setup_comfyui.sh: CPU-only stand-ins for",
    " * CUDA-library symbols imported by torchvision/torchaudio CUDA wheels. */",
    "#include <stdio.h>",
    "static void note(const char *name) {",
    '    fprintf(stderr, "cpu-cuda-stub: %s called; this process has no CUDA\\n", name);',
    "}",
]
for name in sorted(funcs):
    body = "return 0;" if quiet.match(name) else f'note("{name}"); return 0;'
    lines.append(f"long {name}(void) {{ {body} }}")
for name in sorted(data):
    lines.append(f"__attribute__((aligned(64))) char {name}[256];")
with open(os.path.join(out, "stub.c"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out, "sonames.txt"), "w") as f:
    f.write("\n".join(sonames) + "\n")
print(f"setup_comfyui: {len(exts)} extension modules need {', '.join(sonames) or 'nothing'}; "
      f"stubbing {len(funcs)} functions and {len(data)} data symbols")
PYEOF

rm -f "$STUB_DIR"/*.so*
first=""
while read -r soname; do
  [ -n "$soname" ] || continue
  if [ -z "$first" ]; then
    gcc -shared -fPIC -O1 -w -Wl,-soname,"$soname" -o "$STUB_DIR/$soname" "$STUB_DIR/stub.c"
    first="$soname"
  else
    # Only the name matters for the others: all symbols live in the first one.
    gcc -shared -fPIC -O1 -w -Wl,-soname,"$soname" -o "$STUB_DIR/$soname" -x c /dev/null
  fi
done < "$STUB_DIR/sonames.txt"

cat > "$SITE/_cpu_cuda_stub.py" <<PYEOF
"""Load the CUDA-symbol stubs built by comfyui-memo's setup_comfyui.sh so the CUDA
builds of torchvision/torchaudio can load next to a CPU-only torch."""
import ctypes, os
_DIR = "$STUB_DIR"
try:
    with open(os.path.join(_DIR, "sonames.txt")) as _f:
        for _name in filter(None, (l.strip() for l in _f)):
            ctypes.CDLL(os.path.join(_DIR, _name), mode=ctypes.RTLD_GLOBAL)
except OSError as _e:
    import sys
    print(f"cpu-cuda-stub: not loaded ({_e}); rerun setup_comfyui.sh", file=sys.stderr)
PYEOF
echo "import _cpu_cuda_stub" > "$SITE/_cpu_cuda_stub.pth"

cat > "$VENV/bin/comfyui-cpu" <<SHEOF
#!/usr/bin/env bash
# Start ComfyUI ($COMFY_DIR) on the CPU with this venv; extra arguments go to main.py.
exec "$VPY" "$COMFY_DIR/main.py" --cpu "\$@"
SHEOF
chmod +x "$VENV/bin/comfyui-cpu"

# ---------------------------------------------------------------- 4. check
say "checking that torchvision and torchaudio CPU ops work"
(cd / && "$VPY" - <<'PYEOF'
import torch, torchvision, torchaudio
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
wave = torch.sin(torch.linspace(0, 100, 16000))[None]
out = torchaudio.functional.resample(wave, 16000, 8000)
assert out.shape[-1] == 8000, out.shape
print(f"setup_comfyui: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"torchaudio {torchaudio.__version__}: CPU ops OK")
PYEOF
)
say "done. Start ComfyUI with:"
say "  $VENV/bin/comfyui-cpu --listen 127.0.0.1 --port 8188"
say "Live tests: COMFYUI_PATH=$COMFY_DIR COMFYUI_PYTHON=$VPY python -m pytest tests/comfyui_live"
