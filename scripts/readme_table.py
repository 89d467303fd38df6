"""Copy the comparison table (reports/13_compare_covidnet.md, written by 13_compare_covidnet) into README.md, between
its `<!-- comparison:begin -->` and `<!-- comparison:end -->` markers, with the links to the evaluation reports
re-rooted at reports/. Run it after the study has remade the comparison; `--check` only says whether they differ
(exit status 1 when they do). tests/test_study.py checks the same equality.

    python scripts/readme_table.py [--check]
"""
from __future__ import annotations
import argparse, os, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r'(<!-- comparison:begin -->\n)(.*?)(<!-- comparison:end -->)', re.S)


def readme_table(md: str) -> str:
    "The comparison table as the README shows it: links relative to reports/ re-rooted at the repository."
    return md.strip().replace('](12_evaluate_', '](reports/12_evaluate_') + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--readme', default=ROOT / 'README.md', type=Path, help='the README to update')
    p.add_argument('--table', default=ROOT / 'reports' / '13_compare_covidnet.md', type=Path, help='the comparison table')
    p.add_argument('--check', action='store_true', help='do not write; exit 1 if the README differs from the table')
    a = p.parse_args(argv)
    if not a.table.is_file(): sys.exit(f"{a.table}: no comparison table (run the study's 13_compare_covidnet first)")
    text = a.readme.read_text()
    m = BLOCK.search(text)
    if not m: sys.exit(f"{a.readme}: no <!-- comparison:begin --> ... <!-- comparison:end --> block")
    new = readme_table(a.table.read_text())
    readme, table = os.path.relpath(a.readme), os.path.relpath(a.table)
    if m.group(2) == new:
        print(f"{readme}: the table equals {table}"); return 0
    if a.check:
        print(f"{readme}: the table differs from {table}; run python scripts/readme_table.py"); return 1
    a.readme.write_text(text[:m.start(2)] + new + text[m.end(2):])
    print(f"{readme}: table copied from {table}"); return 0


if __name__ == '__main__':
    sys.exit(main())
