"""Optional profiling of the server under load with py-spy (``--profile DIR``).

During the measured window of each relay run, ``py-spy record --nonblocking --format raw
--function --threads --subprocesses`` samples the server (all threads, and its store
writer process). :func:`summarize`
reads the collapsed stacks and lists, per thread, the functions with the most samples
on top of the stack (self) and anywhere on the stack (inclusive), which is the evidence
for "what bounds the relay". Profiled runs are separate from the figure runs: the
sampler costs a few per cent of a core.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["PySpy", "summarize"]


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``with PySpy(pid, seconds, out):`` records for *seconds* (no-op without py-spy)."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = _py_spy()
        self.available = exe is not None
        if exe is not None:
            self.cmd = [exe, "record", "--pid", str(pid), "--duration",
                        str(max(1, int(seconds))), "--rate", str(rate), "--nonblocking",
                        "--format", "raw", "--function", "--threads",
                        "--subprocesses",  # the relay's store writer process too
                        "-o", str(out)]

    def __enter__(self) -> PySpy:
        if self.available:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_GENERIC = ("asyncio/base_events.py", "asyncio/runners.py", "<frozen runpy>", "<module>",
            "asyncio/events.py", "threading.py", "main (", "serve (", "_main (")


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (module/file.py)"
    return frame.strip()


def summarize(path: Path, top: int = 20) -> str:
    """Self and inclusive sample shares per thread from a py-spy raw (collapsed) file."""
    if not path.exists():
        return f"(no profile at {path})"
    per_thread: dict[str, tuple[Counter[str], Counter[str], list[int]]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "main"
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        if not body:
            continue
        self_c, incl_c, total = per_thread.setdefault(thread, (Counter(), Counter(), [0]))
        total[0] += count
        self_c[body[-1]] += count
        for f in set(body):
            incl_c[f] += count
    out: list[str] = []
    grand = sum(t[2][0] for t in per_thread.values()) or 1
    for thread, (self_c, incl_c, total) in sorted(per_thread.items(),
                                                  key=lambda kv: -kv[1][2][0]):
        n = total[0]
        out.append(f"### {thread}: {n} samples ({100 * n / grand:.0f}% of all)")
        out.append("self (top of stack):")
        out += [f"  {100 * c / n:5.1f}%  {f}" for f, c in self_c.most_common(top)]
        out.append("inclusive (anywhere on the stack; event-loop plumbing left out):")
        shown = [(f, c) for f, c in incl_c.most_common()
                 if not any(g in f for g in _GENERIC)][:top]
        out += [f"  {100 * c / n:5.1f}%  {f}" for f, c in shown]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20))
