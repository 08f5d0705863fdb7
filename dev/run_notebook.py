"""Runs a notebook in a fresh kernel of this Python and checks what a reader sees.

Usage: python dev/run_notebook.py NOTEBOOK [--expect-backend NAME]
Fails when a cell raises, when the backend printed is not NAME, or when the
run did not reach the plot. The notebook on disk is left unchanged.
"""

import argparse
import sys
from pathlib import Path

import nbclient
import nbformat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--expect-backend")
    args = parser.parse_args()
    notebook = nbformat.read(args.notebook, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(args.notebook.resolve().parent)}},
    )
    client.execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    print(text)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    problems = []
    if args.expect_backend and f"on {args.expect_backend}\n" not in text:
        problems.append(f"the notebook did not run on {args.expect_backend}")
    if "test accuracy, ASWA ensemble of" not in text:
        problems.append("no test accuracy printed")
    if len(images) != 1:
        problems.append(f"{len(images)} figures, expected 1")
    for problem in problems:
        print("FAILED:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
