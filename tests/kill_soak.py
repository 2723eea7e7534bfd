"""Kill checkpointed runs at random moments; every resume must give the bits
of an uninterrupted run and leave no temporary file behind.

``python tests/kill_soak.py [--runs 50] [--seed 0]`` starts ``checkpoint_run.py``
(``--slow``: it sleeps between chunks) ``runs`` times, kills each with SIGKILL
after a random delay (some before the first checkpoint, some mid-write),
resumes it to the end and compares with one uninterrupted run. Prints one
line per run and a summary; exits 1 on any mismatch or leftover file.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path[:0] = [ROOT, HERE]
    import jax
    import numpy as np

    import checkpoint_run

    with jax.enable_x64(True):
        whole = [np.asarray(leaf) for leaf in jax.tree.leaves(checkpoint_run.run())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    chooser, failures, resumed_from = random.Random(args.seed), 0, []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            path, out = (os.path.join(folder, f"{name}{run}.npz") for name in ("run", "out"))
            command = [sys.executable, os.path.join(HERE, "checkpoint_run.py"), path, out]
            child = subprocess.Popen(command + ["--slow"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
            if chooser.random() < 0.9:  # most after the first checkpoint, some before
                child.stdout.readline()  # the first chunk's step: its checkpoint is written
            time.sleep(chooser.uniform(0.0, 1.5))  # --slow runs ~0.1 s a chunk
            child.send_signal(signal.SIGKILL)
            child.communicate()
            had_checkpoint = os.path.exists(path)
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=600)
            steps = [int(line) for line in done.stdout.split()]
            leftovers = [n for n in os.listdir(folder) if n.endswith(".tmp")]
            same = done.returncode == 0 and _same_bits(out, whole, np)
            ok = same and not leftovers
            failures += not ok
            resumed_from.append(steps[0] - checkpoint_run.CHUNK if steps else None)
            where = ("before any checkpoint" if not had_checkpoint else
                     "after the run had ended" if resumed_from[-1] is None else
                     f"at step {resumed_from[-1]}")
            print(f"run {run}: killed {where}, same bits on resume {same}, "
                  f"temporary files {leftovers}", flush=True)
    resumes = sum(1 for step in resumed_from if step)
    print(f"{args.runs} runs killed, {resumes} resumed from a checkpoint, {failures} failures")
    return 1 if failures else 0


def _same_bits(out, whole, np):
    with np.load(out) as saved:
        resumed = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return len(resumed) == len(whole) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(resumed, whole))


if __name__ == "__main__":
    sys.exit(main())
