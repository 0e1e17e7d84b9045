#!/usr/bin/env python
"""Keep a run's record as a documented result.

    python tools/add_result.py OUTPUT_DIR results/<study>/<name>.json --table cpu_30min \
        [--label "Tiny-DSOD256"] [--peer results/<study>/<peer>.json]

Copies OUTPUT_DIR/run_record.json (written by train_net.py, tools/lazyconfig_train_net.py and
the peer tools when a run ends) to ``results/<study>/<name>.json``, adding the name the tables
show (``label``), the tables it belongs to and the record of the peer run it was compared with.
Then ``python tools/make_tables.py`` renders the docs' tables from ``results/``
(docs/maintaining.md, "How to add a result").
"""

import argparse
import json
import os

from dssd_d2.results import RESULTS_DIR, TABLES, load_record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="the run's OUTPUT_DIR (holding run_record.json)")
    parser.add_argument("destination", help="results/<study>/<name>.json")
    parser.add_argument("--table", action="append", default=[], choices=sorted(TABLES))
    parser.add_argument("--label", default="", help="the model's name in tables")
    parser.add_argument("--peer", default="", help="the record of the run it stood beside")
    args = parser.parse_args(argv)

    source = os.path.join(args.output_dir, "run_record.json")
    if not os.path.isfile(source):
        parser.error(f"{source}: no run record (did the run end? it is written at the end)")
    destination = os.path.abspath(args.destination)
    if not destination.startswith(RESULTS_DIR + os.sep) or not destination.endswith(".json"):
        parser.error(f"{args.destination}: give a path results/<study>/<name>.json")
    with open(source) as f:
        record = json.load(f)
    if args.peer:
        load_record(args.peer)  # it must exist and be a record
        record["peer"] = os.path.relpath(os.path.abspath(args.peer), RESULTS_DIR)
    record["label"] = args.label or record.get("label") or record["model"]
    record["tables"] = sorted(set(record.get("tables", [])) | set(args.table))
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    with open(destination, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"Wrote {os.path.relpath(destination)}; now run tools/make_tables.py")


if __name__ == "__main__":
    main()
