"""Shrinks a request-parser corpus to at most CAP inputs that keep the most coverage edges.

`cargo fuzz cmin` keeps every input that adds a feature (an edge or an edge's hit-count
bucket): thousands of inputs for the request parsers; with `-use_counters=0` (edges only)
still over a thousand, because its greedy pass adds the smallest inputs first. This script
measures each input's edges alone (libFuzzer's merge step, one input at a time), then keeps
the seeds (`seed-*`) and adds, greedily, the input that covers the most edges not yet
covered, up to CAP inputs. The other inputs are deleted.

Usage (from fuzz/, after `cargo +nightly fuzz build -O TARGET`):
    python3 seeds/shrink_corpus.py TARGET [CAP=300]
"""

import os
import shutil
import subprocess
import sys
import tempfile

target = sys.argv[1]
cap = int(sys.argv[2]) if len(sys.argv) > 2 else 300
binary = f"target/x86_64-unknown-linux-gnu/release/{target}"
corpus = f"corpus/{target}"


def edges(path: str) -> set:
    """The coverage edges of one input, from a merge control file."""
    with tempfile.TemporaryDirectory() as tmp:
        one, out, control = (os.path.join(tmp, name) for name in ("in", "out", "control"))
        os.mkdir(one)
        os.mkdir(out)
        shutil.copy(path, one)
        subprocess.run(
            [binary, "-merge=1", f"-merge_control_file={control}", "-use_counters=0",
             "-max_len=16384", out, one],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
        with open(control) as f:
            for line in f:
                if line.startswith("FT "):
                    return set(line.split()[2:])
    return set()


names = sorted(os.listdir(corpus))
cover = {name: edges(os.path.join(corpus, name)) for name in names}
size = {name: os.path.getsize(os.path.join(corpus, name)) for name in names}
kept = [name for name in names if name.startswith("seed-")]
covered = set().union(set(), *(cover[name] for name in kept))
left = {name: cover[name] for name in names if name not in kept}
while len(kept) < cap and left:
    best = max(left, key=lambda name: (len(left[name] - covered), -size[name]))
    if not left[best] - covered:
        break
    covered |= left.pop(best)
    kept.append(best)
for name in names:
    if name not in kept:
        os.remove(os.path.join(corpus, name))
every = set().union(set(), *cover.values())
print(f"{target}: kept {len(kept)} of {len(names)} inputs, {len(covered)} of {len(every)} edges")
