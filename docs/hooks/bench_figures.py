"""MkDocs hook: serve bench/results/*.png under bench/ in the site.

The benchmark plots are written by ``python -m bench.run`` into
bench/results/; the explanations show them from there rather than from a
copy that could go stale.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench/{png.name}", abs_src_path=str(png)))
    return files
