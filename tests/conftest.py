"""What several test files share: the public sources (`COVIDNEXT_SOURCES`, `../shared/data` beside the checkout) and
small splits of real Kermany images."""
from __future__ import annotations
import os
from pathlib import Path

import pandas as pd

SRC = Path(os.environ.get('COVIDNEXT_SOURCES', Path(__file__).parents[1] / '..' / 'shared' / 'data'))


def kermany_split(dest: Path, labels: tuple, per_class: int, pattern: list, seed: int = 0) -> Path:
    "Write `dest/split.csv`: `per_class` seeded Kermany images of each of `labels`, split by `pattern` within each class."
    from covidnext.sources import read_kermany
    k = read_kermany(SRC / 'kermany-chest-xray-224')
    k = pd.concat([g.sample(per_class, random_state=seed) for _, g in k[k.label.isin(labels)].groupby('label')])
    k['split'] = pattern * len(labels)
    k['path'] = [os.path.relpath(p, SRC) for p in k.path]
    k[['path', 'patient_id', 'label', 'source', 'split']].to_csv(dest / 'split.csv', index=False)
    return dest / 'split.csv'
