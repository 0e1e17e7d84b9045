#!/usr/bin/env python
"""Render the docs' results tables from the run records in results/.

    python tools/make_tables.py            # rewrite the tables in README.md and docs/
    python tools/make_tables.py --check    # exit 1, with a diff, if a committed page differs

Each table stands between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in its page
(``dssd_d2.results.TABLES``); records join tables through ``tools/add_result.py --table``.
"""

import argparse
import difflib
import os
import sys

from dssd_d2.results import ROOT, render_docs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render_docs().items():
        with open(path) as f:
            current = f.read()
        if current == text:
            continue
        page = os.path.relpath(path, ROOT)
        stale.append(page)
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(True), text.splitlines(True), page, page + " (rendered)"
                )
            )
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"Rendered {page}")
    if args.check and stale:
        print(f"\nStale tables in {', '.join(stale)}: run tools/make_tables.py and commit.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
