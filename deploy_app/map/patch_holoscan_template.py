"""Adapt holoscan-cli 4.2's MAP Dockerfile template to a Debian bookworm base image and a network that reaches only
the package registries (run with the packager's venv python; idempotent, keeps the original as *.orig):
  1. drop the RUN that downloads cuda-keyring from developer.download.nvidia.com (unreachable here);
  2. drop the Ubuntu 24.04 version pins of python3 / python3-pip (=3.12.3-*, =24.0+dfsg-*);
  3. remove EXTERNALLY-MANAGED of any python3.x, not only python3.12;
  4. tools.sh (the MAP entry point): exit with the application's exit code (upstream logs it and exits 0, which hides
     this app's 1 = some file failed / 2 = nothing processed from `podman run` and from the platform);
  5. tools.sh: pass SIGTERM/SIGINT on to the application. The script is PID 1 of the container and runs the app as
     its child; the kernel drops signals that PID 1 has no handler for, so upstream `podman stop` / `docker stop`
     never reaches the app and ends in SIGKILL after the grace period (a source cut short, no report). Now the app
     gets the signal, finishes the source under way and writes its report (tests/deploy/test_map.py);
  6. .dockerignore: leave deploy_app/map/ (packaging scripts) out of the image's application folder.
"""

import re
import sys
from pathlib import Path

from holoscan_cli import packager

templates = Path(packager.__file__).parent / "templates"


def original(path: Path) -> str:
    orig = path.with_name(path.name + ".orig")
    if not orig.exists():
        orig.write_text(path.read_text())
    return orig.read_text()


dockerfile = templates / "Dockerfile.jinja2"
src = original(dockerfile)
new, n1 = re.subn(r"RUN rm -f /etc/apt/sources.list.d/cuda\*\.list \\\n.*?&& apt-get update\n",
                  "# (cuda-keyring download removed: Debian base, no NVIDIA repository)\n", src, flags=re.DOTALL)
new, n2 = re.subn(r"=\$\{PYTHON_(?:PIP_)?VERSION\}", "", new)
new, n3 = re.subn(r"/usr/lib/python3\.12/EXTERNALLY-MANAGED", "/usr/lib/python3*/EXTERNALLY-MANAGED", new)
if n1 != 1 or n2 < 5:
    sys.exit(f"unexpected layout of {dockerfile} (cuda-keyring blocks={n1}, version pins={n2}); not patched")
dockerfile.write_text(new)

tools = templates / "tools.sh"
marker = '            fi\n        else\n            fatal "Failed to launch application'
src = original(tools)
if src.count(marker) != 1:
    sys.exit(f"unexpected layout of {tools}; not patched")
launch = '            eval ${command} "$@"\n            exit_code=$?\n'
if src.count(launch) != 1:
    sys.exit(f"unexpected layout of {tools} (launch line); not patched")
forward = (
    "            # UltraAD: this script is PID 1; pass SIGTERM/SIGINT on to the app (exec'ed in a subshell, so $! is\n"
    "            # its pid) and wait until it has ended, also when a trapped signal interrupts `wait`\n"
    "            (eval exec ${command} '\"$@\"') &\n"
    "            app_pid=$!\n"
    "            trap 'kill -TERM $app_pid 2>/dev/null' TERM\n"
    "            trap 'kill -INT $app_pid 2>/dev/null' INT\n"
    "            wait $app_pid\n"
    "            exit_code=$?\n"
    "            while kill -0 $app_pid 2>/dev/null; do wait $app_pid; exit_code=$?; done\n"
)
src = src.replace(launch, forward)
tools.write_text(src.replace(marker, marker.replace("            fi\n", "            fi\n            exit ${exit_code}\n", 1)))

ignore = templates / "dockerignore"
ignore.write_text(original(ignore) + "\n# UltraAD: packaging scripts are not part of the app\napp/map\n")
print(f"patched {dockerfile}: cuda-keyring blocks={n1} version pins={n2} externally-managed={n3}; "
      f"{tools}: exit code, signals passed on; {ignore}: app/map")
